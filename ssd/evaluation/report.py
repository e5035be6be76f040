"""Human-readable evaluation reports: a Markdown table of per-class AP and PR-curve plots.

Plots use matplotlib's object-oriented API on an Agg canvas (no pyplot, no display, no global
backend change); matplotlib is imported only when plotting.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)


class EvaluationResult(Protocol):
    """What `write_report` needs: `VOCResult` and `CocoResult` both provide it."""

    metric: str
    per_class_ap: dict[str, float]
    precision: dict[str, np.ndarray]
    recall: dict[str, np.ndarray]
    num_gt: dict[str, int]

    @property
    def map(self) -> float: ...

    def to_dict(self) -> dict[str, Any]: ...


def _fmt(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def ap_table(
    per_class_ap: Mapping[str, float],
    map_value: float,
    num_gt: Mapping[str, int] | None = None,
    extra_columns: Mapping[str, Mapping[str, float]] | None = None,
    ap_header: str = "AP",
    map_label: str = "mAP",
) -> str:
    """Markdown table: one row per class (AP, optional extra AP columns, optional GT count) and a
    final bold mean row. NaN (class without ground truth) prints as ``n/a``."""
    extra = dict(extra_columns or {})
    header = ["class", ap_header, *extra]
    if num_gt is not None:
        header.append("GT")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, ap in per_class_ap.items():
        row = [name, _fmt(ap), *(_fmt(col.get(name, math.nan)) for col in extra.values())]
        if num_gt is not None:
            row.append(str(num_gt.get(name, 0)))
        lines.append("| " + " | ".join(row) + " |")
    valid = [v for v in per_class_ap.values() if not math.isnan(v)]
    row = [f"**{map_label}**", f"**{_fmt(map_value)}**"]
    for col in extra.values():
        vals = [v for v in col.values() if not math.isnan(v)]
        row.append(f"**{_fmt(float(np.mean(vals)) if vals else math.nan)}**")
    if num_gt is not None:
        row.append(str(sum(num_gt.values())))
    lines.append("| " + " | ".join(row) + " |")
    if len(valid) < len(per_class_ap):
        lines.append("")
        lines.append("n/a: no (non-difficult) ground truth; excluded from the mean.")
    return "\n".join(lines) + "\n"


def plot_pr_curves(
    precision: Mapping[str, np.ndarray],
    recall: Mapping[str, np.ndarray],
    per_class_ap: Mapping[str, float],
    path: str | Path,
    title: str = "",
) -> Path:
    """One PNG at `path`: a grid of subplots, one per class, with the precision-recall curve
    (recall on x, precision on y, both in [0, 1]) as given and its interpolated envelope
    (precision at recall r = max precision at recall >= r, drawn as steps), the class AP in the
    subplot title. Classes without a curve show an empty axes labelled accordingly."""
    fig = pr_curves_figure(precision, recall, per_class_ap, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def pr_curves_figure(
    precision: Mapping[str, np.ndarray],
    recall: Mapping[str, np.ndarray],
    per_class_ap: Mapping[str, float],
    title: str = "",
) -> Any:
    """The matplotlib Figure (Agg canvas) that `plot_pr_curves` saves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(per_class_ap)
    n = max(len(names), 1)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.2 * cols, 2.8 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for idx, ax in enumerate(axes.flat):
        if idx >= len(names):
            ax.set_axis_off()
            continue
        name = names[idx]
        rec = np.asarray(recall.get(name, np.zeros(0)), dtype=np.float64)
        prec = np.asarray(precision.get(name, np.zeros(0)), dtype=np.float64)
        finite = np.isfinite(rec) & np.isfinite(prec)
        if finite.any():
            rec, prec = rec[finite], prec[finite]
            # envelope: the interpolated precision (max precision at any recall >= r) that AP uses
            envelope = np.maximum.accumulate(prec[::-1])[::-1]
            ax.plot(rec, prec, linewidth=0.8, alpha=0.5, label="raw")
            first = np.r_[True, rec[1:] != rec[:-1]]  # one envelope value per distinct recall
            env_rec, env = rec[first], envelope[first]
            ax.plot(np.r_[0.0, env_rec], np.r_[env[0], env], drawstyle="steps-pre", linewidth=1.3,
                    label="interpolated")  # fmt: skip
        else:
            ax.text(0.5, 0.5, "no curve", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_title(f"{name}  AP {_fmt(per_class_ap[name], 3)}", fontsize=9)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    if names and any(ax.get_lines() for ax in axes.flat):
        next(ax for ax in axes.flat if ax.get_lines()).legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def figure_to_chw(fig: Any) -> np.ndarray:
    """uint8 [3, H, W] RGB pixels of a Figure with an Agg canvas (for TensorBoard's add_image)."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3].transpose(2, 0, 1))


def write_report(
    result: EvaluationResult,
    output_dir: str | Path,
    sources: Mapping[str, str] | None = None,
    summary: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``report.md`` (table), ``pr_curves.png`` and ``results.json`` (`summary`, default
    ``result.to_dict()``) into `output_dir`. `sources` (e.g. the input file names) are listed at
    the top of the report. Returns the paths written, keyed "report", "plot", "json"."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = dict(summary) if summary is not None else result.to_dict()
    lines = [f"# Evaluation ({result.metric})", ""]
    for key, value in (sources or {}).items():
        lines.append(f"- {key}: `{value}`")
    extra: dict[str, Mapping[str, float]] = {}
    if result.metric == "coco":
        ap_header, map_label = "AP@[.5:.95]", "mean (AP)"
        extra["AP50"] = getattr(result, "per_class_ap50", {})
        stats = getattr(result, "stats", {})
        lines.append("- " + ", ".join(f"{k} {_fmt(v)}" for k, v in stats.items() if k.startswith("AP")))
        curve_title = "COCO interpolated PR at IoU 0.5"
    else:
        iou = data.get("iou_threshold", "")
        ap_header, map_label = f"AP@{iou} ({result.metric})", "mAP"
        curve_title = f"PR curves at IoU {iou} ({result.metric})"
    lines += [
        f"- {map_label}: {_fmt(result.map)}",
        "",
        ap_table(result.per_class_ap, result.map, result.num_gt, extra, ap_header, map_label),
        "![PR curves](pr_curves.png)",
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    plot = plot_pr_curves(
        result.precision, result.recall, result.per_class_ap, out / "pr_curves.png", curve_title
    )
    js = out / "results.json"
    js.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    logger.info("wrote %s, %s, %s", report, plot, js)
    return {"report": report, "plot": plot, "json": js}


def speed_line(speed: Mapping[str, Any] | None) -> str:
    """One line: end-to-end images/s with what was timed (device, batch size, precision)."""
    if not speed:
        return "FPS: not measured"
    return (
        f"FPS (end to end: pre-processing, network, decode, NMS): {float(speed['end_to_end_fps']):.2f} "
        f"images/s on {speed['device']} ({speed.get('device_name', '')}), batch {speed['batch_size']}, "
        f"{speed['precision']}, median of {speed['iters']} timed iterations"
    )


def summary_text(summary: Mapping[str, Any]) -> str:
    """The table a user reads after training or evaluation: per-class AP with GT counts, mAP,
    and the FPS line (Markdown)."""
    metric = summary.get("metric", "voc07")
    if metric == "coco":
        ap_header, extra = "AP@[.5:.95]", {"AP50": _nan_floats(summary.get("per_class_ap50", {}))}
    else:
        ap_header, extra = f"AP@{summary.get('iou_threshold', 0.5)} ({metric})", {}
    num_gt = summary.get("num_gt")
    table = ap_table(
        _nan_floats(summary.get("per_class_ap", {})),
        _nan_float(summary.get("mAP")),
        dict(num_gt) if isinstance(num_gt, Mapping) else None,
        extra,
        ap_header,
    )
    return table + "\n" + speed_line(summary.get("speed")) + "\n"


def write_run_report(
    summary: Mapping[str, Any], output_dir: str | Path, title: str = "Evaluation"
) -> dict[str, Path]:
    """`report.md` (sources, the `summary_text` table, the confusion matrix as a table and
    `confusion_matrix.png`) and `results.json` (`summary`) in `output_dir`."""
    from ssd.evaluation.confusion import confusion_table, plot_confusion_matrix

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    for key, value in (summary.get("sources") or {}).items():
        lines.append(f"- {key}: `{value}`")
    lines += ["", summary_text(summary)]
    paths: dict[str, Path] = {}
    cm = summary.get("confusion_matrix")
    if isinstance(cm, Mapping):
        matrix = np.asarray(cm["matrix"], dtype=np.int64)
        names = list(cm["labels"])[:-1]
        png = plot_confusion_matrix(matrix, names, out / "confusion_matrix.png", "confusion matrix")
        paths["confusion"] = png
        lines += [
            "## Confusion matrix",
            "",
            f"Detections with score >= {cm['score_threshold']} matched one-to-one to ground truth at "
            f"IoU >= {cm['iou_threshold']} (class-agnostic). Column background: missed ground truth; "
            "row background: spurious detections.",
            "",
            confusion_table(matrix, names),
            "![confusion matrix](confusion_matrix.png)",
            "",
        ]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    js = out / "results.json"
    js.write_text(json.dumps(summary, indent=2, default=float) + "\n", encoding="utf-8")
    paths["report"], paths["json"] = report, js
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


def _nan_float(v: Any) -> float:
    return math.nan if v is None else float(v)


def _nan_floats(d: Mapping[str, Any]) -> dict[str, float]:
    return {k: _nan_float(v) for k, v in d.items()}
