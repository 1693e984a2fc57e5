"""What every figure shares: matplotlib without a display, a grid, a frameless legend, a tight PNG."""
from __future__ import annotations

from pathlib import Path


def figure(rows: int = 1, columns: int = 1, size: tuple[float, float] = (5.5, 3.8), **kwargs):
    """``(fig, axes)`` from a display-less matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, columns, figsize=size, **kwargs)


def save(fig, path: Path, axes=(), legend: dict | None = None, dpi: int = 120) -> None:
    """Grid ``axes``, draw the first one's legend (``legend``: its options; None: none), write ``path``."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
    if legend is not None and axes:
        axes[0].legend(frameon=False, **legend)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
