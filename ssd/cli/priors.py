"""Prior toolkit: measure how priors fit a dataset, cluster box shapes, write optimised prior configs.

All box statistics are in network-input space (boxes warped to the S x S input as the model sees
them). Boxes come from ``--annotations PATH --format voc|coco|labelme [--split FILE]`` or, without
``--annotations``, from the config's data section (``--split-name train|val``).

    ssd-priors fit --config configs/ssd512_aluminum.yaml --split-name val \\
        [--compare runs/priors/coverage.yaml ...] [--output-dir DIR] [--json]
    ssd-priors kmeans --config CFG --k 9 [--metric iou|euclidean|ratio-scale]
        [--update mean|median] [--restarts 10] [--seed 0]
    ssd-priors sweep --config CFG --k-min 2 --k-max 16 --output-dir DIR
    ssd-priors optimize --config BASE --out NEW.yaml [--method chi|kmeans|coverage]
        [--max-priors N] [--subgrids none|auto|1x2,2x2,...] [--balance class|size
        --balance-power P[,P...]] [--output-dir DIR]

``fit`` reports (labelled) shape IoU and grid IoU, recall@t (the matcher threshold), positives
per ground truth, per class and size bucket, and the unmatched ground truth by shape; with
``--output-dir`` it writes fit.json, fit.md, shapes.png (density + priors) and recall.png.
``optimize`` methods: ``chi`` (Chi et al. section 3.2 as published: k = 7 IoU k-means sets the
first two levels' min sizes, 33 boxes per cell on SSD512), ``kmeans`` (ours: a generalisation of
that idea where the clusters set every level), ``coverage`` (ours: greedy on the prior grid).
``optimize`` writes NEW.yaml = BASE + a shape-form ``priors:`` section (it loads with
ssd.load_config and builds with ssd.build_model); coverage may put a shape on a sub-grid of its
level, written as ``[w, h, dx, dy]`` entries (the same shape at several sub-cell offsets).

Exit status: 0 ok, 2 usage, config or data error (the message names the culprit).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssd.cli.common import add_config_args
from ssd.config import Config, ConfigError, load_config
from ssd.data.check import ANNOTATION_FORMATS
from ssd.data.records import DatasetError, Record

if TYPE_CHECKING:
    from ssd.priors.fit import SubsetRecall

FORMATS = ANNOTATION_FORMATS
METRICS = ("iou", "euclidean", "ratio-scale")


class UsageError(ValueError):
    """A command-line problem (exit 2)."""


# --------------------------------------------------------------------------- arguments


def _data_args(p: argparse.ArgumentParser) -> None:
    add_config_args(
        p,
        config_help="YAML config (priors, classes, input size and the data section)",
        example="data.root=/data/tianchi",
    )
    p.add_argument("--annotations", type=Path, help="dataset root (voc, labelme) or COCO json")
    p.add_argument("--format", choices=FORMATS, help="annotation format (default: the config's)")
    p.add_argument("--split", type=Path, help="split file (voc: stems; labelme: image paths)")
    p.add_argument("--image-root", type=Path, help="coco: folder the file_names are relative to")
    p.add_argument(
        "--split-name",
        choices=("train", "val"),
        default=None,
        help="without --annotations: which split of the config's data (default: train; fit: val)",
    )
    p.add_argument(
        "--image-fold",
        type=_parse_fold,
        metavar="K/N",
        help="only the images of fold K (0-based) of N: folds stratified by each image's main class, "
        "seeded by --fold-seed (ssd.data.records.image_folds); fit on 0/2, score on 1/2",
    )
    p.add_argument("--fold-seed", type=int, default=0, help="seed of --image-fold (default 0)")
    p.add_argument("--output-dir", type=Path, help="write JSON/Markdown/PNG results here")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ssd-priors", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="read-only report of how a prior set fits the ground truth")
    _data_args(f)
    f.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="CFG",
        help="also report the priors of this config on the same boxes (repeatable)",
    )
    f.add_argument("--iou", type=float, help="IoU threshold (default: the config's matcher threshold)")
    f.add_argument("--max-unmatched", type=int, default=50, help="unmatched ground truth to list")
    f.add_argument(
        "--shifts",
        type=int,
        default=8,
        help="position-averaged figures over N x N shifts of every box across a cell of the two "
        "finest levels (default 8; 0 = off)",
    )

    k = sub.add_parser("kmeans", help="cluster box shapes")
    _data_args(k)
    k.add_argument("--k", type=int, required=True)
    k.add_argument("--metric", choices=METRICS, default="iou")
    k.add_argument("--update", choices=("mean", "median"), default="mean")
    k.add_argument("--restarts", type=int, default=10)
    k.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("sweep", help="mean shape IoU versus k for each metric")
    _data_args(s)
    s.add_argument("--k-min", type=int, default=2)
    s.add_argument("--k-max", type=int, default=16)
    s.add_argument(
        "--metrics", default=",".join(METRICS), help="comma-separated subset of " + ",".join(METRICS)
    )
    s.add_argument("--update", choices=("mean", "median"), default="mean")
    s.add_argument("--restarts", type=int, default=10)
    s.add_argument("--seed", type=int, default=0)

    o = sub.add_parser("optimize", help="write a prior config (shape form) fitted to the training boxes")
    _data_args(o)
    o.add_argument("--out", type=Path, required=True, help="the new config YAML")
    o.add_argument(
        "--method",
        choices=("chi", "kmeans", "coverage"),
        default="coverage",
        help="chi: Chi et al. as published; kmeans: our k-means generalisation; coverage: ours (default)",
    )
    o.add_argument("--max-priors", type=int, help="prior budget (default: the base config's count)")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--restarts", type=int, default=10, help="k-means restarts")
    o.add_argument("--sample-size", type=int, help="coverage: boxes x jitter copies scored (default 32000)")
    o.add_argument("--jitter", type=int, help="coverage: scored copies of every sampled box (default 16)")
    o.add_argument("--iou-weight", type=float, help="coverage: objective recall + w * mean IoU (default 0.2)")
    o.add_argument(
        "--max-shapes-per-level",
        type=int,
        help="coverage: cap on the shapes (priors per cell) of a level, sub-grid copies counted (default 64)",
    )
    o.add_argument(
        "--subgrids",
        type=_parse_subgrids,
        help="coverage: sub-grids NXxNY a shape may be put on, comma-separated, 'none' (default), "
        "or 'auto' (every power of two down to half the finest stride, within the cap): more "
        "grid recall, but slower to train",
    )
    o.add_argument(
        "--checkerboards",
        action="store_const",
        const=True,
        help="coverage, with --subgrids: each sub-grid also as its checkerboard (two diagonal "
        "offsets per sub-cell): IoU 0.5 for smaller boxes at half the priors of the next finer sub-grid",
    )
    o.add_argument(
        "--jitter-scale",
        type=float,
        help="coverage: sigma of the log size noise of the sample copies (default 0.3; 0 = off)",
    )
    o.add_argument(
        "--balance",
        choices=("class", "size"),
        help="coverage: weigh the boxes so that every class, or every size octave (sqrt area < 8, "
        "8-16, 16-32, ... input px), counts alike, tempered by --balance-power (default: every box alike)",
    )
    o.add_argument(
        "--balance-power",
        type=_parse_powers,
        metavar="P[,P...]",
        help="coverage, with --balance: a box of a group of n weighs n^-P (0 = unbalanced, 1 = every "
        "group alike; default 1); several values: the one with the best recall on an inner split of "
        "the fitting images (fit on one half, score on the other, both ways) is used",
    )
    o.add_argument(
        "--local-search",
        action="store_const",
        const=True,
        help="coverage: after the greedy, add and swap shapes while a move raises the objective by "
        "more than the smallest gain the greedy accepts",
    )
    o.add_argument(
        "--fits",
        type=int,
        help="coverage: fit N times (seeds SEED .. SEED+N-1: other jittered samples and k-means "
        "starts) and keep the fit with the best objective on an independent jittered sample of "
        "the same boxes (default 1)",
    )
    return ap


def _parse_powers(text: str) -> tuple[float, ...]:
    """'0,0.5,1' -> (0.0, 0.5, 1.0): powers >= 0."""
    try:
        out = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0,0.5,1, got {text!r}"
        ) from exc
    if not out or any(not v >= 0 for v in out):
        raise argparse.ArgumentTypeError(f"powers must be >= 0, got {text!r}")
    return out


def _parse_fold(text: str) -> tuple[int, int]:
    """'0/2' -> (0, 2)."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected K/N such as 0/2, got {text!r}") from exc
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"fold {text!r}: need 0 <= K < N")
    return k, n


