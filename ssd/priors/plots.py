"""Plots a person looks at when fitting priors (matplotlib, Agg canvas: no display needed).

- `plot_shape_density`: log w - log h density of the ground-truth boxes (input pixels) with the
  prior shapes of one or more configs on top (one marker per config, one colour per level);
- `plot_class_recall`: grouped bars of grid recall@t per class (and size bucket) per config;
- `plot_sweep`: mean shape IoU versus k per clustering metric (the YOLO9000 figure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ssd.priors.fit import FitReport, FitSummary
from ssd.priors.generator import Shape

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return out


def plot_shape_density(
    wh_px: np.ndarray,
    prior_sets: Mapping[str, Sequence[Sequence[Shape]]],
    path: str | Path,
    *,
    image_size: int | None = None,
    title: str = "ground-truth shapes (input pixels) and prior shapes",
) -> Path:
    """Hexbin density of log w vs log h of boxes `wh_px` [N, 2] (input pixels); for each named
    prior set (per level a list of (w, h) input pixels) its shapes as markers coloured by level."""
    fig = Figure(figsize=(7.5, 6.5))
    ax = fig.add_subplot(1, 1, 1)
    wh = np.asarray(wh_px, dtype=np.float64).reshape(-1, 2)
    all_shapes = [np.asarray(s, dtype=np.float64).reshape(-1, 2) for lv in prior_sets.values() for s in lv]
    pts = np.concatenate([wh, *all_shapes]) if all_shapes else wh
    lo = max(0.5, float(pts.min()) / 1.5) if pts.size else 1.0
    hi = float(pts.max()) * 1.5 if pts.size else 1000.0
    if wh.shape[0]:
        hb = ax.hexbin(
            wh[:, 0],
            wh[:, 1],
            gridsize=40,
            xscale="log",
            yscale="log",
            norm=LogNorm(vmin=0.4),  # a single box still shows as light grey
            cmap="Greys",
            mincnt=1,
            extent=(np.log10(lo), np.log10(hi), np.log10(lo), np.log10(hi)),
        )
        fig.colorbar(hb, ax=ax, label="boxes (log count)")
    else:
        ax.set_xscale("log")
        ax.set_yscale("log")
    num_levels = max((len(v) for v in prior_sets.values()), default=0)
    colours = [f"C{i % 10}" for i in range(num_levels)]
    for k, (name, levels) in enumerate(prior_sets.items()):
        marker = _MARKERS[k % len(_MARKERS)]
        for lvl, shapes in enumerate(levels):
            s = np.asarray(shapes, dtype=np.float64).reshape(-1, 2)
            if s.size:
                ax.scatter(
                    s[:, 0],
                    s[:, 1],
                    marker=marker,
                    s=46,
                    facecolors="none",
                    edgecolors=colours[lvl],
                    linewidths=1.4,
                )
        ax.scatter([], [], marker=marker, facecolors="none", edgecolors="k", label=name)
    for lvl in range(num_levels):
        ax.scatter([], [], marker="s", color=colours[lvl], label=f"level {lvl}")
    if image_size:
        ax.axvline(image_size, color="0.6", lw=0.8, ls=":")
        ax.axhline(image_size, color="0.6", lw=0.8, ls=":")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("width (input px, log)")
    ax.set_ylabel("height (input px, log)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    return _save(fig, path)


def plot_class_recall(
    reports: Mapping[str, FitReport],
    path: str | Path,
    *,
    sections: Sequence[str] = ("per_class", "per_size"),
    key: str = "recall",
) -> Path:
    """Grouped bars of `key` (default grid recall@t) per class and size bucket, one bar per
    named fit report (`ssd.priors.fit.fit_report`), e.g. before / after optimisation."""
    names = list(reports)
    first = reports[names[0]]

    def group(report: FitReport, sec: str, g: str) -> FitSummary:
        summaries: dict[str, FitSummary] = getattr(report, sec)
        return summaries[g]

    groups = [(sec, g) for sec in sections for g in getattr(first, sec)]
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(names))
    fig = Figure(figsize=(min(16.0, max(7.0, 0.25 * len(groups) * max(1, len(names)) + 2)), 4.8))
    ax = fig.add_subplot(1, 1, 1)
    for k, name in enumerate(names):
        vals = [getattr(group(reports[name], sec, g), key) for sec, g in groups]
        heights = [0.0 if v is None else float(v) for v in vals]
        ax.bar(x + (k - (len(names) - 1) / 2) * width, heights, width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{g} ({group(first, sec, g).num_gt})" for sec, g in groups], rotation=40, ha="right")
    thr = first.iou_threshold
    ax.set_ylabel(f"{key}" + (f"@{thr:g} (grid)" if key == "recall" else ""))
    ax.set_ylim(0, 1.05)
    ax.axhline(1.0, color="0.7", lw=0.6)
    ax.legend(fontsize=8)
    ax.set_title("per class / size bucket (ground-truth count)")
    return _save(fig, path)


def plot_sweep(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Mean shape IoU versus k, one line per metric; rows have `k`, `metric`, `mean_iou`."""
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    metrics = list(dict.fromkeys(str(r["metric"]) for r in rows))
    for k, metric in enumerate(metrics):
        pts = sorted((int(r["k"]), float(r["mean_iou"])) for r in rows if r["metric"] == metric)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=_MARKERS[k % len(_MARKERS)], label=metric)
    ax.set_xlabel("k (number of shapes)")
    ax.set_ylabel("mean best shape IoU")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("clustering: mean IoU vs k")
    return _save(fig, path)
