"""Shows that tests/test_cuda_emulated.py can fail: each mutant of csrc/anp_cuda.cu (a barrier removed,
a loop bound, an index or a grid size wrong) is built under the emulation and must fail the tests
selected for it. About a minute per mutant on 2 CPU cores, so not part of the suite:

    python tests/cuda_emulation/mutants.py [NAME ...]

Exit status 1 when a mutant survives (the tests missed a bug of that kind).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "csrc" / "anp_cuda.cu"
TESTS = ROOT / "tests" / "test_cuda_emulated.py"

# name: (text in anp_cuda.cu, its replacement, pytest -k selection)
MUTANTS = {
    "block_sum_first_barrier": ("  if (lane == 0) warp_sums[warp] = v;\n  __syncthreads();",
                                "  if (lane == 0) warp_sums[warp] = v;", "distortion or masked"),
    "shared_scale_barrier": ("    if (threadIdx.x == 0) zs = zfn(r / C, r % C);\n    __syncthreads();",
                             "    if (threadIdx.x == 0) zs = zfn(r / C, r % C);", "masked or scale"),
    "channels_last_tile_bound": ("s < s0 + kTileS && s < S; ++s) {\n      const int64_t i = (n * S + s) * C + c;\n"
                                 "      const float gv",
                                 "s < s0 + kTileS - 1 && s < S; ++s) {\n      const int64_t i = (n * S + s) * C + c;\n"
                                 "      const float gv", "scale"),
    "epilogue_scatter_index": ("n * Cout + out_keep[j]", "n * Cout + j", "sparse"),
    "kl_tree_start": ("for (int half = blockDim.x / 2;", "for (int half = blockDim.x / 4;", "kumaraswamy"),
    "channel_tiles_grid": ("(g.C + kThreads - 1) / kThreads);\n      distortion_fwd_cl",
                           "g.C / kThreads + (g.C < kThreads));\n      distortion_fwd_cl", "distortion"),
    "mask_grad_batch_stride": ("acc += glp[n * C + c];", "acc += glp[n + c];", "masked"),
    "backward_channel_index": ("channels_last ? i % C : (i / S) % C", "channels_last ? i % C : i % C", "distortion"),
}


def survives(name: str, folder: Path) -> bool:
    old, new, selection = MUTANTS[name]
    text = SOURCE.read_text()
    if old not in text:
        raise SystemExit(f"mutant {name}: its text is no longer in {SOURCE}; update MUTANTS")
    source = folder / name / "anp_cuda.cu"
    source.parent.mkdir(parents=True)
    source.write_text(text.replace(old, new, 1))
    env = dict(os.environ, ANP_CUDA_EMU_SOURCE=str(source), ANP_CUDA_EMU_BUILD=str(folder / name / "build"))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(TESTS), "-k",
                          selection], cwd=ROOT, env=env, capture_output=True, text=True)
    return run.returncode == 0


def main(names: list[str]) -> int:
    unknown = sorted(set(names) - set(MUTANTS))
    if unknown:
        raise SystemExit(f"unknown mutants {unknown}; known: {sorted(MUTANTS)}")
    survivors = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(MUTANTS):
            alive = survives(name, Path(tmp))
            print(f"{name:28s} {'SURVIVED' if alive else 'caught'}", flush=True)
            survivors += [name] if alive else []
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
