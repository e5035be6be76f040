"""The experiment: original vs Chi et al. vs k-means vs coverage vs learned priors, side by side.

Every variant is trained with the identical schedule, seed and data order (the batch of iteration
i depends only on (seed, i)), evaluated on the same validation split and benchmarked the same way.
Only the priors differ. Runs resume: a variant whose run is complete is not trained again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssd.config import Config, ConfigError, replace
from ssd.data.loader import build_records
from ssd.engine.checkpoint import load_checkpoint
from ssd.engine.evaluate import evaluate_model
from ssd.engine.train import train
from ssd.modeling.build import build_model
from ssd.priors.fit import BoxSet, PriorGrid, fit_report, records_to_boxes
from ssd.priors.optimize import optimize_priors

log = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("original", "chi", "kmeans", "coverage", "learned")
VARIANT_DESCRIPTIONS: dict[str, str] = {
    "original": "SSD512's hand-set priors (min/max sizes, aspect ratios 2 and 3).",
    "chi": "Chi et al. as published: k = 7 IoU k-means sets the min size of the first two levels "
    "(ratios 2 and 3 removed there); the last level gets min size = the input size and one w/h = 15 box.",
    "kmeans": "Ours, after Chi et al.: IoU k-means with k = levels sets every level's scale; ratios "
    "no cluster needs are pruned and an extreme ratio is added where a cluster needs it.",
    "coverage": "Ours: (level, shape) pairs chosen greedily on the real prior grid to maximise "
    "recall@0.5 and mean IoU of the training boxes within the original prior budget.",
    "learned": "Zhong et al.: the original shapes made trainable (log w, log h) with soft "
    "assignment and online clustering warm-ups, frozen at the end.",
}


@dataclass
class VariantRun:
    name: str
    cfg: Config
    run_dir: Path


def variant_config(
    name: str, base: Config, train_boxes: BoxSet, max_priors: int | None = None
) -> tuple[Config, dict[str, Any]]:
    """The config of one variant (priors fitted on the training boxes) and what the fit did."""
    if name == "original":
        return base, {}
    if name == "learned":
        return replace(base, **{"priors.learnable": True}), {}
    if name in ("chi", "kmeans", "coverage"):
        result = optimize_priors(
            train_boxes, base.priors, method=name, max_priors=max_priors, seed=base.seed  # type: ignore[arg-type]
        )
        return replace(base, priors=result.priors), result.info
    raise ConfigError(f"--variants: unknown variant {name!r} (choose from {', '.join(VARIANTS)})")


def _run_complete(run_dir: Path, cfg: Config) -> bool:
    last = run_dir / "last.pt"
    if not last.exists():
        return False
    state = load_checkpoint(last)
    return int(state.get("iteration", 0)) >= cfg.train.max_iters


def untrained_map(cfg: Config, device: torch.device) -> float:
    """mAP on the val split of the network as initialised (seeded by `cfg.seed`), before any
    training: the chance level each trained variant is read against."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    return float(evaluate_model(model, cfg, "val", device)["mAP"])


