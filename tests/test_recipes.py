"""The python/ recipes run as a user would run them."""
import subprocess
import sys
from pathlib import Path

from conftest import needs_compile

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_train_evaluate_deploy_recipes(tmp_path):
    out = _run(ROOT / "python" / "train_anpvs.py", "--epochs", "1", "--out", tmp_path / "run", cwd=tmp_path)
    assert "compact model saved" in out
    model = tmp_path / "run" / "model.safetensors"
    out = _run(ROOT / "python" / "evaluate_model.py", model, "--n", "4", "--out", tmp_path / "c.png",
               "--against", model, cwd=tmp_path)
    assert "FMN robust accuracy" in out and (tmp_path / "c.png").exists()
    assert "+0.0 points (95% interval" in out  # a model against itself: no difference, but an interval
    out = _run(ROOT / "python" / "deploy_model.py", model, "--onnx", tmp_path / "m.onnx", cwd=tmp_path)
    assert "flop_ratio" in out and (tmp_path / "m.onnx").exists()


@needs_compile
def test_train_recipe_compiled_under_autocast(tmp_path):
    out = _run(ROOT / "python" / "train_anpvs.py", "--epochs", "1", "--compile", "aot_eager", "--amp",
               "--out", tmp_path / "run", cwd=tmp_path)
    assert "compact model saved" in out
