"""Compile the CUDA kernels (csrc/anp_cuda.cu) for a GPU (default sm_90) on a machine without one.

nvcc builds the translation unit with the device flags of the real build (setup.py's -O3 -lineinfo and
torch's BuildExtension flags: the C++ standard it picks, its COMMON_NVCC_FLAGS) against the installed
torch's headers, then cuobjdump reads, per kernel instantiation: registers, local memory (spills) and
stack, static shared memory, SASS instructions (a static count) and the theoretical occupancy of the
launch's block size (kThreads in the source; every kernel launches with it).

Compiled, not run: nothing here says the kernels compute the right values (tests/test_cuda_emulated.py
runs their bodies on CPU) or how fast they are (benchmarks/gpu_suite.sh on a GPU does).

    python benchmarks/compile_cuda.py [--arch 90] [--out benchmarks/results]

Writes <out>/cuda_compile_sm<arch>.{json,md}. Needs nvcc; cuobjdump from the CUDA toolkit or Triton's
bundled copy. Exit status 1 when nvcc fails or a kernel spills.
"""
from __future__ import annotations

import argparse
import inspect
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _cubin import LIMITS, SASS_LINE, bundled_cuobjdump, theoretical_occupancy  # noqa: E402
from _harness import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "csrc" / "anp_cuda.cu"


def torch_cxx_standard() -> str:
    """The C++ standard torch's BuildExtension gives an extension that names none (setup.py names none)."""
    from torch.utils import cpp_extension
    found = re.search(r"cpp_flag_prefix \+ 'c\+\+(\d+)'", inspect.getsource(cpp_extension.BuildExtension))
    if not found:
        raise RuntimeError("torch's BuildExtension no longer adds a -std flag where it did: read its flags again")
    return f"c++{found.group(1)}"


def nvcc_command(obj: Path, shim: Path, arch: int = 90, optimise: bool = True) -> list[str]:
    """nvcc compiling csrc/anp_cuda.cu to obj with the CUDA build's flags (optimise=False: host code at -O0, a
    quicker compile check; the device code is the same). shim: a folder for the one cmake-generated header
    a CPU torch wheel lacks (an empty stand-in is enough to compile)."""
    from torch.utils import cpp_extension
    include = Path(torch.__file__).parent / "include"
    stand_in = shim / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    if not (include / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#pragma once\n")
    flags = ["-O3" if optimise else "-O0", "-lineinfo", *cpp_extension.COMMON_NVCC_FLAGS]
    return ["nvcc", f"-std={torch_cxx_standard()}", *flags, f"-arch=sm_{arch}", "-DANP_WITH_CUDA",
            f"-I{shim}", f"-I{include}", f"-I{include / 'torch' / 'csrc' / 'api' / 'include'}", f"-I{ROOT / 'csrc'}",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}", "-c", str(SOURCE), "-o", str(obj)]


def cuobjdump() -> str:
    return shutil.which("cuobjdump") or bundled_cuobjdump()


def demangle(names: list[str]) -> list[str]:
    """Readable kernel names: c++filt's, without the anonymous namespace's prefix and the parameter list."""
    text = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    out = []
    for name in text.splitlines():
        name = re.sub(r"anp::\(anonymous namespace\)::|anp::|c10::", "", name)
        out.append(re.sub(r"^void ", "", name.split("(")[0]))
    return out


def kernel_resources(obj: Path) -> list[dict]:
    """Per kernel in obj: registers, stack, local and shared bytes (cuobjdump --dump-resource-usage)."""
    text = subprocess.run([cuobjdump(), "--dump-resource-usage", str(obj)], capture_output=True, text=True,
                          check=True).stdout
    found = re.findall(r"Function (\S+):\s*\n\s*(REG:.*)", text)
    rows = []
    for (mangled, usage), name in zip(found, demangle([m for m, _ in found])):
        fields = dict(item.split(":", 1) for item in usage.split() if ":" in item)
        rows.append(dict(kernel=name, mangled=mangled, registers=int(fields["REG"]), stack=int(fields["STACK"]),
                         local_bytes=int(fields["LOCAL"]), shared_bytes=int(fields["SHARED"])))
    return rows


def sass_instructions(obj: Path) -> dict[str, int]:
    """Per mangled kernel name, the SASS instructions of its code (cuobjdump -sass; a static count)."""
    text = subprocess.run([cuobjdump(), "-sass", str(obj)], capture_output=True, text=True, check=True).stdout
    counts: dict[str, int] = {}
    current = None
    for line in text.splitlines():
        head = re.match(r"\s*Function : (\S+)", line)
        if head:
            current = head.group(1)
            counts[current] = 0
        elif current and SASS_LINE.match(line):
            counts[current] += 1
    return counts


def block_threads() -> int:
    """kThreads in csrc/anp_cuda.cu: the block size of every launch."""
    found = re.search(r"constexpr int kThreads = (\d+);", SOURCE.read_text())
    if not found:
        raise RuntimeError("csrc/anp_cuda.cu no longer defines kThreads: read its launch configurations again")
    return int(found.group(1))


def markdown(report: dict) -> str:
    lines = [f"# CUDA kernels compiled for sm_{report['arch']} (compiled, not run)", "",
             f"{report['stamp']}; nvcc {report['nvcc']}; compiled in {report['seconds']:.0f} s; "
             f"command: `{report['command']}`", "",
             f"{len(report['kernels'])} kernel instantiations, {sum(r['local_bytes'] > 0 for r in report['kernels'])} "
             f"with local memory (spills); blocks of {report['threads']} threads.", "",
             "| kernel | registers | local (spill) B | stack B | shared B | occupancy | SASS instructions |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["kernels"]:
        lines.append(f"| {r['kernel']} | {r['registers']} | {r['local_bytes']} | {r['stack']} | {r['shared_bytes']} "
                     f"| {r['occupancy']:.0%} | {r['instructions']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, choices=sorted(LIMITS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    from _harness import stamp
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "anp_cuda.o"
        start = time.time()
        build = subprocess.run(nvcc_command(obj, Path(tmp) / "shim", args.arch), capture_output=True, text=True)
        seconds = time.time() - start
        if build.returncode:
            print(build.stderr[-3000:], file=sys.stderr)
            return 1
        rows, counts, threads = kernel_resources(obj), sass_instructions(obj), block_threads()
    for r in rows:
        r["instructions"] = counts.get(r.pop("mangled"), -1)
        r["occupancy"] = theoretical_occupancy(r["registers"], threads // 32, r["shared_bytes"], args.arch)
    rows.sort(key=lambda r: r["kernel"])
    nvcc = re.search(r"release (\S+),", subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout)
    report = dict(arch=args.arch, stamp=stamp("cpu"), nvcc=nvcc.group(1) if nvcc else "?", seconds=seconds,
                  threads=threads, command="python benchmarks/compile_cuda.py" + (
                      f" --arch {args.arch}" if args.arch != 90 else ""), kernels=rows)
    write_results(f"cuda_compile_sm{args.arch}", report, markdown(report), args.out)
    return 1 if any(r["local_bytes"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
