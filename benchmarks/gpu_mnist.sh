#!/usr/bin/env bash
# The MNIST evidence (reproduction, thin-ice study, boundary-aware pruning) on a lent GPU, in one command.
# Trains whatever run is missing (reproduce_mnist.py: TrainConfig's device "auto" takes the GPU), prunes on
# cuda, attacks on cuda (AutoAttack and distance states are bound to the model's content, the data and the
# settings, not the device: what is already in benchmarks/results/mnist_repro/eval_cache is reused), writes
# the reports, and packs what a later session commits: OUT/mnist_reports.tar.gz (results JSON/Markdown/PNG/CSV,
# each model's row.json) and OUT/mnist_models.tar.gz (the checkpoints this run wrote); the large
# AutoAttack states stay on that machine (the device tool returns at most 16 MiB a file).
# The package must be installed there first (benchmarks/gpu_suite.sh's build step, or pip install -e .).
# The device tool sends at most 64 MiB of working tree: when the committed evaluation states make it larger,
# move benchmarks/results/mnist_repro/eval_cache out of the tree for the call (the GPU recomputes what it
# lacks in minutes) and back afterwards.
# Second in line after benchmarks/gpu_suite.sh: with 15 minutes of device time a session, the suite takes one
# 10-minute command; run this only in what is left (the reports and new checkpoints are packed after every
# step, so a command cut off at its limit still brings back what the finished steps wrote).
#   bash benchmarks/gpu_mnist.sh [OUT]        (OUT: $OUT, else gpu_mnist/)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_mnist}}"
mkdir -p "$out"
touch "$out/started"
log() { echo "[gpu_mnist $(date -u +%H:%M:%S)] $*" | tee -a "$out/mnist.log"; }
pack() {
  reports=$(find benchmarks/results -maxdepth 1 -name 'mnist_*' -type f; find benchmarks/results/mnist_* -name '*.json' \
            -o -name '*.md' -o -name '*.png' -o -name '*.csv')
  tar -czf "$out/mnist_reports.tar.gz" $reports
  new_models=$(find benchmarks/results -name checkpoint.safetensors -newer "$out/started")
  [ -n "$new_models" ] && tar -czf "$out/mnist_models.tar.gz" $new_models; return 0
}
run() { log "$*"; "$@" >>"$out/mnist.log" 2>&1; log "exit $?"; pack; }
export PYTHONUNBUFFERED=1
run python3 benchmarks/reproduce_mnist.py --stage train --quiet
run python3 benchmarks/thin_ice_mnist.py --stage prune --device cuda --quiet
run python3 benchmarks/boundary_aware.py --data mnist --stage prune --variants distill,near+distill --device cuda --quiet
run python3 benchmarks/reproduce_mnist.py --stage eval --device cuda --quiet
run python3 benchmarks/reproduce_mnist.py --stage report --quiet
run python3 benchmarks/thin_ice_mnist.py --stage study --device cuda --quiet
run python3 benchmarks/boundary_aware.py --data mnist --stage study --variants distill,near+distill --device cuda --quiet
ls -la "$out" | tee -a "$out/mnist.log"
