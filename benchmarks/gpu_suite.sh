#!/usr/bin/env bash
# The GPU run of issue 13 in one command, for a lent H100/H200 (the `device` tool) with this tree:
#   1. builds the CUDA extension (sm_90) against the machine's torch, installing nothing from the network
#      (packages the machine lacks come as wheels in .whl/, made here by benchmarks/gpu_wheels.sh);
#   2. runs the whole test suite (CUDA and Triton backends are parametrised in on a CUDA machine);
#   3. runs every CUDA kernel once under compute-sanitizer (memcheck);
#   4. runs every benchmark on cuda, writing results/*_cuda.{json,md};
#   5. packs the tables, logs and JSON into OUT/gpu_results.tar.gz (the device tool returns <= 8 files).
# Safe to re-run: each step overwrites its own outputs; a failed step is logged and the next one runs.
#   bash benchmarks/gpu_suite.sh [OUT] [--quick]      (OUT: $OUT, else gpu_results/)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_results}}"
quick="${2:-}"
mkdir -p "$out/results"
log() { echo "[gpu_suite $(date -u +%H:%M:%S)] $*" | tee -a "$out/suite.log"; }
step() { local name=$1; shift; log "$name: $*"; "$@" >"$out/$name.txt" 2>&1; local rc=$?; log "$name: exit $rc"; tail -5 "$out/$name.txt" | tee -a "$out/suite.log"; return 0; }
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/anp_site .whl/*.whl \
    && export PYTHONPATH=/tmp/anp_site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/device.txt" 2>&1
step build env ANP_KERNELS_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 python3 -m pip install --no-build-isolation --no-deps -e .
step backends python3 -c "import anp_kernels, json, torch; print(torch.__version__, torch.cuda.get_device_name()); print(json.dumps(anp_kernels.backend('cuda')))"
step tests python3 -m pytest -q -rs tests
step sanitizer compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/sanitize_cuda.py --device cuda
rounds=15; [ "$quick" = "--quick" ] && rounds=3
step bench_ops python3 benchmarks/bench_ops.py --device cuda --rounds "$rounds"
step bench_sparse_conv python3 benchmarks/bench_sparse_conv.py --device cuda --rounds "$rounds"
step bench_train_step python3 benchmarks/bench_train_step.py --device cuda --rounds "$rounds"
step bench_deploy python3 benchmarks/bench_deploy.py --device cuda --runs "$rounds"
cp benchmarks/results/*_cuda.* "$out/results/" 2>/dev/null
tar -czf "$out/gpu_results.tar.gz" -C "$out" --exclude gpu_results.tar.gz . && log "packed $out/gpu_results.tar.gz"
