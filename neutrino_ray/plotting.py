"""Matplotlib without a display: one place that picks the Agg backend and turns figures into PNG bytes."""

from __future__ import annotations

import io
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (batch jobs have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any) -> bytes:
    """Render and close a figure; PNG bytes ready for storage."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def counts_with_errors(ax: Any, edges: Any, counts: Any, color: str, label: str | None = None,
                       log_x: bool = False) -> None:
    """A histogram of counts per bin (a step line) with Poisson error bars √N at the bin centres
    (geometric centres on a log axis), so that sparse bins show how little they hold."""
    import numpy as np

    edges, counts = np.asarray(edges, float), np.asarray(counts, float)
    centres = np.sqrt(edges[1:] * np.maximum(edges[:-1], 1e-300)) if log_x else (edges[1:] + edges[:-1]) / 2
    ax.stairs(counts, edges, color=color, label=label)
    ok = counts > 0
    ax.errorbar(centres[ok], counts[ok], yerr=np.sqrt(counts[ok]), fmt="none", ecolor=color, elinewidth=0.8,
                capsize=0, alpha=0.8)
