"""Recipe: ANP-VS adversarial training in your own loop, with the public API only.

    python python/train_anpvs.py [--data digits] [--epochs 5] [--out runs/recipe] [--compile inductor] [--amp]

--compile runs the forward passes through torch.compile(fullgraph=True) (`anp_kernels.compile_model`);
the optimiser and the saved model use the model itself. --amp runs the attack and the objective under
torch.autocast(bfloat16), the parameters and the optimiser staying float32.
"""
import argparse

import torch

import anp_kernels
from anp_kernels import data, deploy, models
from anp_kernels.attacks import pgd

p = argparse.ArgumentParser()
p.add_argument("--data", default="digits")
p.add_argument("--model", default="vgg_digits")
p.add_argument("--epochs", type=int, default=5)
p.add_argument("--eps", type=float, default=0.1)
p.add_argument("--out", default="runs/recipe")
p.add_argument("--compile", default=None, metavar="BACKEND", help="a torch.compile backend: inductor, aot_eager")
p.add_argument("--amp", action="store_true", help="PGD and the objective under torch.autocast(bfloat16)")
args = p.parse_args()

torch.manual_seed(0)
ds = data.load(args.data)
model = anp_kernels.convert(models.build(args.model))  # the original placement and init
net = anp_kernels.compile_model(model, args.compile) if args.compile else model  # what the passes run
loss_fn = anp_kernels.ANPVSLoss(net, beta=4.0, lam=1e-3, num_train=len(ds.x_train))
opt = torch.optim.Adam(anp_kernels.parameter_groups(model, lr=3e-3))
for epoch in range(args.epochs):
    model.train()
    for i in range(0, len(ds.x_train), 64):
        x, y = ds.x_train[i:i + 64], ds.y_train[i:i + 64]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=args.amp):
            x_adv = pgd(net, x, y, eps=args.eps, step_size=args.eps / 4, steps=5)
            parts = loss_fn(x, x_adv, y)
        opt.zero_grad()
        parts.total.backward()
        opt.step()
    print(f"epoch {epoch + 1}: {parts.as_floats()}  sparsity {anp_kernels.sparsity(model)['total']:.3f}")
model.eval()
model.anp_arch = {"model": args.model, "num_classes": ds.num_classes, "in_channels": ds.input_shape[0]}
path = deploy.save(deploy.compact(model, (1, *ds.input_shape)), args.out)
print("compact model saved to", path)
