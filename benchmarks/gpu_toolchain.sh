#!/usr/bin/env bash
# The GPU machine's toolchain, checked here without a GPU: in a virtual environment with the torch and
# Triton the lent H100/H200 runs (torch 2.11.0+cu130, triton 3.6.0: the device tool's KINDS.md), on a
# copy of this working tree,
#   1. build the CUDA extension as gpu_suite.sh's build step does (ANP_KERNELS_CUDA=1, sm_90, nvcc here),
#      and read the sm_90 machine code in it (Triton's bundled cuobjdump);
#   2. run the whole test suite on that torch and Triton (CPU tensors; Triton under its interpreter;
#      NumPy below 2.4, which Triton 3.6's interpreter cannot run with: anp_kernels._backend names it);
#   3. compile every Triton kernel for sm_90 with that Triton (benchmarks/compile_triton.py): the
#      binaries, registers and spills the GPU run will get, in results/triton_compile_sm90_triton3.6.*.
# What it cannot say: whether any kernel computes the right values on a GPU, or how fast (gpu_suite.sh).
# Needs the package index (the CUDA torch wheel and its CUDA libraries, about 4 GB) and nvcc.
#   bash benchmarks/gpu_toolchain.sh [--skip-tests]   (TORCH=, TRITON=, VENV= override the defaults)
# Writes benchmarks/results/gpu_toolchain_cpu.{json,md}; exit status 1 when a step fails.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
torch_version="${TORCH:-2.11.0}"; triton_version="${TRITON:-3.6.0}"
venv="${VENV:-/tmp/anp_gpu_toolchain}"; tests=1
for arg in "$@"; do
  case "$arg" in
    --skip-tests) tests=0 ;;
    *) echo "gpu_toolchain: unknown option $arg" >&2; exit 2 ;;
  esac
done
nvcc_bin=$(command -v nvcc) || { echo "gpu_toolchain: nvcc not found" >&2; exit 1; }
cuda_home="${CUDA_HOME:-$(ls -d /usr/local/cuda 2>/dev/null || dirname "$(dirname "$(readlink -f "$nvcc_bin")")")}"
work=$(mktemp -d /tmp/anp_toolchain.XXXXXX); trap 'rm -rf "$work"' EXIT
py="$venv/bin/python"
[ -x "$py" ] || python3 -m venv "$venv" || exit 1
"$py" -m pip install -q "torch==$torch_version" "triton==$triton_version" "numpy<2.4" ninja "setuptools>=64,<82" \
  wheel safetensors tqdm pytest pytest-benchmark pyautoattack==0.2.0 scipy scikit-learn matplotlib \
  torch-pruning==1.6.1 onnx onnxruntime || { echo "gpu_toolchain: could not install the toolchain" >&2; exit 1; }
# the working tree as it is: tracked and untracked files git does not ignore (so not the built extension)
(cd "$root" && git ls-files -z -co --exclude-standard | tar --null --ignore-failed-read -cf - -T -) \
  | tar -xf - -C "$work" || exit 1
cd "$work" || exit 1
start=$SECONDS
env CUDA_HOME="$cuda_home" ANP_KERNELS_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS="$(nproc)" \
  "$py" -m pip install -q --no-build-isolation --no-deps -e . >"$work/build.log" 2>&1
build_rc=$?; build_s=$((SECONDS - start))
cuobjdump="$("$py" -c 'import triton, os; print(os.path.dirname(triton.__file__))')/backends/nvidia/bin/cuobjdump"
sm90=$("$cuobjdump" --list-elf anp_kernels/_C*.so 2>/dev/null | grep -c "sm_90")
tests_line="not run"
if [ "$tests" = 1 ] && [ "$build_rc" = 0 ]; then
  "$py" -m pytest -q -p no:cacheprovider tests >"$work/tests.log" 2>&1
  tests_rc=$?; tests_line=$(tail -1 "$work/tests.log")
else
  tests_rc=0
fi
env -u TRITON_INTERPRET "$py" benchmarks/compile_triton.py --out "$root/benchmarks/results" >"$work/compile.log" 2>&1
compile_rc=$?
export build_rc build_s sm90 tests_rc tests_line compile_rc torch_version triton_version
"$py" - "$root" <<'EOF'
import json, os, platform, sys, datetime
sys.path.insert(0, os.path.join(sys.argv[1], "benchmarks"))
import numpy, torch, triton
from _harness import write_results
e = os.environ
data = dict(stamp=f"{platform.machine()} CPU, {os.cpu_count()} cores; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            torch=torch.__version__, torch_cuda=torch.version.cuda, triton=triton.__version__, numpy=numpy.__version__,
            build_ok=e["build_rc"] == "0", build_seconds=int(e["build_s"]), sm90_elf_images=int(e["sm90"] or 0),
            tests_ok=e["tests_rc"] == "0", tests=e["tests_line"], compile_ok=e["compile_rc"] == "0")
rows = [("CUDA extension build (ANP_KERNELS_CUDA=1, TORCH_CUDA_ARCH_LIST=9.0)",
         f"{'built' if data['build_ok'] else 'FAILED'} in {data['build_seconds']} s; {data['sm90_elf_images']} sm_90 ELF images in _C"),
        ("test suite (CPU tensors, Triton interpreter)", data["tests"]),
        ("Triton kernels compiled for sm_90", f"{'ok' if data['compile_ok'] else 'FAILED'}: results/triton_compile_sm90_triton{triton.__version__.rsplit('.', 1)[0]}.md")]
md = "\n".join([f"# The GPU machine's toolchain on a CPU\n\n{data['stamp']}; torch {data['torch']} (CUDA {data['torch_cuda']}), "
                f"triton {data['triton']}, numpy {data['numpy']}; command: `bash benchmarks/gpu_toolchain.sh`\n",
                "| check | result |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows]])
write_results("gpu_toolchain_cpu", data, md, os.path.join(sys.argv[1], "benchmarks", "results"))
sys.exit(0 if data["build_ok"] and data["tests_ok"] and data["compile_ok"] else 1)
EOF
rc=$?
[ "$build_rc" = 0 ] || tail -30 "$work/build.log"
[ "$tests_rc" = 0 ] || grep -E "^(FAILED|ERROR)" "$work/tests.log" | head -30
[ "$compile_rc" = 0 ] || tail -30 "$work/compile.log"
exit $rc