def _parse_subgrids(text: str) -> str | tuple[tuple[int, int], ...]:
    """'1x2,2x2' -> ((1, 2), (2, 2)); 'none' -> (); 'auto' -> 'auto'."""
    if text.strip().lower() in ("none", ""):
        return ()
    if text.strip().lower() == "auto":
        return "auto"
    out = []
    for item in text.split(","):
        try:
            nx, ny = (int(v) for v in item.strip().lower().split("x"))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected NXxNY items such as 2x2, got {item!r}") from exc
        if nx < 1 or ny < 1 or nx * ny > 64:
            raise argparse.ArgumentTypeError(f"sub-grid {item!r}: need 1 <= nx, ny and nx * ny <= 64")
        out.append((nx, ny))
    return tuple(out)


# --------------------------------------------------------------------------- data


def _load_cfg(path: str | None, overrides: list[str]) -> Config:
    return load_config(path, overrides)


def load_records(cfg: Config, args: argparse.Namespace, default_split: str) -> list[Record]:
    """Annotation records from --annotations (no image is opened) or the config's data split."""
    from ssd.data.check import read_annotations
    from ssd.data.loader import build_records

    classes = cfg.data.classes
    if args.annotations is None:
        if args.format or args.split or args.image_root:
            raise UsageError("--format/--split/--image-root need --annotations")
        return build_records(cfg, args.split_name or default_split)
    if args.split_name:
        raise UsageError("--split-name selects a split of the config's data; with --annotations use --split")
    fmt = args.format or ("labelme" if cfg.data.format == "synthetic" else cfg.data.format)
    path = Path(args.annotations)
    if not path.exists():
        raise DatasetError(path, "--annotations: not found")
    if fmt == "coco" and args.split:
        raise UsageError("--split does not apply to coco (one json per split)")
    return read_annotations(
        fmt, path, classes, split_file=args.split, image_root=args.image_root, check_images=False
    )


