"""Build anp_kernels._C: C++ CPU ops always, CUDA ops when torch has CUDA and nvcc exists.

ANP_KERNELS_CUDA=1 forces the CUDA build (and fails clearly if it cannot be done),
ANP_KERNELS_CUDA=0 skips it; ANP_KERNELS_DEBUG_INFO=1 keeps debug info in _C. Install with
`pip install --no-build-isolation .` so the build uses the torch already installed instead of
fetching a fresh (CUDA) one.
"""
import os
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - build-time message
    sys.exit(
        "anp_kernels: building needs PyTorch already installed. Run\n"
        "  pip install torch==2.13.0   # or your CUDA build\n"
        "  pip install --no-build-isolation .\n"
    )


def cuda_wanted() -> bool:
    """Decide whether to compile csrc/*.cu (torch.version.cuda gates it, see NOTES)."""
    flag = os.environ.get("ANP_KERNELS_CUDA", "auto").strip().lower()
    possible = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if flag in ("1", "true", "yes"):
        if not possible:
            sys.exit(
                "anp_kernels: ANP_KERNELS_CUDA=1 but CUDA ops cannot be built: "
                f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={cpp_extension.CUDA_HOME!r} "
                "(a CPU-only torch cannot build CUDA extensions)."
            )
        return True
    if flag in ("0", "false", "no"):
        return False
    return possible


def extension():
    here = os.path.dirname(os.path.abspath(__file__))
    sources = [os.path.join("csrc", "anp_cpu.cpp"), os.path.join("csrc", "max_pool_cpu.cpp")]
    # no -std: torch's BuildExtension adds the standard its headers need (C++17 in torch 2.11, C++20 in
    # 2.13 and later: torch 2.14's headers fail under C++17)
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math"]
    # Python's own CFLAGS carry -g: debug info over the torch headers makes _C 17 MB instead of 0.9 MB and the
    # build slower; ANP_KERNELS_DEBUG_INFO=1 keeps it (a debugger, a sanitizer's symbolised reports)
    if os.environ.get("ANP_KERNELS_DEBUG_INFO", "0").strip().lower() not in ("1", "true", "yes"):
        cxx.append("-g0")
    kwargs = dict(include_dirs=[os.path.join(here, "csrc")], extra_link_args=["-fopenmp"])
    if cuda_wanted():
        sources.append(os.path.join("csrc", "anp_cuda.cu"))
        # no --use_fast_math: the kernels are memory-bound (a few expf/logf per mask row, not per element), so
        # approximate intrinsics and flushed subnormals would buy no time and move the masks and gradients
        # away from the CPU ops and the reference, which use the accurate functions
        nvcc = ["-O3", "-lineinfo"]
        return cpp_extension.CUDAExtension(
            "anp_kernels._C", sources, extra_compile_args={"cxx": cxx + ["-DANP_WITH_CUDA"], "nvcc": nvcc}, **kwargs
        )
    return cpp_extension.CppExtension("anp_kernels._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)


setup(
    packages=find_packages(include=["anp_kernels", "anp_kernels.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
