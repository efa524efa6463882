"""What `pip install` gets: a source distribution that builds the extension, and modules that import on
every Python the project declares (requires-python)."""
import ast
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_FILES = ["setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"]


def _sources() -> set[str]:
    """The files a build from source reads: the package's modules and every C++/CUDA source and header."""
    found = {str(p.relative_to(ROOT)) for p in (ROOT / "anp_kernels").rglob("*.py")}
    found |= {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").iterdir() if p.suffix in (".cpp", ".cu", ".h")}
    return found | {"anp_kernels/py.typed"} | set(BUILD_FILES[:4])


def test_sdist_holds_every_source_the_build_needs(tmp_path):
    """setup.py lists anp_cuda.cu only where it builds CUDA and headers never: without MANIFEST.in an sdist
    made on a CPU machine lacks them, and a build from it fails (or silently drops the CUDA kernels)."""
    tree = tmp_path / "tree"
    for name in ("anp_kernels", "csrc"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for name in BUILD_FILES:
        shutil.copy(ROOT / name, tree / name)
    run = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=tree,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "ANP_KERNELS_CUDA": "0"})
    assert run.returncode == 0, run.stderr[-3000:]
    (archive,) = (tmp_path / "dist").glob("anp_kernels-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert not _sources() - names, sorted(_sources() - names)


def _runtime_annotations(tree: ast.Module) -> list[ast.expr]:
    """Annotations Python evaluates when the module runs (no `from __future__ import annotations`): module
    and class variables, function arguments and returns; a local variable's annotation is never evaluated."""
    found = [node.annotation for node in tree.body if isinstance(node, ast.AnnAssign)]
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            found += [item.annotation for item in node.body if isinstance(item, ast.AnnAssign)]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs + [node.args.vararg, node.args.kwarg]
            found += [a.annotation for a in args if a is not None and a.annotation is not None]
            found += [node.returns] if node.returns is not None else []
    return found


def _minimum_python() -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text()
    major, minor = re.search(r'requires-python\s*=\s*">=\s*(\d+)\.(\d+)', text).groups()
    return int(major), int(minor)


def test_modules_import_on_the_oldest_declared_python():
    """`X | Y` in an annotation Python evaluates at import is a TypeError before 3.10: a module that uses
    it there needs `from __future__ import annotations` (or Optional/Union) while requires-python < 3.10."""
    if _minimum_python() >= (3, 10):
        return
    offenders = []
    for path in sorted((ROOT / "anp_kernels").rglob("*.py")):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
               for n in tree.body):
            continue
        for annotation in _runtime_annotations(tree):
            if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(annotation)):
                offenders.append(f"{path.relative_to(ROOT)}:{annotation.lineno}")
    assert not offenders, offenders