def _boxes(cfg: Config, args: argparse.Namespace, default_split: str) -> Any:
    from ssd.priors.fit import records_to_boxes

    records = select_fold(load_records(cfg, args, default_split), args)
    if cfg.input.tiling.enabled:  # boxes in window space, clipped as in tiled training
        records = tiled_records(cfg, records)
    boxes = records_to_boxes(records, cfg.priors.image_size, include_difficult=cfg.data.use_difficult)
    if boxes.num_boxes == 0:
        raise DatasetError(args.annotations or cfg.data.root, "no ground-truth boxes")
    return boxes


def select_fold(records: list[Record], args: argparse.Namespace) -> list[Record]:
    """The records of `--image-fold K/N` (all without it)."""
    if getattr(args, "image_fold", None) is None:
        return records
    from ssd.data.records import image_folds

    k, n = args.image_fold
    folds = image_folds(records, n, seed=args.fold_seed)
    return [r for r, f in zip(records, folds) if f == k]


def tiled_records(cfg: Config, records: list[Record]) -> list[Record]:
    """One record per inference window of `input.tiling` (ssd.data.tiling.records_to_tiles)."""
    from ssd.data.tiling import Tiling, records_to_tiles

    return records_to_tiles(records, Tiling.from_config(cfg.input.tiling))


def tiled_small_recall(
    cfg: Config, args: argparse.Namespace, boxes: Any, grids: dict[str, Any], thr: float, shifts: int
) -> SubsetRecall:
    """Tiled fit: recall@thr of the window boxes whose original box is small (< 32 x 32) after
    the untiled warp to the input, per prior set (grid and position-averaged)."""
    from ssd.data.tiling import Tiling, small_before_tiling
    from ssd.priors.fit import subset_recall

    records = select_fold(load_records(cfg, args, "val"), args)
    mask = small_before_tiling(
        records,
        Tiling.from_config(cfg.input.tiling),
        cfg.priors.image_size,
        include_difficult=cfg.data.use_difficult,
    )
    if mask.shape[0] != boxes.num_boxes:  # degenerate boxes dropped: no exact correspondence
        raise DatasetError(args.annotations or cfg.data.root, "tiled boxes and their sources disagree")
    return subset_recall(grids, boxes, mask, cfg.data.classes, iou_threshold=thr, shifts=shifts)


