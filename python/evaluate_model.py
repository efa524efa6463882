"""Recipe: evaluate a saved model honestly (AutoAttack + PGD cross-check, FMN security curve), and
compare it with another (e.g. the dense model it was pruned from) on the same images.

    python python/evaluate_model.py runs/recipe/model.safetensors [--data digits] [--n 50] [--eps 0.1]
        [--against runs/dense/model.safetensors]
"""
import argparse

from anp_kernels import data, deploy, evaluate

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--data", default="digits")
p.add_argument("--n", type=int, default=50)
p.add_argument("--eps", type=float, default=0.1)
p.add_argument("--out", default="security_curve.png")
p.add_argument("--against", default=None, help="another saved model: the worst-case robust difference, paired")
args = p.parse_args()

model = deploy.load(args.model)
ds = data.load(args.data)
x, y = ds.x_test[: args.n], ds.y_test[: args.n]
result = evaluate.autoattack(model, x, y, eps=args.eps)
print(result.to_json())
curve = evaluate.security_curve(evaluate.fmn(model, x, y, steps=50).distances)
curve.plot(args.out, mark_eps=args.eps)
print(f"FMN robust accuracy at eps {args.eps}: {curve.at(args.eps):.3f}; curve in {args.out}")

if args.against:  # the same images, so the difference is paired: Newcombe's interval and McNemar's p
    other = evaluate.autoattack(deploy.load(args.against), x, y, eps=args.eps)
    change = evaluate.paired_difference(result.robust_flags, other.robust_flags)
    print(f"robust accuracy minus {args.against}'s: {change.points()}, McNemar p {change.mcnemar_p:.3g}")
