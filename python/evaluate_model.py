"""Recipe: evaluate a saved model honestly (AutoAttack + PGD cross-check, FMN security curve).

    python python/evaluate_model.py runs/recipe/model.safetensors [--data digits] [--n 50] [--eps 0.1]
"""
import argparse

from anp_kernels import data, deploy, evaluate

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--data", default="digits")
p.add_argument("--n", type=int, default=50)
p.add_argument("--eps", type=float, default=0.1)
p.add_argument("--out", default="security_curve.png")
args = p.parse_args()

model = deploy.load(args.model)
ds = data.load(args.data)
x, y = ds.x_test[: args.n], ds.y_test[: args.n]
result = evaluate.autoattack(model, x, y, eps=args.eps)
print(result.to_json())
curve = evaluate.security_curve(evaluate.fmn(model, x, y, steps=50).distances)
curve.plot(args.out, mark_eps=args.eps)
print(f"FMN robust accuracy at eps {args.eps}: {curve.at(args.eps):.3f}; curve in {args.out}")
