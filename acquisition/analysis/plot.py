"""Dose-response and saturation plots as PNG (matplotlib on the Agg backend, imported lazily).

Points are replicate means with SD error bars (the individual replicates are what was fitted),
the fitted curve is drawn over the data range, and a vertical line marks the IC50 (or any
x the caller names).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from acquisition.analysis.fit import FitResult

__all__ = ["fit_plot_png"]


def fit_plot_png(
    path: Path,
    x: Sequence[float],
    y: Sequence[float],
    result: FitResult,
    *,
    title: str,
    xlabel: str = "log[competitor] (M)",
    ylabel: str = "CPM",
    mark_x: float | None = None,
    mark_label: str = "IC50",
) -> Path:
    """Write the plot to ``path`` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[float, list[float]] = defaultdict(list)
    for xi, yi in zip(x, y, strict=True):
        groups[round(float(xi), 9)].append(float(yi))
    xs = np.array(sorted(groups))
    means = np.array([np.mean(groups[k]) for k in xs])
    sds = np.array([np.std(groups[k], ddof=1) if len(groups[k]) > 1 else 0.0 for k in xs])
    span = (xs.max() - xs.min()) or 1.0
    grid = np.linspace(xs.min() - 0.05 * span, xs.max() + 0.05 * span, 300)

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    try:
        ax.errorbar(xs, means, yerr=sds, fmt="o", color="#1f4e79", capsize=3, label="mean ± SD")
        ax.plot(grid, result.predict(grid), color="#c0392b", label=f"fit: {result.model}")
        if mark_x is not None and np.isfinite(mark_x):
            ax.axvline(mark_x, color="#7f8c8d", linestyle="--", linewidth=1)
            ax.annotate(
                f"{mark_label} = {10 ** mark_x:.3g} M",
                xy=(mark_x, float(np.max(means))),
                xytext=(6, -12),
                textcoords="offset points",
                fontsize=9,
            )
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(frameon=False, fontsize=9)
        ax.grid(alpha=0.25)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
