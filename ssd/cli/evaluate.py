"""Evaluate detections: per-class AP / mAP (VOC07 11-point or all-point area) or COCO metrics.

Two modes:

* predictions: ``--annotations GT.json --predictions PRED.json`` (COCO format: GT with
  images/annotations/categories, predictions a list of {image_id, category_id, bbox xywh px,
  score}). ``iscrowd`` GT boxes count as VOC "difficult".
* checkpoint: ``--checkpoint CKPT [--config CFG] [--split val] [--set k=v ...] [--device D]``
  evaluates a trained model on its dataset (``ssd.engine.evaluate``). The checkpoint carries its
  config; ``--config``/``--set`` override it. Besides the AP table it measures end-to-end FPS on
  the device (batch ``--speed-batch-size``, fp32; ``--no-speed`` skips it) and the confusion
  matrix (classes + background, at ``eval.confusion_score``); ``--output-dir`` also writes
  confusion_matrix.png.

``--metric voc07|area`` (default voc07) at ``--iou`` (default 0.5): ``mAP`` is the mean of the
per-class AP over classes with ground truth (classes without are null and listed in
``classes_without_gt``). ``--metric coco``: ``mAP`` is COCO's primary metric AP@[.5:.95]; the
output also holds AP, AP50, AP75, APs, APm, APl, the AR fields, ``per_class_ap`` (AP@[.5:.95])
and ``per_class_ap50``. ``--json`` prints that summary on stdout; ``--output-dir`` writes
report.md (table), pr_curves.png and results.json.

Exit status: 0 ok, 2 usage or data error (the message names the file or option).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ssd.data.records import DatasetError
from ssd.inference.device import resolve_device

METRICS = ("voc07", "area", "coco")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssd-evaluate",
        description="Per-class AP / mAP (VOC07, all-point) or COCO AP of predictions or a checkpoint.",
    )
    p.add_argument("--annotations", type=Path, help="COCO-format ground-truth json (predictions mode)")
    p.add_argument("--predictions", type=Path, help="COCO-format results json (predictions mode)")
    p.add_argument("--config", type=Path, help="config yaml (checkpoint mode)")
    p.add_argument("--checkpoint", type=Path, help="model checkpoint (checkpoint mode)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)"
    )
    p.add_argument("--split", default=None, help="dataset split to evaluate (checkpoint mode; default val)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (checkpoint mode; default: auto)")
    p.add_argument(
        "--metric",
        choices=METRICS,
        default=None,
        help="voc07 (default), area or coco; checkpoint mode: config",
    )
    p.add_argument("--iou", type=float, default=None, help="IoU threshold for voc07/area (default 0.5)")
    p.add_argument(
        "--output-dir", type=Path, default=None, help="write report.md, pr_curves.png, results.json"
    )
    p.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-speed", action="store_true", help="checkpoint mode: skip the FPS measurement")
    p.add_argument(
        "--speed-batch-size", type=int, default=1, help="checkpoint mode: batch size of the FPS measurement"
    )
    return p


def _error(message: str) -> int:
    print(f"ssd-evaluate: error: {message}", file=sys.stderr)
    return 2


def _emit(summary: dict[str, Any], result: Any, args: argparse.Namespace, sources: dict[str, str]) -> None:
    """Print the summary (JSON or a table) and write the report files."""
    from ssd.evaluation.report import ap_table, write_report

    if args.output_dir is not None:
        if result is not None and hasattr(result, "precision"):
            paths = write_report(result, args.output_dir, sources, summary)
        else:  # a plain dict (checkpoint mode without a result object): table and json only
            out = Path(args.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            paths = {"json": out / "results.json"}
            if isinstance(summary.get("per_class_ap"), dict):
                table = ap_table(_floats(summary["per_class_ap"]), _float(summary.get("mAP")))
                (out / "report.md").write_text(table, encoding="utf-8")
                paths["report"] = out / "report.md"
        if not args.json:
            for path in paths.values():
                print(f"wrote {path}")
    if args.json:
        print(json.dumps(summary, indent=2))
    elif isinstance(summary.get("per_class_ap"), dict):
        metric = summary.get("metric", "?")
        print(f"metric: {metric}")
        extra = {}
        if metric == "coco":
            stats = ("AP", "AP50", "AP75", "APs", "APm", "APl")
            print(", ".join(f"{k} {'n/a' if summary.get(k) is None else f'{summary[k]:.4f}'}" for k in stats))
            extra["AP50"] = _floats(summary.get("per_class_ap50", {}))
        ap_header = "AP@[.5:.95]" if metric == "coco" else f"AP@{summary.get('iou_threshold', '')}"
        table = ap_table(_floats(summary["per_class_ap"]), _float(summary.get("mAP")), None, extra, ap_header)
        print(table, end="")
    else:
        print(json.dumps(summary, indent=2))


def _float(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _floats(d: dict[str, Any]) -> dict[str, float]:
    return {k: _float(v) for k, v in d.items()}


def evaluate_predictions_cli(args: argparse.Namespace) -> int:
    """Predictions mode: COCO-format GT + predictions files -> metrics."""
    from ssd.evaluation.coco import coco_eval, load_coco_gt, parse_coco_predictions, read_json
    from ssd.evaluation.voc import VOCMetric, evaluate_voc

    if args.annotations is None or args.predictions is None:
        return _error("predictions mode needs both --annotations and --predictions")
    metric = args.metric or "voc07"
    if metric == "coco" and args.iou is not None:
        return _error("--iou applies to --metric voc07/area only (coco averages IoU 0.50:0.95)")
    iou = 0.5 if args.iou is None else args.iou
    if not 0.0 < iou <= 1.0:
        return _error(f"--iou must lie in (0, 1], got {iou}")
    try:
        gt = load_coco_gt(args.annotations)
        raw_predictions = read_json(args.predictions)
        dets = parse_coco_predictions(raw_predictions, gt, args.predictions)
    except DatasetError as e:
        return _error(str(e))
    result: Any
    if metric == "coco":
        try:
            result = coco_eval(gt.data, raw_predictions)
        except ImportError as e:
            return _error(str(e))
    else:
        voc_metric: VOCMetric = "voc07" if metric == "voc07" else "area"
        result = evaluate_voc(gt.gts, dets, gt.class_names, iou_threshold=iou, metric=voc_metric)
    sources = {"annotations": str(args.annotations), "predictions": str(args.predictions)}
    summary = {**result.to_dict(), **sources, "num_images": len(gt.gts)}
    _emit(summary, result, args, sources)
    return 0


def evaluate_checkpoint_cli(args: argparse.Namespace) -> int:
    """Checkpoint mode: evaluate `--checkpoint` on the `--split` of its dataset: the config stored
    in the checkpoint, or `--config` when given; `--set` overrides either."""
    from ssd.config import ConfigError
    from ssd.inference.checkpoint import CheckpointError

    if args.checkpoint is None:
        return _error(
            "checkpoint mode needs --checkpoint (--config is optional: the checkpoint carries its config)"
        )
    overrides = list(args.set)
    if args.metric is not None:
        overrides.append(f"eval.metric={args.metric}")
    if args.iou is not None:
        overrides.append(f"eval.iou_threshold={args.iou}")
    from tqdm import tqdm

    from ssd.data.loader import build_records
    from ssd.engine.evaluate import measure_speed, predict_split, score, typical_image_size
    from ssd.evaluation.report import plot_pr_curves, summary_text, write_run_report
    from ssd.inference.checkpoint import load_model

    split = args.split or "val"
    try:
        device = resolve_device(args.device or "auto")
        cfg, model = load_model(args.checkpoint, config=args.config, overrides=overrides)
        model.to(device)
        total = len(build_records(cfg, split))
        with tqdm(total=total, desc=f"evaluate {split}", file=sys.stderr, disable=args.quiet) as bar:

            def advance(n: int) -> None:
                bar.update(n)

            detections = predict_split(model, cfg, split, device, advance)
        evaluation = score(cfg, split, detections)
        summary, result = evaluation.to_dict(), evaluation.result
        speed = None
        if not args.no_speed:
            speed = measure_speed(
                model, cfg, device, batch_size=args.speed_batch_size, orig_size=typical_image_size(cfg, split)
            )
    except (ConfigError, DatasetError, CheckpointError, FileNotFoundError) as e:
        return _error(str(e))
    sources = {
        "config": str(args.config or f"{args.checkpoint} (stored)"),
        "checkpoint": str(args.checkpoint),
        "split": split,
    }
    summary.update(sources)
    summary["speed"] = None if speed is None else speed.to_dict()
    summary["sources"] = sources
    if args.output_dir is not None:
        paths = write_run_report(summary, args.output_dir, f"Evaluation of {args.checkpoint} on {split}")
        if hasattr(result, "precision"):
            curves = "COCO interpolated PR at IoU 0.5" if cfg.eval.metric == "coco" else "PR curves"
            paths["plot"] = plot_pr_curves(
                result.precision, result.recall, result.per_class_ap, Path(args.output_dir) / "pr_curves.png",
                curves,
            )  # fmt: skip
        if not args.json:
            for path in paths.values():
                print(f"wrote {path}")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.checkpoint} on {split} ({summary.get('metric')}, {total} images)")
        print(summary_text(summary), end="")
    skipped = summary.get("skipped_images") or []
    if skipped:  # data.skip_invalid: scored without them
        print(
            f"ssd-evaluate: warning: {len(skipped)} image(s) could not be used and were not scored:",
            file=sys.stderr,
        )
        for entry in skipped:
            print(f"  {entry['file']}: {entry['problem']}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    predictions_mode = args.annotations is not None or args.predictions is not None
    checkpoint_mode = args.config is not None or args.checkpoint is not None
    if predictions_mode and checkpoint_mode:
        return _error("use either --annotations/--predictions or --config/--checkpoint, not both")
    if predictions_mode:
        if args.set or args.split is not None or args.device is not None or args.no_speed:
            return _error("--set, --split and --device apply to checkpoint mode (--config/--checkpoint) only")
        return evaluate_predictions_cli(args)
    if checkpoint_mode:
        return evaluate_checkpoint_cli(args)
    parser.print_usage(sys.stderr)
    return _error("give --annotations and --predictions, or --config and --checkpoint")


if __name__ == "__main__":
    raise SystemExit(main())
