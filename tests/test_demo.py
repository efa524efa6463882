"""`anp demo --quick` runs end to end and writes a report whose figures come from the run."""
import json

import pytest

from anp_kernels.cli import main
from anp_kernels.demo import DemoSettings, runs_dir


def test_demo_quick_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    for name in ("report.md", "figures.json", "security_curve.png", "thin_ice_scatter.png", "channels_kept.png",
                 "vulnerability_at.png", "vulnerability_anpvs.png", "thin_ice.json", "tradeoff.png",
                 "export/model.safetensors"):
        assert (out / name).exists(), name
    assert (runs_dir(out, "digits", True) / "anp-vs" / "checkpoint.safetensors").exists()
    figures = json.loads((out / "figures.json").read_text())
    assert set(figures["models"]) == {"AT (dense)", "ANP-VS"}
    for r in figures["models"].values():
        assert r["robust_acc_worst_case"] <= min(r["autoattack_robust_acc"], r["pgd_robust_acc"]) <= r["clean_acc"]
    assert figures["deploy"]["same_predictions"] and figures["deploy"]["reloaded_same_predictions"]

    points = figures["tradeoff"]["points"]
    assert [p["epoch"] for p in points] == list(range(DemoSettings.quick().anp_epochs + 1))
    assert points[-1]["unit_sparsity"] == figures["models"]["ANP-VS"]["unit_sparsity"]

    report = (out / "report.md").read_text()
    summary = report.split("\n\n")[1].splitlines()
    assert [line.split("**")[1] for line in summary] == ["Sparsity", "Robustness", "Deployment"]
    anp, at, c = figures["models"]["ANP-VS"], figures["models"]["AT (dense)"], figures["deploy"]["compare"]
    assert f"{anp['unit_sparsity']:.1%}" in summary[0]
    assert f"{anp['autoattack_robust_acc']:.1%} vs {at['autoattack_robust_acc']:.1%}" in summary[1]
    change = figures["thin_ice"]["accuracy_change"]  # worst case, ANP-VS minus AT, on the attacked images
    assert change["n"] == DemoSettings.quick().eval_n
    assert change["difference"] == pytest.approx(anp["robust_acc_worst_case"] - at["robust_acc_worst_case"])
    assert f"{100 * change['low']:+.1f} to {100 * change['high']:+.1f}" in summary[1]
    assert f"{c['latency_speedup']:.2f}x faster" in summary[2]
    assert f"{c['memory_percent_of_dense']:.1f}% of the dense parameters" in summary[2]
    worst = max(r["checks"]["unbounded_attack"]["unbounded_attack_acc"] for r in figures["models"].values())
    assert f"no gradient masking (PGD over the whole image box leaves {worst:.0%} of the first" in report
    for section in ("## Robustness", "## The trade-off over ANP-VS training", "## Samples on thin ice",
                    "## Deployment"):
        assert section in report
    assert "[4/4]" in capsys.readouterr().out


def test_quick_and_full_demos_and_data_sources_keep_their_own_runs(tmp_path):
    """`anp demo` after `anp demo --quick` in the same folder once failed: it resumed the quick run's
    checkpoints, trained for other epochs. Each size and data source now has its own runs folder."""
    names = {runs_dir(tmp_path, data, quick) for data in ("digits", "mnist:/data/mnist") for quick in (False, True)}
    assert len(names) == 4
    assert runs_dir(tmp_path, "mnist:/data/mnist", False) == tmp_path / "runs" / "mnist"
