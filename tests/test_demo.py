"""`anp demo --quick` runs end to end and writes the report folder."""
import json

from anp_kernels.cli import main


def test_demo_quick_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    for name in ("report.md", "figures.json", "security_curve.png", "thin_ice_scatter.png", "channels_kept.png",
                 "vulnerability_at.png", "vulnerability_anpvs.png", "thin_ice.json", "export/model.safetensors"):
        assert (out / name).exists(), name
    figures = json.loads((out / "figures.json").read_text())
    assert set(figures["models"]) == {"AT (dense)", "ANP-VS"}
    for r in figures["models"].values():
        assert r["robust_acc_worst_case"] <= min(r["autoattack_robust_acc"], r["pgd_robust_acc"]) <= r["clean_acc"]
    assert figures["deploy"]["same_predictions"] and figures["deploy"]["reloaded_same_predictions"]
    assert "## Samples on thin ice" in (out / "report.md").read_text()
    assert "[4/4]" in capsys.readouterr().out
