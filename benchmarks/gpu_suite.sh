#!/usr/bin/env bash
# The GPU run of issue 13 in one command, for a lent H100/H200 (the `device` tool) with this tree.
# Sized for the tool's budget (15 minutes of device time in all, at most 10 minutes a command, a
# minute or two of it the machine's start): every step runs under its own time limit, cut further so
# that the whole suite ends by the deadline (SUITE_DEADLINE_S, default 540 s), in this order of worth:
#   build       the CUDA extension (sm_90) against the machine's torch, nothing from the network
#               (packages the machine lacks come as wheels in .whl/, made here by benchmarks/gpu_wheels.sh);
#   backends    which backends the build gives;
#   tests_ops   the op and layer tests (CUDA and Triton backends are parametrised in on a CUDA machine);
#   sanitizer   every CUDA kernel once under compute-sanitizer (memcheck);
#   bench_*     fused ops, sparse conv, training step, deploy latency on cuda (results/*_cuda.{json,md});
#               the sparse conv's log names the tile configuration Triton's autotuner kept per shape;
#   profile_ncu Nsight Compute counters (speed of light, memory, occupancy) of the kernels behind the
#               goals, one launch each (benchmarks/ncu_kernels.py): OUT/ncu.csv;
#   tests_rest  the rest of the suite (CPU-side evaluation, CLI, recipes: the CPU CI runs them too).
# After every step the logs, tables and JSON are packed into OUT/gpu_results.tar.gz, so a command cut
# off by the tool's limit still brings back all finished steps. Safe to re-run: each step overwrites
# its own outputs; a failed or timed-out step is logged ("exit 124" = its limit) and the next one runs.
#   bash benchmarks/gpu_suite.sh [OUT] [--quick] [--dry-run] [--steps=a,b]   (OUT: $OUT, else gpu_results/)
#   --dry-run prints the plan (steps, limits, commands) and runs nothing; --steps=a,b runs only those
#   steps (a second call on the still-warm machine, whose build is kept, for the steps a first one cut).
# Last, in the reserve: benchmarks/gpu_goals.py writes results/goals_cuda.{json,md} (met / missed /
# not measured per goal) from whatever the steps wrote.
# The call, from a session with a device (the working tree must stay under the tool's 64 MiB, and the
# committed AutoAttack states alone are larger, so they step aside for it):
#   bash benchmarks/gpu_wheels.sh; mv benchmarks/results/mnist_repro/eval_cache /tmp/eval_cache_aside
#   device run: command "bash benchmarks/gpu_suite.sh", carry [".whl"], timeout_s 600
#   mv /tmp/eval_cache_aside benchmarks/results/mnist_repro/eval_cache
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_results}"; quick=0; dry=0; only=""
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;; --dry-run) dry=1 ;;
    --steps=*) only=",${arg#--steps=}," ;;
    --*) echo "gpu_suite: unknown option $arg" >&2; exit 2 ;;
    *) out="$arg" ;;
  esac
