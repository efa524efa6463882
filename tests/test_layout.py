"""The package's structure: no import cycles (function-level imports included), no private
PyTorch APIs, every op file holding its own fake and autograd, kernels as leaves."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "anp_kernels"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every anp_kernels module this file imports, at any depth of the file (functions included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("anp_kernels")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if not base.startswith("anp_kernels"):
                continue
            for alias in node.names:  # `from pkg import mod` imports pkg.mod when it is a module
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _exists(candidate) else base)
    found.discard(name)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py")]
    graph = {_module_name(p): _imports(p) for p in files}
    # importing a.b.c runs a and a.b first: a package's __init__ is part of every import below it
    return graph


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_kernel_modules_are_leaves():
    graph = _graph()
    for name, deps in graph.items():
        if name.startswith("anp_kernels.triton"):
            assert not {d for d in deps if d.startswith("anp_kernels.ops")}, (name, deps)
    assert not {d for d in graph["anp_kernels._backend"] if d.startswith("anp_kernels.ops")}


def test_no_private_torch_c_apis():
    for path in PACKAGE.rglob("*.py"):
        assert "torch._C._" not in path.read_text(), path


def test_every_kernel_op_file_registers_its_own_fake_and_autograd():
    ops = PACKAGE / "ops"
    for name in ("channel_distortion", "relaxed_mask", "sample_mask", "masked_activation", "channel_scale",
                 "channel_sparse_conv", "max_pool2x2"):
        text = (ops / f"{name}.py").read_text()
        op = "channel_sparse_conv2d" if name == "channel_sparse_conv" else name
        assert "register_autograd" in text and ("register_fake" in text), name
        assert f"::{op}" in text and "_backend.on_namespace(_register)" in text, name
