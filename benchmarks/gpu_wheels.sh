#!/usr/bin/env bash
# Download (here, where PyPI is reachable) the wheels gpu_suite.sh installs on the lent GPU machine, which
# reaches no registry and lacks these packages (see the device tool's KINDS.md). Python 3.12, x86-64.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl pyautoattack==0.2.0 torch-pruning==1.6.1
ls -la .whl
