"""Matplotlib helpers for every figure of the analysis package (Agg backend, imported lazily)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def finish(ax, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None,
           fontsize: float | None = None, grid_axis: str = "both") -> None:
    """Set the given labels, then a legend (``fontsize``; None: the default) and a light grid."""
    if title is not None:
        ax.set_title(title)
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis=grid_axis)
    ax.legend(fontsize=fontsize)


def log2_ticks(ax, values: list[int]) -> None:
    """A log-2 x axis labelled at ``values`` only."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(values, [str(v) for v in values])
    ax.minorticks_off()


def integer_ticks():
    """A tick locator that puts ticks on whole numbers only."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def colors(n: int) -> list:
    """One colour of the default cycle per model."""
    return [f"C{i % 10}" for i in range(n)]


def style_pair(ax1, ax2, top: tuple[str, str], bottom: tuple[str, str]) -> None:
    """Two panels over target position: curves on top, their difference below (title, y
    label of each)."""
    for ax, (title, ylabel) in ((ax1, top), (ax2, bottom)):
        finish(ax, title, ylabel=ylabel, fontsize=8)
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_xlabel("target position (subword tokens)")
    ax2.xaxis.set_major_locator(integer_ticks())
