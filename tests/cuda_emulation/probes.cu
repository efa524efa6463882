// Kernels that show the emulation's checks fire: compiled into the same translation unit after
// csrc/anp_cuda.cu (so anp::block_sum is in scope), launched with the CUDA launch syntax.
namespace anp_probes {

using at::Tensor;

// Threads 100.. exit before a barrier the others wait at: undefined behaviour on a GPU.
__global__ void divergent_sync(float* out) {
  if (threadIdx.x >= 100) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

// Each thread reads its neighbour's shared slot; without the barrier that is a race.
__global__ void neighbour_read(const float* x, float* out, bool barrier) {
  __shared__ float tile[256];
  tile[threadIdx.x] = x[threadIdx.x];
  if (barrier) __syncthreads();
  out[threadIdx.x] = tile[(threadIdx.x + 1) % blockDim.x];
}

// anp_cuda.cu's block reduction, once per block over a row of x.
__global__ void row_sums(const float* x, float* out, int64_t n) {
  float v = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v += x[blockIdx.x * n + i];
  v = anp::block_sum(v);
  if (threadIdx.x == 0) out[blockIdx.x] = v;
}

// A warp shuffle in a block of 48 threads: the second warp is partial.
__global__ void partial_warp_shuffle(float* out) { out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.f, 1u); }

// Thread 0 writes one element past the end of out: what AddressSanitizer must report (run it only there).
__global__ void write_past_end(float* out, int64_t n) {
  if (threadIdx.x == 0) out[n] = 1.f;
}

Tensor probe_divergent_sync() {
  Tensor out = at::zeros({256});
  divergent_sync<<<1, 256>>>(out.data_ptr<float>());
  return out;
}

Tensor probe_neighbour_read(const Tensor& x, bool barrier) {
  TORCH_CHECK(x.dim() == 1 && x.numel() == 256 && x.scalar_type() == at::kFloat, "x: 256 float32 values");
  Tensor out = at::empty_like(x);
  neighbour_read<<<1, 256>>>(x.data_ptr<float>(), out.data_ptr<float>(), barrier);
  return out;
}

Tensor probe_row_sums(const Tensor& x, int64_t threads) {
  Tensor xc = x.contiguous();
  Tensor out = at::empty({xc.size(0)});
  row_sums<<<xc.size(0), threads>>>(xc.data_ptr<float>(), out.data_ptr<float>(), xc.size(1));
  return out;
}

Tensor probe_partial_warp_shuffle() {
  Tensor out = at::zeros({48});
  partial_warp_shuffle<<<1, 48>>>(out.data_ptr<float>());
  return out;
}

Tensor probe_launch(int64_t grid, int64_t block) {
  Tensor out = at::zeros({1});
  divergent_sync<<<grid, block>>>(out.data_ptr<float>());
  return out;
}

// channel_distortion_backward on 64-bit indices (the op takes them for 2**31 elements or more).
std::tuple<Tensor, Tensor> probe_distortion_backward_int64(const Tensor& grad, const Tensor& z, const Tensor& w) {
  return anp::distortion_backward_indexed<int64_t>(grad, z, w);
}

// channel_sparse_conv2d with its epilogue on 64-bit indices (the op takes them for 2**31 elements or more).
std::tuple<Tensor, Tensor, Tensor> probe_sparse_conv2d_int64(const Tensor& x, const Tensor& weight,
                                                     const c10::optional<Tensor>& bias, const Tensor& in_keep,
                                                     const Tensor& out_keep, const c10::optional<Tensor>& scale,
                                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                                     at::IntArrayRef dilation, bool compact_output, bool save_input,
                                                     bool save_pre, bool nhwc) {
  return anp::channel_sparse_conv2d_with(anp::sparse_conv_epilogue_indexed<int64_t>, x, weight, bias, in_keep,
                                         out_keep, scale, stride, padding, dilation, compact_output, save_input,
                                         save_pre, nhwc);
}

Tensor probe_write_past_end(int64_t n) {
  Tensor out = at::zeros({n});
  write_past_end<<<1, 32>>>(out.data_ptr<float>(), n);
  return out;
}

}  // namespace anp_probes

TORCH_LIBRARY_FRAGMENT(anp_cuda_emu, m) {
  m.def("probe_divergent_sync", &anp_probes::probe_divergent_sync);
  m.def("probe_neighbour_read", &anp_probes::probe_neighbour_read);
  m.def("probe_row_sums", &anp_probes::probe_row_sums);
  m.def("probe_partial_warp_shuffle", &anp_probes::probe_partial_warp_shuffle);
  m.def("probe_launch", &anp_probes::probe_launch);
  m.def("probe_write_past_end", &anp_probes::probe_write_past_end);
  m.def("probe_distortion_backward_int64", &anp_probes::probe_distortion_backward_int64);
  m.def("probe_sparse_conv2d_int64", &anp_probes::probe_sparse_conv2d_int64);
}