def _source(cfg_path: str | None, args: argparse.Namespace, default_split: str) -> str:
    fold = ""
    if getattr(args, "image_fold", None) is not None:
        fold = f" (images of fold {args.image_fold[0]}/{args.image_fold[1]}, seed {args.fold_seed})"
    if args.annotations is not None:
        return f"{args.annotations}" + (f" (split {args.split})" if args.split else "") + fold
    return f"{cfg_path or 'defaults'}: data split {args.split_name or default_split}" + fold


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=float) + "\n", encoding="utf-8")


def _write_fit_outputs(
    out: Path,
    name: str,
    summary: dict[str, Any],
    markdown: str,
    boxes: Any,
    shapes: dict[str, Any],
    reports: dict[str, Any],
) -> None:
    """`name`.json (`summary`), `name`.md, shapes.png (`shapes` over the density of `boxes`) and
    recall.png (per class and size of `reports`) in `out`."""
    from ssd.priors.plots import plot_class_recall, plot_shape_density

    _write_json(out / f"{name}.json", summary)
    (out / f"{name}.md").write_text(markdown, encoding="utf-8")
    plot_shape_density(boxes.wh_px, shapes, out / "shapes.png", image_size=boxes.image_size)
    plot_class_recall(reports, out / "recall.png")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=float))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _name(path: str | None) -> str:
    return Path(path).stem if path else "defaults"


# --------------------------------------------------------------------------- fit


def cmd_fit(args: argparse.Namespace) -> int:
    from ssd.priors.fit import FitReport, fit_report, fit_table_markdown
    from ssd.priors.generator import PriorSet

    cfg = _load_cfg(args.config, args.overrides)
    boxes = _boxes(cfg, args, "val")
    thr = cfg.matcher.iou_threshold if args.iou is None else args.iou
    if not 0 < thr < 1:
        raise UsageError(f"--iou must be in (0, 1), got {thr}")
    if args.shifts < 0:
        raise UsageError(f"--shifts must be >= 0, got {args.shifts}")
    configs: dict[str, Config] = {_name(args.config): cfg}
    for path in args.compare:
        other = load_config(path, args.overrides)
        name = _name(path)
        while name in configs:
            name += "'"
        configs[name] = other
    reports: dict[str, FitReport] = {}
    grids = {}
    for name, c in configs.items():
        grid = PriorSet.from_config(c.priors)
        b = (
            boxes
            if c.priors.image_size == boxes.image_size
            else dataclasses.replace(boxes, image_size=c.priors.image_size)
        )
        reports[name] = fit_report(
            grid, b, cfg.data.classes, iou_threshold=thr, max_unmatched=args.max_unmatched, shifts=args.shifts
        )
        grids[name] = grid
    source = _source(args.config, args, "val")
    first = next(iter(reports))
    summary: dict[str, Any] = {"config": args.config, "boxes": source, **reports[first].to_dict()}
    if len(reports) > 1:
        summary["compare"] = {
            n: {"config": p, **reports[n].to_dict()} for n, p in zip(list(reports)[1:], args.compare)
        }
    table = fit_table_markdown(reports)
    small = None
    if cfg.input.tiling.enabled:
        small = tiled_small_recall(cfg, args, boxes, grids, thr, args.shifts)
        settings = dataclasses.asdict(cfg.input.tiling)
        summary["tiling"] = {"settings": settings, "small_after_warp": small.to_dict()}
    if args.output_dir is not None:
        markdown = f"# Prior fit\n\nBoxes: {source} ({boxes.num_boxes} ground truths)\n\n" + table
        shapes = {n: g.shapes for n, g in grids.items()}
        _write_fit_outputs(args.output_dir, "fit", summary, markdown, boxes, shapes, reports)
    if args.json:
        _print_json(summary)
    else:
        print(f"boxes: {source}: {boxes.num_boxes} ground truths in {len(boxes.image_ids)} images")
        print(table)
        if small is not None:
            print(
                f"tiled (boxes per window): {small.num_window_boxes} window boxes of boxes under 32 x 32 "
                f"after the untiled {cfg.priors.image_size} warp; recall@{thr:g}: "
                + ", ".join(
                    f"{n} {_pct(small.recall[n])} (position-averaged {_pct(small.recall_expected[n])})"
                    for n in grids
                )
            )
        for name, rep in reports.items():
            un = rep.unmatched
            print(
                f"{name}: {un.count} ground truths without a prior at IoU >= {thr:g}"
                + (
                    "; worst: "
                    + ", ".join(
                        f"{u.class_name} {u.w:.0f}x{u.h:.0f} ({u.iou_grid:.2f})" for u in un.worst[:8]
                    )
                    if un.worst
                    else ""
                )
            )
        if args.output_dir is not None:
            print(f"wrote {args.output_dir}/fit.json, fit.md, shapes.png, recall.png")
    return 0


