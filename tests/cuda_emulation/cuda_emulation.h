// A small CUDA execution model on the CPU, so that csrc/anp_cuda.cu's kernels run in CI.
//
// What it emulates: the CUDA keywords used by anp_cuda.cu, threadIdx / blockIdx / blockDim /
// gridDim, kernel launches (`<<<...>>>` is rewritten into anp_emu::launcher by
// tests/cuda_emulation/emulate.py), __syncthreads, __shfl_down_sync (full warps) and
// atomicAdd. Every CUDA thread of a block is a coroutine (ucontext) with its own stack; the
// threads of a block run in a shuffled order up to their next barrier, the blocks of a grid run
// one after another in a shuffled order (a fixed seed per launch: reruns are reproducible).
//
// What it checks, raising an error from the launch: launch configurations CUDA would reject
// (empty or oversized grids and blocks, values that do not fit the dim3 fields), __syncthreads
// reached by only part of a block (some threads exited or wait elsewhere), __shfl_down_sync
// with a partial mask, a partial warp or a width other than 32, and barriers that can never
// be released.
//
// What it cannot show: races between blocks (they never overlap here), the memory model
// (every access is sequentially consistent), timing, and the device's own float intrinsics
// (expf / logf are the host libm's, so results can differ from a GPU in the last ulp).
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>  // before the keyword macros below, so no torch header sees them
#include <c10/util/Exception.h>
#include <torch/library.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static  // one block runs at a time, so one copy serves every block

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace anp_emu {

enum class State { Runnable, AtSyncthreads, AtShuffle, Done };

struct Thread {
  ucontext_t context;
  State state = State::Runnable;
  uint3 index{0, 0, 0};
  uint64_t shuffle_in = 0, shuffle_out = 0;
  unsigned shuffle_delta = 0, shuffle_mask = 0;
  int shuffle_width = 0;
};

constexpr size_t kStackBytes = 128 * 1024;

// The threads of the block that runs now, and the scheduler's context.
struct Block {
  std::vector<Thread> threads;
  std::vector<std::unique_ptr<char[]>> stacks;
  ucontext_t scheduler;
  size_t current = 0;
  const std::function<void()>* body = nullptr;
  std::string error;
};

inline thread_local Block* active = nullptr;

inline Thread& current_thread() { return active->threads[active->current]; }

// Hands control back to the scheduler until the barrier `s` releases this thread.
inline void park(State s) {
  Thread& t = current_thread();
  t.state = s;
  swapcontext(&t.context, &active->scheduler);
}

inline void thread_entry() {
  try {
    (*active->body)();
  } catch (const std::exception& e) {
    if (active->error.empty()) active->error = std::string("exception in a kernel thread: ") + e.what();
  }
  current_thread().state = State::Done;  // uc_link returns to the scheduler
}

// Releases full warps whose 32 threads all wait in __shfl_down_sync; false when none could be.
inline bool release_shuffles(Block& b) {
  bool released = false;
  for (size_t w = 0; w * 32 < b.threads.size(); ++w) {
    const size_t lo = w * 32, hi = std::min(b.threads.size(), lo + 32);
    bool all = true;
    for (size_t i = lo; i < hi; ++i) all = all && b.threads[i].state == State::AtShuffle;
    if (!all) continue;
    if (hi - lo != 32) {
      b.error = "__shfl_down_sync in a partial warp (block size not a multiple of 32)";
      return false;
    }
    for (size_t i = lo; i < hi; ++i) {
      Thread& t = b.threads[i];
      if (t.shuffle_mask != 0xffffffffu || t.shuffle_width != 32) {
        b.error = "__shfl_down_sync with a mask other than 0xffffffff or a width other than 32";
        return false;
      }
      const size_t src = i - lo + t.shuffle_delta;
      t.shuffle_out = src < 32 ? b.threads[lo + src].shuffle_in : t.shuffle_in;
    }
    for (size_t i = lo; i < hi; ++i) b.threads[i].state = State::Runnable;
    released = true;
  }
  return released;
}

// Releases __syncthreads when every thread of the block waits there; sets an error when some never can.
inline bool release_syncthreads(Block& b) {
  size_t waiting = 0, done = 0;
  for (const Thread& t : b.threads) waiting += t.state == State::AtSyncthreads, done += t.state == State::Done;
  if (waiting == b.threads.size()) {
    for (Thread& t : b.threads) t.state = State::Runnable;
    return true;
  }
  if (done < b.threads.size() && b.error.empty()) {
    b.error = "divergent barrier: " + std::to_string(waiting) + " threads wait in __syncthreads, " +
              std::to_string(done) + " have exited, " + std::to_string(b.threads.size() - waiting - done) +
              " wait in __shfl_down_sync";
  }
  return false;
}

// Runs one block to its end: every runnable thread up to its next barrier, in `order`, then the barriers.
inline void run_block(Block& b, const std::vector<size_t>& order) {
  for (size_t i = 0; i < b.threads.size(); ++i) {
    Thread& t = b.threads[i];
    t.state = State::Runnable;
    getcontext(&t.context);
    t.context.uc_stack.ss_sp = b.stacks[i].get();
    t.context.uc_stack.ss_size = kStackBytes;
    t.context.uc_link = &b.scheduler;
    makecontext(&t.context, thread_entry, 0);
  }
  while (b.error.empty()) {
    for (size_t i : order) {
      if (b.threads[i].state != State::Runnable) continue;
      b.current = i;
      threadIdx = b.threads[i].index;
      swapcontext(&b.scheduler, &b.threads[i].context);
    }
    if (std::all_of(b.threads.begin(), b.threads.end(), [](const Thread& t) { return t.state == State::Done; })) return;
    if (!release_shuffles(b) && b.error.empty()) release_syncthreads(b);
  }
}

// A launch configuration as CUDA checks it (cudaErrorInvalidConfiguration).
struct Config {
  dim3 grid, block;

  template <typename G, typename B, typename M = int, typename S = int>
  Config(G g, B bl, M shared_bytes = 0, S /*stream*/ = {}) : grid(to_dim3(g, "grid")), block(to_dim3(bl, "block")) {
    TORCH_CHECK(static_cast<int64_t>(shared_bytes) == 0, "cuda_emulation: dynamic shared memory is not emulated");
    TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 2147483647u && grid.y <= 65535u &&
                    grid.z <= 65535u,
                "invalid launch: grid (", grid.x, ", ", grid.y, ", ", grid.z, ")");
    const uint64_t threads = uint64_t{block.x} * block.y * block.z;
    TORCH_CHECK(threads >= 1 && threads <= 1024 && block.x <= 1024 && block.y <= 1024 && block.z <= 64,
                "invalid launch: block (", block.x, ", ", block.y, ", ", block.z, ")");
  }

  static dim3 to_dim3(dim3 d, const char*) { return d; }
  template <typename I, typename = std::enable_if_t<std::is_integral_v<I>>>
  static dim3 to_dim3(I v, const char* what) {
    TORCH_CHECK(v >= 1 && static_cast<uint64_t>(v) <= 0xffffffffull, "invalid launch: ", what, " size ", v,
                " (an integer launch size must be in [1, 2^32))");
    return dim3(static_cast<unsigned int>(v));
  }
};

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

