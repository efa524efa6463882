"""Builds csrc/anp_cuda.cu as a CPU extension over cuda_emulation.h, so its kernels run in CI.

The CUDA source changes as little as the C++ compiler needs: each `kernel<<<config>>>(args)` launch
becomes `::anp_emu::launcher(kernel, ::anp_emu::Config(config))(args)`, and the ops register as
torch.ops.anp_cuda_emu.* (schemas inferred from the functions) instead of under the CUDA key of
anp_kernels; probes.cu adds kernels that show the emulation's own checks fire. The stand-in c10/cuda headers next to this file come first on the include path.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

import torch
from torch.utils import cpp_extension

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# ANP_CUDA_EMU_SOURCE: another copy of the CUDA source (mutants.py builds mutated ones)
CUDA_SOURCE = Path(os.environ.get("ANP_CUDA_EMU_SOURCE", ROOT / "csrc" / "anp_cuda.cu"))
LAUNCH = re.compile(r"^(\s*)(\S.*?)<<<(.*?)>>>\(", re.M)
REGISTRATION = "TORCH_LIBRARY_IMPL(anp_kernels, CUDA, m)"


def rewrite_launches(source: str, name: str) -> str:
    """Each `kernel<<<config>>>(` as `::anp_emu::launcher(kernel, ::anp_emu::Config(config))(`."""
    launches = source.count("<<<")
    text, rewritten = LAUNCH.subn(r"\1::anp_emu::launcher(\2, ::anp_emu::Config(\3))(", source)
    if rewritten == 0 or rewritten != launches:
        raise RuntimeError(f"{name}: rewrote {rewritten} of {launches} launches (each `<<<` must open a line's call)")
    return text


def emulated_source(cuda_source: str, probes: str = "") -> str:
    """The C++ translation of anp_cuda.cu (ops in the anp_cuda_emu library), then the probe kernels."""
    text = rewrite_launches(cuda_source, str(CUDA_SOURCE))
    if text.count(REGISTRATION) != 1:
        raise RuntimeError(f"{CUDA_SOURCE}: expected one `{REGISTRATION}` block")
    head, registrations = text.split(REGISTRATION)
    ops = head + "TORCH_LIBRARY(anp_cuda_emu, m)" + registrations.replace("m.impl(", "m.def(")
    return '#include "cuda_emulation.h"\n' + ops + (rewrite_launches(probes, "probes.cu") if probes else "")


# ANP_CUDA_EMU_ASAN=1: build with AddressSanitizer (the process must preload libasan; see asan_env)
ASAN = os.environ.get("ANP_CUDA_EMU_ASAN") == "1"
ASAN_FLAGS = ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"]


def build_dir() -> Path:
    checkout = hashlib.sha1(str(ROOT).encode()).hexdigest()[:10]  # one folder per checkout: no cross-talk
    default = Path(tempfile.gettempdir()) / f"anp_cuda_emu_{os.getuid()}_{checkout}"
    path = Path(os.environ.get("ANP_CUDA_EMU_BUILD", default)) / ("asan" if ASAN else "plain")
    path.mkdir(parents=True, exist_ok=True)
    return path


def asan_env() -> dict:
    """The environment of a Python process that loads the AddressSanitizer build."""
    # libstdc++ too: without it ASan's __cxa_throw interceptor finds no real __cxa_throw in python
    libs = [subprocess.run(["g++", f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
            for lib in ("libasan.so", "libstdc++.so")]
    if not all(Path(lib).is_absolute() and Path(lib).exists() for lib in libs):
        raise RuntimeError(f"libasan.so / libstdc++.so not found (g++ -print-file-name=...): {libs}")
    return dict(os.environ, ANP_CUDA_EMU_ASAN="1", LD_PRELOAD=" ".join(libs),
                ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:exitcode=23")


def load():
    """Builds (once per source change; cpp_extension locks the folder for parallel workers) and loads the ops."""
    folder = build_dir()
    source = folder / "anp_cuda_emulated.cpp"
    text = emulated_source(CUDA_SOURCE.read_text(), (HERE / "probes.cu").read_text())
    if not source.exists() or source.read_text() != text:
        partial = folder / f".anp_cuda_emulated.{os.getpid()}.cpp"
        partial.write_text(text)
        partial.replace(source)
    cpp_extension.load(
        name="anp_cuda_emu_asan" if ASAN else "anp_cuda_emu",
        sources=[str(source)],
        extra_include_paths=[str(HERE), str(ROOT / "csrc")],
        extra_cflags=ASAN_FLAGS if ASAN else ["-O2"],
        extra_ldflags=["-fsanitize=address"] if ASAN else [],
        build_directory=str(folder),
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.anp_cuda_emu
