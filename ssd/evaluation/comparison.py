"""The side-by-side report of prior variants: Markdown tables and PNG plots."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.colors import LogNorm

from ssd.priors.fit import BoxSet


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _pct(v: Any) -> str:
    x = _num(v)
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}"


def _delta(v: Any, ref: Any) -> str:
    a, b = _num(v), _num(ref)
    if math.isnan(a) or math.isnan(b):
        return ""
    return f" ({100 * (a - b):+.2f})"


def per_class_table(report: Mapping[str, Any], classes: Sequence[str]) -> str:
    """Per-class AP (%) of every variant; non-original columns show the change vs original."""
    variants = report["variants"]
    names = list(variants)
    ref = variants.get("original")
    lines = [
        "| class | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for cls in classes:
        cells = []
        for n in names:
            ap = variants[n]["per_class_ap"].get(cls)
            d = _delta(ap, ref["per_class_ap"].get(cls)) if ref is not None and n != "original" else ""
            cells.append(_pct(ap) + d)
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    cells = []
    for n in names:
        d = _delta(variants[n]["map"], ref["map"]) if ref is not None and n != "original" else ""
        cells.append(f"**{_pct(variants[n]['map'])}**{d}")
    lines.append("| **mAP** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fps(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.1f}"


def _sd(v: Mapping[str, Any]) -> str:
    sd = v.get("map_sd")
    return f"{_pct(v['map'])} ± {_pct(sd)}" if sd is not None else _pct(v["map"])


def summary_table(report: Mapping[str, Any]) -> str:
    """mAP (mean ± sd over seeds, per seed), the difference to the original with its paired
    bootstrap interval and what that interval allows one to say, FPS and prior counts."""
    chance_col = any(v.get("map_untrained") is not None for v in report["variants"].values())
    fps_col = any(v.get("fps") is not None for v in report["variants"].values())
    head = (
        "| variant | mAP (%) mean ± sd | mAP per seed (%) | Δ mAP vs original (points) | 95% interval "
        "| reading |"
    )
    rule = "|---|---:|---|---:|---|---|"
    if chance_col:
        head, rule = head + " mAP untrained (%) |", rule + "---:|"
    if fps_col:
        head, rule = head + " FPS end to end |", rule + "---:|"
    lines = [head + " priors | boxes per cell |", rule + "---:|---:|"]
    for n, v in report["variants"].items():
        chance = _pct(v.get("map_untrained"))
        per_seed = ", ".join(_pct(m) for m in v.get("maps", [v["map"]]))
        delta = f"{100 * v['delta_map']:+.2f}" if "delta_map" in v else ""
        ci = v.get("delta_ci")
        interval = f"[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]" if ci else ""
        reading = v.get("verdict", "reference" if n == "original" else "")
        row = f"| {n} | {_sd(v)} | {per_seed} | {delta} | {interval} | {reading} |"
        if chance_col:
            row += f" {chance} |"
        if fps_col:
            row += f" {_fps(v.get('fps'))} |"
        lines.append(row + f" {v['num_priors']:,} | {v['boxes_per_cell']} |")
    return "\n".join(lines)


def fit_table(report: Mapping[str, Any]) -> str:
    """How each prior set fits the validation boxes (what the matcher sees)."""
    lines = [
        "| variant | boxes per cell | priors | mean IoU grid (%) | mean IoU shape (%) | recall@0.5 (%) "
        "| recall@0.5, position-averaged (%) | positives per GT |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, v in report["variants"].items():
        lines.append(
            f"| {n} | {v['boxes_per_cell']} | {v['num_priors']:,} | {_pct(v['mean_iou_grid'])} | "
            f"{_pct(v['mean_iou_shape'])} | {_pct(v['recall'])} | {_pct(v.get('recall_expected'))} | "
            f"{v['positives_per_gt']:.2f} |"
        )
        before = v.get("fit_before_training")
        if before:
            lines.append(
                f"| {n} (at init) | | | {_pct(before['mean_iou_grid'])} | "
                f"{_pct(before['mean_iou_shape'])} | {_pct(before['recall'])} | "
                f"{_pct(before.get('recall_expected'))} | {before['positives_per_gt']:.2f} |"
            )
    return "\n".join(lines)


def plot_loss_curves(curves: Mapping[str, Sequence[tuple[int, float]]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in curves.items():
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (loc + cls)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Training loss, same schedule and data order")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_per_class_ap(report: Mapping[str, Any], classes: Sequence[str], path: Path) -> Path:
    variants = report["variants"]
    names = list(variants)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(classes) + 2), 4.5))
    for k, n in enumerate(names):
        ys = [_num(variants[n]["per_class_ap"].get(c)) for c in classes]
        ax.bar([i + k * width for i in range(len(classes))], ys, width, label=n)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(classes))])
    ax.set_xticklabels(classes, rotation=35, ha="right")
    ax.set_ylabel("AP@0.5")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_prior_shapes(
    prior_shapes: Mapping[str, Sequence[Sequence[tuple[float, float]]]], boxes: BoxSet, path: Path
) -> Path:
    """Ground-truth log w - log h density (input pixels) with each variant's shapes overlaid."""
    import numpy as np

    wh = boxes.wh_px
    n = len(prior_shapes)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.2), squeeze=False, sharex=True, sharey=True)
    lo = np.log2(max(1.0, float(wh.min()) / 2)) if len(wh) else 0.0
    hi = np.log2(boxes.image_size * 2.0)
    for ax, (name, levels) in zip(axes[0], prior_shapes.items()):
        if len(wh):
            # log colour scale; vmin below 1 keeps a single box visible (a LogNorm needs vmin > 0)
            ax.hexbin(np.log2(wh[:, 0]), np.log2(wh[:, 1]), gridsize=40, cmap="Blues", mincnt=1,
                      norm=LogNorm(vmin=0.4))  # fmt: skip
        cmap = plt.get_cmap("viridis", max(len(levels), 2))
        for level, shapes in enumerate(levels):
            if shapes:
                s = np.asarray(shapes, dtype=float)
                ax.scatter(np.log2(s[:, 0]), np.log2(s[:, 1]), color=cmap(level), s=28,
                           edgecolor="black", linewidth=0.5, label=f"level {level}")  # fmt: skip
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_title(name)
        ax.set_xlabel("log2 width (input px)")
        ax.plot([lo, hi], [lo, hi], color="red", lw=0.5, alpha=0.4)
    axes[0][0].set_ylabel("log2 height (input px)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Priors over the ground-truth box density (validation split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_markdown(report: Mapping[str, Any], classes: Sequence[str], files: Mapping[str, str]) -> str:
    b = report["base"]
    variants = report["variants"]
    metric = next(iter(variants.values()))["metric"] if variants else "voc07"
    fps_device = next(iter(variants.values()))["fps_device"] if variants else "cpu"
    seeds = b.get("seeds", [b["seed"]])
    boot = b.get("bootstrap")
    parts = [
        "# Prior comparison: " + " vs ".join(variants),
        "",
        f"Data: `{b['data']}` ({b['format']}), {b['num_train_boxes']} training / "
        f"{b['num_val_boxes']} validation boxes in {b.get('num_val_images', '?')} validation images. "
        f"Input {b['image_size']}x{b['image_size']}, width x{b['width_mult']}, {b['max_iters']} "
        f"iterations of batch {b['batch_size']}, training seeds {', '.join(str(s) for s in seeds)}: "
        "identical for every variant (same seed = same data order), only the priors differ. AP at "
        f"IoU 0.5 ({metric}), on the validation split."
        + (
            f" *mAP untrained* is the network at its seeded initialisation (seed {seeds[0]}), before "
            "any training: the chance level."
            if any(v.get("map_untrained") is not None for v in variants.values())
            else ""
        )
        + (
            f" FPS at batch 1 on {fps_device}, end to end (pre-processing + network + decode + NMS), "
            "first seed."
            if any(v.get("fps") is not None for v in variants.values())
            else ""
        ),
        "",
    ]
    if boot:
        parts += [
            f"Δ mAP is the difference of the seed-mean mAPs to the original; the interval is a paired "
            f"bootstrap over validation images ({boot['resamples']} resamples of the images with "
            f"replacement, seed {boot['seed']}, AP recomputed per class, the same resamples for both "
            "variants; 95% percentile interval). *Reading* follows from the interval alone: "
            "**better** (entirely above 0), **worse** (entirely below 0), **no detectable "
            "difference** (contains 0). The interval covers which images were drawn, with the "
            "trained networks fixed; the seed-to-seed spread is the ± sd beside it.",
            "",
        ]
    if len(seeds) == 1:
        parts += [
            "**One training seed**: run-to-run noise of training is not measured, and one seed "
            "cannot separate the variants; differences of a few points can come from the seed alone. "
            "Use `--seeds 0,1,2` for a conclusion.",
            "",
        ]
    parts += [
        "## mAP and speed",
        "",
        summary_table(report),
        "",
        "## Per-class AP (%), change vs original in brackets",
        "",
        per_class_table(report, classes),
        "",
        "## How the priors fit the validation boxes",
        "",
        "Grid IoU: best IoU of each ground truth with the positioned priors (what the matcher "
        "sees); shape IoU: co-centred, as in YOLO9000's k-means. Recall: share of ground truth with a "
        "prior at IoU >= 0.5.",
        "",
        fit_table(report),
        "",
        "## Variants",
        "",
    ]
    for n, v in variants.items():
        parts.append(f"- **{n}**: {v['description']}")
    parts += ["", "## Plots", ""]
    for title, key in (("Prior shapes", "prior_shapes"), ("Per-class AP", "per_class_ap"),
                       ("Training loss", "loss_curves")):  # fmt: skip
        if key in files:
            parts.append(f"![{title}]({Path(files[key]).name})")
    parts.append("")
    return "\n".join(parts)


def write_comparison(
    report: Mapping[str, Any],
    curves: Mapping[str, Sequence[tuple[int, float]]],
    prior_shapes: Mapping[str, Sequence[Sequence[tuple[float, float]]]],
    val_boxes: BoxSet,
    classes: Sequence[str],
    out: Path,
) -> dict[str, str]:
    """Write report.md and the PNG plots into `out`; returns their paths by key."""
    files = {
        "prior_shapes": str(plot_prior_shapes(prior_shapes, val_boxes, out / "prior_shapes.png")),
        "per_class_ap": str(plot_per_class_ap(report, classes, out / "per_class_ap.png")),
        "loss_curves": str(plot_loss_curves(curves, out / "loss_curves.png")),
    }
    md = out / "report.md"
    md.write_text(render_markdown(report, classes, files), encoding="utf-8")
    files["markdown"] = str(md)
    return files
