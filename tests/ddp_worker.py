"""Run by test_train.py under torchrun: train with DDP, then report per-rank checksums."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from anp_kernels.nn import masks
from anp_kernels.train import TrainConfig, train

out = Path(sys.argv[1])
cfg = TrainConfig(model="lenet_digits", data="synthetic", method="anp-vs", epochs=1, batch_size=32, eps=0.1,
                  step_size=0.05, steps=1, subset=128, out=str(out / "run"))
captured = {}
original = torch.nn.parallel.DistributedDataParallel.__init__


def spy(self, module, *args, **kwargs):  # keep the wrapped model to read it after training
    captured["model"] = module
    original(self, module, *args, **kwargs)


torch.nn.parallel.DistributedDataParallel.__init__ = spy
train(cfg, progress=False)
model = captured["model"]
rank = dist.get_rank()
m = next(iter(masks(model).values()))
z = m.sample(4).detach()
all_z = [torch.zeros_like(z) for _ in range(2)]
dist.all_gather(all_z, z)
params = float(sum(p.double().sum() for p in model.parameters()))
(out / f"rank{rank}.json").write_text(json.dumps({"params": params, "masks_differ": not torch.equal(*all_z)}))
dist.barrier()  # neither rank tears gloo down while the other still uses the pair
dist.destroy_process_group()