# --------------------------------------------------------------------------- kmeans / sweep


def _costs(centroids: np.ndarray, cfg: Config) -> dict[str, int]:
    from ssd.priors.counting import prior_costs
    from ssd.priors.generator import PriorSet

    return prior_costs(centroids, PriorSet.from_config(cfg.priors)).to_dict()


def cmd_kmeans(args: argparse.Namespace) -> int:
    from ssd.priors.kmeans import cluster_shapes
    from ssd.priors.plots import plot_shape_density

    cfg = _load_cfg(args.config, args.overrides)
    boxes = _boxes(cfg, args, "train")
    res = cluster_shapes(
        boxes.wh_px, args.k, metric=args.metric, update=args.update, restarts=args.restarts, seed=args.seed
    )
    summary = {
        "boxes": _source(args.config, args, "train"),
        "num_boxes": boxes.num_boxes,
        "image_size": boxes.image_size,
        "seed": args.seed,
        "restarts": args.restarts,
        **res.to_dict(),
        **_costs(res.centroids, cfg),
    }
    if args.output_dir is not None:
        _write_json(args.output_dir / "kmeans.json", summary)
        plot_shape_density(
            boxes.wh_px,
            {f"{args.metric} k={args.k}": [list(map(tuple, res.centroids))]},
            args.output_dir / "kmeans.png",
            image_size=boxes.image_size,
        )
    if args.json:
        _print_json(summary)
    else:
        print(
            f"{args.metric} k-means ({args.update}), k={args.k}, {boxes.num_boxes} boxes in "
            f"{boxes.image_size}x{boxes.image_size} input: mean shape IoU {res.mean_iou:.4f}"
        )
        print("| # | w (px) | h (px) | w/h | boxes |\n|---:|---:|---:|---:|---:|")
        for i, ((w, h), n) in enumerate(zip(res.centroids, res.counts())):
            print(f"| {i} | {w:.1f} | {h:.1f} | {w / h:.2f} | {n} |")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ssd.priors.kmeans import cluster_shapes
    from ssd.priors.plots import plot_sweep

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise UsageError(f"--metrics: unknown {bad or metrics}; choose from {', '.join(METRICS)}")
    if not 1 <= args.k_min <= args.k_max:
        raise UsageError(f"need 1 <= --k-min ({args.k_min}) <= --k-max ({args.k_max})")
    cfg = _load_cfg(args.config, args.overrides)
    boxes = _boxes(cfg, args, "train")
    distinct = np.unique(boxes.wh_px, axis=0).shape[0]
    rows = []
    for k in range(args.k_min, min(args.k_max, distinct) + 1):
        for metric in metrics:
            res = cluster_shapes(
                boxes.wh_px, k, metric=metric, update=args.update, restarts=args.restarts, seed=args.seed
            )
            rows.append(
                {
                    "k": k,
                    "metric": metric,
                    "mean_iou": res.mean_iou,
                    "shapes": res.k,
                    **_costs(res.centroids, cfg),
                }
            )
    summary = {"boxes": _source(args.config, args, "train"), "num_boxes": boxes.num_boxes, "rows": rows}
    if args.output_dir is not None:
        _write_json(args.output_dir / "sweep.json", summary)
        plot_sweep(rows, args.output_dir / "sweep.png")
    if args.json:
        _print_json(summary)
    else:
        print(f"{boxes.num_boxes} boxes; priors: every shape on every level / each on its size's level")
        print(
            "| k | "
            + " | ".join(f"{m} IoU" for m in metrics)
            + " | priors (all levels) | priors (by size, iou) |"
        )
        print("|---:|" + "---:|" * (len(metrics) + 2))
        for k in sorted({r["k"] for r in rows}):
            by = {r["metric"]: r for r in rows if r["k"] == k}
            ref = by.get("iou", next(iter(by.values())))
            print(
                f"| {k} | "
                + " | ".join(f"{by[m]['mean_iou']:.4f}" for m in metrics)
                + f" | {ref['priors_all_levels']} | {ref['priors_by_size']} |"
            )
        if args.output_dir is not None:
            print(f"wrote {args.output_dir}/sweep.json, sweep.png")
    return 0


