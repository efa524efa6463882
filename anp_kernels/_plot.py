"""Figures for reports: matplotlib's object API (Figure), so the user's pyplot state and backend are
never touched; saved straight to PNG."""
from __future__ import annotations

from pathlib import Path

from ._extras import require


def figure(width: float = 5.0, height: float = 3.5, ncols: int = 1):
    """(fig, ax) — or (fig, [ax, ...]) for ncols > 1 — on a Figure not managed by pyplot."""
    require("matplotlib", "eval")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(1, ncols)


def save(fig, path: str | Path, dpi: int = 120) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return Path(path)
