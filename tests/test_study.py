"""The thin-ice study over several pruned versions of one dense network, small and on digits."""
import json

import torch

from anp_kernels import data, models, prune
from anp_kernels.evaluate.study import study


def test_study_writes_every_figure_for_every_method(tmp_path):
    ds = data.load("digits")
    x, y = ds.x_test[:24], ds.y_test[:24]
    torch.manual_seed(0)
    dense = models.build("lenet_digits", 10, 1)
    prune.adversarial_epochs(dense, dense.parameters(), ds.x_train[:512], ds.y_train[:512], 0.1, 0.05, 3, 2, 0.05,
                             progress=False)
    pruned = {}
    for name, structured in (("magnitude-weight-80", False), ("magnitude-channel-50", True)):
        model = models.build("lenet_digits", 10, 1)
        model.load_state_dict(dense.state_dict())
        pruned[name] = prune.bake(prune.magnitude(model, 0.8 if not structured else 0.5, structured, "layer")).eval()
    result = study(dense.eval(), pruned, x, y, 0.1, tmp_path, steps=20, progress=False)
    assert json.loads((tmp_path / "study.json").read_text()) == json.loads(json.dumps(result))
    for f in ("study.md", "security_curves.png", "magnitude-weight-80/thin_ice_scatter.png"):
        assert (tmp_path / f).exists(), f
    d = result["dense"]
    assert d["autoattack_acc"] <= d["pgd_acc"] <= d["clean_acc"]
    assert 0 <= d["fmn_aa_disagreements"] <= len(x)
    for name, r in result["methods"].items():
        assert r["autoattack_acc"] <= r["pgd_acc"] <= r["clean_acc"], name
        assert sum(p["count"] for p in r["clean"]["populations"].values()) == len(x)
        assert r["structured"] == ("channel" in name)
    assert result["methods"]["magnitude-weight-80"]["sparsity"] > 0.79
    assert "| magnitude-channel-50 | 50" in (tmp_path / "study.md").read_text()


def test_anp_study_refuses_unnamed_checkpoints(tmp_path, capsys):
    from anp_kernels.cli import main

    assert main(["study", "--dense", "d.safetensors", "--pruned", "p.safetensors", "--data", "digits",
                 "--eps", "0.1", "--out", str(tmp_path)]) == 2
    assert "NAME=CHECKPOINT" in capsys.readouterr().err