inline uint64_t next_launch_seed() {
  static uint64_t launches = 0;
  return 0x5DEECE66Dull + 7919 * launches++;
}

// Runs `body` once per CUDA thread of every block of `cfg`.
inline void run_grid(const Config& cfg, const std::function<void()>& body) {
  std::lock_guard<std::mutex> lock(launch_mutex());
  std::mt19937_64 rng(next_launch_seed());
  Block b;
  b.body = &body;
  const size_t threads = size_t{cfg.block.x} * cfg.block.y * cfg.block.z;
  b.threads.resize(threads);
  for (size_t i = 0; i < threads; ++i) {
    b.stacks.emplace_back(new char[kStackBytes]);
    b.threads[i].index = uint3{static_cast<unsigned>(i % cfg.block.x),
                               static_cast<unsigned>(i / cfg.block.x % cfg.block.y),
                               static_cast<unsigned>(i / (size_t{cfg.block.x} * cfg.block.y))};
  }
  std::vector<size_t> order(threads);
  std::iota(order.begin(), order.end(), size_t{0});
  std::vector<uint64_t> blocks(uint64_t{cfg.grid.x} * cfg.grid.y * cfg.grid.z);
  std::iota(blocks.begin(), blocks.end(), uint64_t{0});
  std::shuffle(blocks.begin(), blocks.end(), rng);
  Block* outer = active;
  active = &b;
  blockDim = cfg.block;
  gridDim = cfg.grid;
  for (uint64_t id : blocks) {
    blockIdx = uint3{static_cast<unsigned>(id % cfg.grid.x), static_cast<unsigned>(id / cfg.grid.x % cfg.grid.y),
                     static_cast<unsigned>(id / (uint64_t{cfg.grid.x} * cfg.grid.y))};
    std::shuffle(order.begin(), order.end(), rng);
    run_block(b, order);
    if (!b.error.empty()) break;
  }
  active = outer;
  TORCH_CHECK(b.error.empty(), "cuda_emulation: ", b.error);
}

// launcher(kernel, Config(grid, block, shmem, stream))(args...) is what `kernel<<<...>>>(args...)` becomes.
template <typename... Params>
struct Launch {
  void (*kernel)(Params...);
  Config cfg;
  template <typename... Args>
  void operator()(Args&&... args) const {
    const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);  // converted once, as CUDA does
    auto fn = kernel;
    run_grid(cfg, [&] { std::apply(fn, params); });
  }
};

template <typename... Params>
Launch<Params...> launcher(void (*kernel)(Params...), Config cfg) {
  return Launch<Params...>{kernel, cfg};
}

}  // namespace anp_emu

// ---- device functions

inline void __syncthreads() {
  TORCH_CHECK(anp_emu::active, "__syncthreads outside a kernel");
  anp_emu::park(anp_emu::State::AtSyncthreads);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "__shfl_down_sync: a value of at most 8 bytes");
  anp_emu::Thread& t = anp_emu::current_thread();
  std::memcpy(&t.shuffle_in, &value, sizeof(T));
  t.shuffle_mask = mask, t.shuffle_delta = delta, t.shuffle_width = width;
  anp_emu::park(anp_emu::State::AtShuffle);
  T out;
  std::memcpy(&out, &anp_emu::current_thread().shuffle_out, sizeof(T));
  return out;
}

// Threads of one block never run at once here, so a plain read-modify-write is atomic.
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
