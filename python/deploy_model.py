"""Recipe: measure a saved compact model against its dense architecture and export it to ONNX.

    python python/deploy_model.py runs/recipe/model.safetensors [--batch 64] [--onnx model.onnx]
"""
import argparse

from anp_kernels import deploy, models, profile

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--batch", type=int, default=64)
p.add_argument("--onnx", default=None)
args = p.parse_args()

compact = deploy.load(args.model)
arch = compact.anp_arch
shape = models.input_shape(arch["model"], arch["in_channels"], batch=args.batch)
dense = models.build(arch["model"], arch["num_classes"], arch["in_channels"])
cmp = profile.compare(dense, compact, shape, runs=10)
print({k: v for k, v in cmp.items() if k not in ("dense", "compact")})
if args.onnx:
    print("ONNX written to", deploy.export_onnx(compact, args.onnx, (1, *shape[1:])))