done
deadline="${SUITE_DEADLINE_S:-540}"
pack_reserve=20
rounds=10; [ "$quick" = 1 ] && rounds=3
conv_rounds=$((rounds / 2))  # 198 rows of 6 candidates: half the rounds, so that more of them fit the limit
workers=$(python3 -c "import xdist" 2>/dev/null && echo "-p xdist -n 8" || echo "")
case_limit=$(python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout 300" || echo "")
op_tests="tests/test_backend.py tests/test_distortion.py tests/test_mask.py tests/test_sparse_conv.py tests/test_pool.py tests/test_nn.py tests/test_objective.py"
rest_ignores=$(for t in $op_tests; do printf -- '--ignore=%s ' "$t"; done)
# name | limit in seconds | command
ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | tail -1)
ncu_sections="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats"
plan=(
  "build|150|export ANP_KERNELS_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16; python3 -m pip install --no-build-isolation --no-deps -e . || { echo 'pip could not install: building in place'; python3 setup.py -q build_ext --inplace; }"
  "backends|20|python3 -c 'import anp_kernels, json, torch; print(torch.__version__, torch.cuda.get_device_name()); print(json.dumps(anp_kernels.backend(\"cuda\")))'"
  "tests_ops|120|python3 -m pytest -q -rs $workers $case_limit $op_tests"
  "sanitizer|45|compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/sanitize_cuda.py --device cuda"
  "bench_ops|100|python3 benchmarks/bench_ops.py --device cuda --rounds $rounds"
  "bench_sparse_conv|120|TRITON_PRINT_AUTOTUNING=1 python3 benchmarks/bench_sparse_conv.py --device cuda --rounds $conv_rounds --min-round-ms 5 --dtypes float16 bfloat16 float32"
  "bench_vgg_step|60|python3 benchmarks/bench_train_step.py --model vgg16 --device cuda --rounds $rounds --sparsities 0.5,0.765,0.9 --autocast"
  "profile_ncu|75|${ncu_bin:-ncu} --clock-control none --profile-from-start off --nvtx --csv --page details $ncu_sections --log-file $out/ncu.csv python3 benchmarks/ncu_kernels.py --device cuda"
  "bench_deploy|45|python3 benchmarks/bench_deploy.py --device cuda --runs $rounds --min-round-s 0.05 --models vgg16 lenet5 --dtypes float16 float32 --batches 1 64 256"
  "bench_train_step|45|python3 benchmarks/bench_train_step.py --device cuda --rounds $rounds --autocast"
  "bench_overhead|20|python3 benchmarks/bench_overhead.py --device cuda --rounds $rounds"
  "tests_rest|90|python3 -m pytest -q -rs $workers $case_limit tests $rest_ignores"
  "bench_compiled_step|120|python3 benchmarks/bench_train_step.py --device cuda --rounds $rounds --compile inductor --out $out/compiled"
)
if [ -n "$only" ]; then  # --steps=a,b: only these steps, in the plan's order
  kept=()
  for entry in "${plan[@]}"; do [[ "$only" == *",${entry%%|*},"* ]] && kept+=("$entry"); done
  for name in ${only//,/ }; do
    printf '%s\n' "${plan[@]}" | grep -q "^$name|" || { echo "gpu_suite: unknown step $name" >&2; exit 2; }
  done
  plan=("${kept[@]}")
fi
if [ "$dry" = 1 ]; then
  total=0
  for entry in "${plan[@]}"; do
    IFS='|' read -r name limit cmd <<<"$entry"; total=$((total + limit))
    printf '%-18s %4ss  %s\n' "$name" "$limit" "$cmd"
  done
  echo "limits add up to ${total}s; deadline ${deadline}s (steps past it are cut or skipped)"
  exit 0
fi
mkdir -p "$out/results"
log() { echo "[gpu_suite $(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$out/suite.log"; }
pack() {
  cp benchmarks/results/*_cuda.* "$out/results/" 2>/dev/null
  tar -czf "$out/gpu_results.tar.gz.tmp" -C "$out" --exclude 'gpu_results.tar.gz*' . \
    && mv "$out/gpu_results.tar.gz.tmp" "$out/gpu_results.tar.gz"
}
step() {
  local name=$1 limit=$2 cmd=$3 left=$((deadline - pack_reserve - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then log "$name: skipped (the deadline is ${left}s away)"; return; fi
  log "$name (limit ${limit}s): $cmd"
  timeout --kill-after=5 "$limit" bash -c "$cmd" >"$out/$name.txt" 2>&1
  log "$name: exit $?"
  tail -5 "$out/$name.txt" | tee -a "$out/suite.log"
  pack
}
export PYTHONUNBUFFERED=1
# the tree itself on the path: the package imports even where pip could not install it (the build step's fallback)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/anp_site .whl/*.whl \
    && export PYTHONPATH=/tmp/anp_site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv >"$out/device.txt" 2>&1
log "deadline ${deadline}s; pytest workers: ${workers:-none}"
for entry in "${plan[@]}"; do
  IFS='|' read -r name limit cmd <<<"$entry"
  step "$name" "$limit" "$cmd"
done
# the goals table (issue 13's targets against what was measured) from whatever the steps wrote: seconds
timeout 15 python3 benchmarks/gpu_goals.py --device cuda >"$out/goals.txt" 2>&1
log "goals: exit $?"; head -1 "$out/goals.txt" | tee -a "$out/suite.log"
log "done"; pack