def _loss_curve(run_dir: Path) -> list[tuple[int, float]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    points: dict[int, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "loss" in row:
            points[int(row["iteration"])] = float(row["loss"])  # a resumed run overwrites
    return sorted(points.items())


def compare(
    base: Config,
    output_dir: str | Path,
    variants: Sequence[str] = VARIANTS,
    device: str | torch.device = "cpu",
    bench_device: str | torch.device | None = None,
    bench_iters: int = 20,
    progress: Callable[[str, int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Fit, train, evaluate and benchmark each variant; returns the report dict (also written to
    `output_dir/report.json`, with report.md and plots beside it)."""
    from ssd.engine.benchmark import benchmark, build_pipeline_settings

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    bench_dev = torch.device(bench_device) if bench_device is not None else dev
    for v in variants:
        if v not in VARIANTS:
            raise ConfigError(f"--variants: unknown variant {v!r} (choose from {', '.join(VARIANTS)})")
    size = base.priors.image_size
    train_boxes = records_to_boxes(build_records(base, "train"), size)
    val_boxes = records_to_boxes(build_records(base, "val"), size)
    classes = base.data.classes
    log.info("%d training boxes, %d validation boxes", train_boxes.num_boxes, val_boxes.num_boxes)

    report: dict[str, Any] = {
        "base": {
            "data": base.data.root,
            "format": base.data.format,
            "image_size": size,
            "width_mult": base.model.width_mult,
            "max_iters": base.train.max_iters,
            "batch_size": base.train.batch_size,
            "seed": base.seed,
            "num_train_boxes": train_boxes.num_boxes,
            "num_val_boxes": val_boxes.num_boxes,
        },
        "variants": {},
    }
    curves: dict[str, list[tuple[int, float]]] = {}
    prior_shapes: dict[str, list[list[tuple[float, float]]]] = {}
    for name in variants:
        cfg, fit_info = variant_config(name, base, train_boxes)
        run_dir = out / name
        fit_before = fit_report(PriorGrid.from_config(cfg.priors), val_boxes, classes)
        resume = _run_complete(run_dir, cfg) or (run_dir / "last.pt").exists()
        log.info("variant %s: %d priors, training in %s", name, fit_before["num_priors"], run_dir)

        def step(it: int, scalars: dict[str, float], _name: str = name) -> None:
            if progress is not None:
                progress(_name, it, scalars)

        chance = untrained_map(cfg, dev)
        result = train(cfg, run_dir, device=dev, resume=resume, progress=step)
        final_cfg = cfg
        if result.learned_config is not None:
            from ssd.config import load_config

            final_cfg = load_config(result.learned_config)
        model = build_model(final_cfg)
        model.load_state_dict(load_checkpoint(result.last_checkpoint)["model"])
        model.priors.freeze()
        model.to(dev)
        metrics = result.final_metrics
        if metrics is None:  # already complete: evaluate the final weights again
            metrics = evaluate_model(model, final_cfg, "val", dev)
        grid = PriorGrid.from_config(final_cfg.priors)
        fit_after = fit_report(grid, val_boxes, classes) if name == "learned" else fit_before
        bench = benchmark(
            model, model.priors(), build_pipeline_settings(final_cfg), batch_size=1,
            device=bench_dev, warmup=3, iters=bench_iters, flops=False,
        )  # fmt: skip
        prior_shapes[name] = [list(level) for level in grid.shapes]
        curves[name] = _loss_curve(run_dir)
        entry = {
            "map": float(metrics["mAP"]),
            "map_untrained": chance,
            "per_class_ap": metrics["per_class_ap"],
            "metric": metrics.get("metric", final_cfg.eval.metric),
            "fps": float(bench["end_to_end_fps"]),
            "network_fps": float(bench["network_fps"]),
            "fps_device": str(bench_dev),
            "num_priors": int(fit_after["num_priors"]),
            "boxes_per_cell": int(fit_after["boxes_per_cell"]),
            "mean_iou_grid": float(fit_after["mean_iou_grid"]),
            "mean_iou_shape": float(fit_after["mean_iou_shape"]),
            "recall": float(fit_after["recall"]),
            "recall_expected": float(fit_after["recall_expected"]),
            "positives_per_gt": float(fit_after["positives_per_gt"]),
            "fit": {k: fit_after[k] for k in ("per_class", "per_size", "per_level", "unmatched")},
            "config": str(result.learned_config or run_dir / "config.yaml"),
            "checkpoint": str(result.last_checkpoint),
            "fit_info": fit_info,
            "description": VARIANT_DESCRIPTIONS[name],
        }
        if name == "learned":
            entry["fit_before_training"] = {
                k: fit_before[k]
                for k in ("mean_iou_grid", "mean_iou_shape", "recall", "recall_expected", "positives_per_gt")
            }
        report["variants"][name] = entry
        log.info("variant %s: mAP %.4f, %.1f FPS", name, entry["map"], entry["fps"])

    from ssd.evaluation.comparison import write_comparison

    report["files"] = write_comparison(report, curves, prior_shapes, val_boxes, classes, out)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default), encoding="utf-8")
    return report


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
