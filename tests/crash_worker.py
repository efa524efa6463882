"""Run a tiny `anp train`, optionally dying (SIGKILL) at a chosen point: used by test_runs.py.

    python crash_worker.py OUT MODE      MODE: none | save:N (during the Nth checkpoint write, after
                                          half the temporary file is on disk) | metrics:N (after the Nth
                                          checkpoint, before metrics.jsonl is rewritten)
"""
import os
import signal
import sys
from pathlib import Path

import anp_kernels.checkpoint as checkpoint
import anp_kernels.train as train_mod
from anp_kernels.train import TrainConfig, train

TINY = dict(model="lenet_digits", data="synthetic", method="anp-vs", epochs=4, batch_size=64, eps=0.1,
            step_size=0.05, steps=2, subset=256)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    out, mode = sys.argv[1], sys.argv[2]
    kind, _, nth = mode.partition(":")
    calls = {"n": 0}
    if kind == "save":
        real = checkpoint.save_file

        def half_then_die(tensors, path, metadata=None):
            calls["n"] += 1
            if calls["n"] == int(nth):
                real(tensors, path, metadata=metadata)
                size = Path(path).stat().st_size
                with open(path, "r+b") as f:
                    f.truncate(size // 2)
                die()
            real(tensors, path, metadata=metadata)

        checkpoint.save_file = half_then_die
    elif kind == "metrics":
        real_write = train_mod.write_metrics

        def write_or_die(out_dir, history):
            calls["n"] += 1
            if calls["n"] == int(nth):
                die()
            real_write(out_dir, history)

        train_mod.write_metrics = write_or_die
    cfg = TrainConfig(out=out, **TINY)
    train(cfg, resume=(Path(out) / "checkpoint.safetensors").exists(), progress=False)


if __name__ == "__main__":
    main()