# --------------------------------------------------------------------------- optimize


def cmd_optimize(args: argparse.Namespace) -> int:
    from ssd.priors.fit import fit_report, fit_table_markdown
    from ssd.priors.generator import PriorSet
    from ssd.priors.optimize import optimize_priors
    from ssd.priors.writer import write_priors_config

    if args.config is None:
        raise UsageError("optimize needs --config BASE")
    cfg = _load_cfg(args.config, args.overrides)
    boxes = _boxes(cfg, args, "train")
    optional = {
        "iou_weight": args.iou_weight,
        "max_shapes_per_level": args.max_shapes_per_level,
        "subgrids": args.subgrids,
        "jitter_scale": args.jitter_scale,
        "jitter": args.jitter,
        "sample_size": args.sample_size,
        "checkerboards": args.checkerboards,
        "balance": args.balance,
        "balance_power": args.balance_power,
        "fits": args.fits,
        "local_search": args.local_search,
    }
    given = sorted(k for k, v in optional.items() if v is not None)
    if args.method != "coverage" and given:
        raise UsageError(f"--{given[0].replace('_', '-')} applies to --method coverage only")
    if args.balance_power is not None and args.balance is None:
        raise UsageError("--balance-power needs --balance class|size")
    chosen_by = None
    if args.balance_power is not None and len(args.balance_power) > 1:
        from ssd.priors.optimize import select_by_inner_split

        common = {k: v for k, v in optional.items() if v is not None and k != "balance_power"}
        chosen_by = select_by_inner_split(
            boxes,
            cfg.priors,
            [{"balance_power": p} for p in args.balance_power],
            max_priors=args.max_priors,
            iou_threshold=cfg.matcher.iou_threshold,
            seed=args.seed,
            restarts=args.restarts,
            **common,
        )
        optional["balance_power"] = chosen_by.options["balance_power"]
    elif args.balance_power is not None:
        optional["balance_power"] = args.balance_power[0]
    res = optimize_priors(
        boxes,
        cfg.priors,
        method=args.method,
        max_priors=args.max_priors,
        iou_threshold=cfg.matcher.iou_threshold,
        seed=args.seed,
        restarts=args.restarts,
        **{k: v for k, v in optional.items() if v is not None},
    )
    source = _source(args.config, args, "train")
    base_grid, new_grid = PriorSet.from_config(cfg.priors), res.grid
    import shlex

    header = (
        f"Generated by ssd-priors optimize --method {args.method} from {args.config}:\n"
        f"  ssd-priors {shlex.join(args.argv)}\n"
        f"fitted on {boxes.num_boxes} boxes of {source} (seed {args.seed}): "
        f"{new_grid.num_priors} priors, {new_grid.boxes_per_cell} per cell "
        f"(base: {base_grid.num_priors}, {base_grid.boxes_per_cell})"
    )
    out = write_priors_config(args.config, res.priors, args.out, overrides=args.overrides, header=header)
    thr = cfg.matcher.iou_threshold
    reports = {
        "base": fit_report(base_grid, boxes, cfg.data.classes, iou_threshold=thr),
        args.method: fit_report(new_grid, boxes, cfg.data.classes, iou_threshold=thr),
    }
    summary = {
        "out": str(out),
        "method": args.method,
        "config": args.config,
        "boxes": source,
        "num_priors": new_grid.num_priors,
        "boxes_per_cell": new_grid.boxes_per_cell,
        "base_num_priors": base_grid.num_priors,
        "base_boxes_per_cell": base_grid.boxes_per_cell,
        "shapes": [[list(e) for e in level] for level in new_grid.entries(2)],
        "fit_train": {n: r.to_dict() for n, r in reports.items()},
        "info": res.info.to_dict(),
    }
    if chosen_by is not None:
        summary["inner_split"] = chosen_by.to_dict()
    if args.output_dir is not None:
        markdown = (
            f"# Priors: {args.method}\n\nFitted on {source} "
            f"({boxes.num_boxes} boxes); written to {out}\n\n" + fit_table_markdown(reports)
        )
        shapes = {"base": base_grid.shapes, args.method: new_grid.shapes}
        _write_fit_outputs(args.output_dir, "optimize", summary, markdown, boxes, shapes, reports)
    if args.json:
        _print_json(summary)
    else:
        print(
            f"wrote {out}: {new_grid.num_priors} priors ({new_grid.boxes_per_cell} per cell; base "
            f"{base_grid.num_priors}, {base_grid.boxes_per_cell})"
        )
        for lvl, entries in enumerate(new_grid.entries()):
            print(
                f"  level {lvl} (f={new_grid.feature_maps[lvl]}, step {new_grid.steps[lvl]:g}, "
                f"{len(entries)} per cell): " + _describe_entries(entries)
            )
        if chosen_by is not None:
            print(
                "balance power chosen on an inner split of the fitting images (held-out recall, "
                "fitted on half 0 / on half 1): "
                + ", ".join(
                    f"{c['balance_power']:g}: {_pct(r[0])} / {_pct(r[1])}"
                    for c, r in zip(chosen_by.candidates, chosen_by.recall)
                )
                + f" -> {chosen_by.options['balance_power']:g}"
            )
        details = res.info.details_dict()
        moves = details.get("local_search") if args.method == "coverage" else None
        if moves is not None:
            swaps = sum(m["move"] == "swap" for m in moves)
            print(
                f"local search: {swaps} swaps, {len(moves) - swaps} additions, objective on the "
                f"sample +{sum(m['improvement'] for m in moves):.4f} (to {details['objective']:.4f})"
            )
        fits = details.get("fits") if args.method == "coverage" else None
        if fits:
            print(
                "fits (seed: objective on its own sample / on an independent sample): "
                + ", ".join(
                    f"{f['seed']}: {f['sample_objective']:.4f} / {f['holdout_objective']:.4f}" for f in fits
                )
                + f" -> seed {details['fit_seed']}"
            )
        print(f"fit on the training boxes ({source}):")
        print(fit_table_markdown(reports))
    return 0


def _describe_entries(entries: list[tuple[float, ...]]) -> str:
    """'10.3x11.6, 20.0x8.0 at 4 offsets (dy -0.375..0.375)': a shape repeated at sub-cell
    offsets is listed once with its offsets."""
    groups: dict[tuple[float, float], list[tuple[float, float]]] = {}
    for e in entries:
        groups.setdefault((e[0], e[1]), []).append((e[2], e[3]) if len(e) == 4 else (0.0, 0.0))
    parts = []
    for (w, h), offs in groups.items():
        if offs == [(0.0, 0.0)]:
            parts.append(f"{w:.1f}x{h:.1f}")
        else:
            shown = " ".join(f"({dx:+g},{dy:+g})" for dx, dy in offs)
            parts.append(f"{w:.1f}x{h:.1f} at {len(offs)} offsets {shown}")
    return ", ".join(parts)


COMMANDS = {"fit": cmd_fit, "kmeans": cmd_kmeans, "sweep": cmd_sweep, "optimize": cmd_optimize}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError, DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"ssd-priors {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
