"""The experiment: original vs Chi et al. vs k-means vs coverage vs learned priors, side by side.

Every variant is trained with the identical schedule, and with each of the same training seeds
(the batch of iteration i depends only on (seed, i), so a seed gives every variant the same data
order and the same initialisation of the layers they share), evaluated on the same validation
split and benchmarked the same way. Only the priors differ. The priors of a variant are fitted
once, with the base config's seed, and shared by all its training seeds.

Against the original, each variant gets the difference of the seed-mean mAPs and a paired
bootstrap interval over validation images (`ssd.evaluation.bootstrap`): the same resamples for
both, so the interval reflects which images were drawn, with the trained networks fixed; the
spread over seeds is reported beside it (`map_sd`, `maps`).

Runs resume per (variant, seed): a run whose training is complete and whose validation
detections are saved is neither trained nor evaluated again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssd.config import Config, ConfigError, replace
from ssd.data.loader import build_records
from ssd.engine.evaluate import Evaluation, evaluate_model, predict_split, score
from ssd.engine.train import train
from ssd.evaluation.bootstrap import BootstrapSummary
from ssd.inference.checkpoint import load_checkpoint, load_model
from ssd.inference.settings import InferenceSettings
from ssd.modeling.build import build_model
from ssd.modeling.ssd import SSD
from ssd.priors.fit import BoxSet, fit_report, records_to_boxes
from ssd.priors.generator import PriorSet
from ssd.priors.optimize import OptimizeInfo, optimize_priors
from ssd.structures import Detections

log = logging.getLogger(__name__)

FITTED: tuple[str, ...] = ("chi", "kmeans", "coverage")
VARIANTS: tuple[str, ...] = ("original", *FITTED, "learned")
REFERENCE = "original"
VARIANT_DESCRIPTIONS: dict[str, str] = {
    "original": "SSD512's hand-set priors (min/max sizes, aspect ratios 2 and 3).",
    "chi": "Chi et al. as published: k = 7 IoU k-means sets the min size of the first two levels "
    "(ratios 2 and 3 removed there); the last level gets min size = the input size and one w/h = 15 box.",
    "kmeans": "Ours, after Chi et al.: IoU k-means with k = levels sets every level's scale; ratios "
    "no cluster needs are pruned and an extreme ratio is added where a cluster needs it.",
    "coverage": "Ours: (level, shape) pairs chosen greedily on the real prior grid to maximise "
    "recall@0.5 and mean IoU of the training boxes within the original prior budget.",
    "learned": "Zhong et al.: the shapes of another variant made trainable (log w, log h) with soft "
    "assignment and online clustering warm-ups and BN without shift on w/h, frozen at the end.",
}


def parse_variant(name: str) -> tuple[str, str | None]:
    """(kind, initial shapes): "learned" -> ("learned", "original"), "learned@kmeans" ->
    ("learned", "kmeans"), a fixed variant -> (name, None). Raises ConfigError otherwise."""
    kind, _, init = name.partition("@")
    if kind == "learned":
        start = init or REFERENCE
        if start not in (REFERENCE, *FITTED):
            raise ConfigError(
                f"--variants: {name!r}: learned priors start from one of {', '.join((REFERENCE, *FITTED))}"
            )
        return kind, start
    if init or kind not in VARIANTS:
        raise ConfigError(
            f"--variants: unknown variant {name!r} (choose from {', '.join(VARIANTS)}, or learned@VARIANT)"
        )
    return kind, None


def describe(name: str) -> str:
    kind, init = parse_variant(name)
    text = VARIANT_DESCRIPTIONS[kind]
    return f"{text} Initial shapes: {init}." if kind == "learned" else text


def variant_config(
    name: str, base: Config, train_boxes: BoxSet, max_priors: int | None = None
) -> tuple[Config, OptimizeInfo | None]:
    """The config of one variant (priors fitted on the training boxes with `base.seed`) and what
    the fit did (None for the original). `learned@X` is X's config with `priors.learnable: true`
    (and X's fit)."""
    kind, init = parse_variant(name)
    if kind == "learned":
        assert init is not None
        cfg, info = variant_config(init, base, train_boxes, max_priors)
        return replace(cfg, **{"priors.learnable": True}), info
    if kind == REFERENCE:
        return base, None
    result = optimize_priors(
        train_boxes,
        base.priors,
        method=kind,  # type: ignore[arg-type]
        max_priors=max_priors,
        seed=base.seed,
    )
    return replace(base, priors=result.priors), result.info


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
    return evaluate_model(model, cfg, "val", device).map


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


DETECTIONS_FILE = "val_detections.pt"
RESULT_FILE = "result.json"


def save_detections(dets: dict[str, Detections], path: Path) -> None:
    """Validation detections by image id (xyxy original pixels), written atomically."""
    data = {k: {"boxes": d.boxes, "scores": d.scores, "labels": d.labels} for k, d in dets.items()}
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    tmp.replace(path)


def load_detections(path: Path) -> dict[str, Detections]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    return {k: Detections(v["boxes"], v["scores"], v["labels"]) for k, v in data.items()}


def run_dir_for(out: Path, name: str, seed: int) -> Path:
    return out / name / f"seed{seed}"


@dataclass
class SeedRun:
    """One trained (variant, seed): its metrics (the evaluation's JSON form, as result.json keeps
    them), validation detections and final config."""

    seed: int
    metrics: dict[str, Any]
    detections: dict[str, Detections]
    final_cfg: Config
    run_dir: Path
    checkpoint: Path
    map_untrained: float | None

    @property
    def map(self) -> float:
        return float(self.metrics["mAP"])

    @property
    def per_class_ap(self) -> dict[str, float | None]:
        return dict(self.metrics["per_class_ap"])

    @property
    def metric(self) -> str | None:
        metric = self.metrics.get("metric")
        return None if metric is None else str(metric)


def _final_model(final_cfg: Config, checkpoint: Path, dev: torch.device) -> SSD:
    _, model = load_model(checkpoint, final_cfg)
    return model.to(dev)


def run_seed(
    name: str,
    cfg: Config,
    seed: int,
    out: Path,
    dev: torch.device,
    chance: bool,
    progress: Callable[[str, int, dict[str, float]], None] | None = None,
) -> SeedRun:
    """Train (or resume) one (variant, seed) in out/<variant>/seed<seed> and keep its validation
    detections; a complete run with saved detections is only read back."""
    from ssd.config import load_config

    cfg_s = replace(cfg, seed=seed)
    run_dir = run_dir_for(out, name, seed)
    det_path, res_path = run_dir / DETECTIONS_FILE, run_dir / RESULT_FILE
    saved_cfg = run_dir / "config.yaml"
    if saved_cfg.exists() and load_config(saved_cfg) != cfg_s:
        raise ConfigError(
            f"{saved_cfg}: this run was made with another config (priors or settings changed); "
            "delete the folder or use another --output-dir"
        )
    if _run_complete(run_dir, cfg_s) and det_path.exists() and res_path.exists():
        saved = json.loads(res_path.read_text(encoding="utf-8"))
        final_cfg = load_config(saved["final_config"])
        log.info("%s seed %d: complete, read back from %s", name, seed, run_dir)
        return SeedRun(
            seed, saved["metrics"], load_detections(det_path), final_cfg, run_dir,
            Path(saved["checkpoint"]), saved.get("map_untrained"),
        )  # fmt: skip
    map_untrained = untrained_map(cfg_s, dev) if chance else None
    captured: dict[str, dict[str, Detections]] = {}

    def evaluate_fn(model: SSD, c: Config, d: torch.device) -> Evaluation:
        run = predict_split(model, c, "val", d)
        captured["dets"] = run.detections
        return score(c, "val", run)

    def step(it: int, scalars: dict[str, float]) -> None:
        if progress is not None:
            progress(f"{name} seed {seed}", it, scalars)

    resume = (run_dir / "last.pt").exists()
    # a run folder without a checkpoint holds at most an unfinished start: begin it again
    result = train(
        cfg_s, run_dir, device=dev, resume=resume, progress=step, evaluate_fn=evaluate_fn,
        overwrite=not resume,
    )  # fmt: skip
    final_cfg = load_config(result.learned_config) if result.learned_config is not None else cfg_s
    if "dets" not in captured or result.final_metrics is None:
        # the run was already complete (e.g. interrupted before its detections were saved)
        model = _final_model(final_cfg, result.last_checkpoint, dev)
        run = predict_split(model, final_cfg, "val", dev)
        captured["dets"] = run.detections
        metrics = score(final_cfg, "val", run).to_dict()
    else:
        metrics = result.final_metrics
    save_detections(captured["dets"], det_path)
    final_path = result.learned_config if result.learned_config is not None else run_dir / "config.yaml"
    res_path.write_text(
        json.dumps(
            {"metrics": metrics, "final_config": str(final_path), "checkpoint": str(result.last_checkpoint),
             "map_untrained": map_untrained, "seed": seed},
            indent=2,
        ),
        encoding="utf-8",
    )  # fmt: skip
    return SeedRun(seed, metrics, captured["dets"], final_cfg, run_dir, result.last_checkpoint, map_untrained)


@dataclass(frozen=True)
class CompareBase:
    """The base run of a comparison: data, schedule, seeds, box counts, bootstrap settings."""

    data: str
    format: str
    image_size: int
    width_mult: float
    max_iters: int
    batch_size: int
    seed: int
    seeds: list[int]
    num_train_boxes: int
    num_val_boxes: int
    num_val_images: int
    bootstrap: BootstrapSummary | None

    def to_dict(self) -> dict[str, object]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["bootstrap"] = None if self.bootstrap is None else self.bootstrap.to_dict()
        return out


@dataclass(frozen=True)
class VariantReport:
    """One variant of a comparison: mAP over the seeds (mean, sd, each), per-class AP, speed, how
    its priors fit the validation boxes, its files; against the original (when compared) the mAP
    difference, its paired bootstrap interval and the verdict read from it."""

    map: float
    map_sd: float | None
    maps: list[float]
    seeds: list[int]
    map_untrained: float | None
    per_class_ap: dict[str, float | None]
    metric: str
    fps: float | None
    network_fps: float | None
    fps_device: str
    num_priors: int
    boxes_per_cell: int
    mean_iou_grid: float
    mean_iou_shape: float
    recall: float
    recall_expected: float
    positives_per_gt: float
    fit: dict[str, Any]  # the fit report's per_class, per_size, per_level and unmatched tables
    config: str
    checkpoints: list[str]
    fit_info: dict[str, Any]  # what the prior optimizer reported
    description: str
    fit_before_training: dict[str, Any] | None = None  # learned variants: the initial shapes' fit
    delta_map: float | None = None
    delta_ci: tuple[float, float] | None = None
    verdict: str | None = None

    def to_dict(self) -> dict[str, object]:
        """The JSON form (report.json); the optional keys only when set."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _OPTIONAL_VARIANT_KEYS and value is None:
                continue
            out[f.name] = list(value) if f.name == "delta_ci" else value
        return out


_OPTIONAL_VARIANT_KEYS = ("fit_before_training", "delta_map", "delta_ci", "verdict")


@dataclass(frozen=True)
class CompareReport:
    """What `compare` measured (report.json is `to_dict()`) and the files it wrote (report.md,
    plots) by key."""

    base: CompareBase
    variants: dict[str, VariantReport]
    files: dict[str, str]

    def to_dict(self) -> dict[str, object]:
        return {
            "base": self.base.to_dict(),
            "variants": {name: v.to_dict() for name, v in self.variants.items()},
            "files": dict(self.files),
        }


def compare(
    base: Config,
    output_dir: str | Path,
    variants: Sequence[str] = VARIANTS,
    device: str | torch.device = "cpu",
    bench_device: str | torch.device | None = None,
    bench_iters: int = 20,
    progress: Callable[[str, int, dict[str, float]], None] | None = None,
    seeds: Sequence[int] | None = None,
    bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    untrained: bool = True,
) -> CompareReport:
    """Fit, train (each of `seeds`, default: the base seed), evaluate and benchmark each variant;
    returns the report (its `to_dict()` is also written to `output_dir/report.json`, with report.md and plots
    beside it). `bootstrap`: resamples of the paired interval against the original (0: none);
    `bench_iters` 0 skips the FPS benchmark; `untrained=False` skips the chance level (the
    untrained network's mAP, one more evaluation per variant)."""
    from ssd.engine.benchmark import benchmark
    from ssd.evaluation.bootstrap import (
        bootstrap_summary,
        paired_interval,
        resample_counts,
        resampled_map,
        verdict,
    )
    from ssd.evaluation.voc import GroundTruth, match_detections

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    bench_dev = torch.device(bench_device) if bench_device is not None else dev
    for v in variants:
        parse_variant(v)
    if len(set(variants)) != len(variants):
        raise ConfigError(f"--variants: a variant is listed twice: {list(variants)}")
    seed_list = [int(base.seed)] if not seeds else [int(s) for s in seeds]
    if len(set(seed_list)) != len(seed_list):
        raise ConfigError(f"--seeds: a seed is listed twice: {seed_list}")
    if bootstrap and bootstrap < 1000:
        raise ConfigError(f"--bootstrap: use at least 1000 resamples (or 0 for none), got {bootstrap}")
    metric = base.eval.metric
    if bootstrap and metric not in ("voc07", "area"):
        raise ConfigError(f"eval.metric: the bootstrap needs a VOC metric (voc07, area), got {metric!r}")
    size = base.priors.image_size
    train_boxes = records_to_boxes(build_records(base, "train"), size)
    val_records = build_records(base, "val")
    val_boxes = records_to_boxes(val_records, size)
    classes = base.data.classes
    log.info("%d training boxes, %d validation boxes", train_boxes.num_boxes, val_boxes.num_boxes)
    gts = [GroundTruth.from_record(r) for r in val_records]
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    counts = resample_counts(len(gts), bootstrap, bootstrap_seed) if bootstrap else None

    base_info = CompareBase(
        data=base.data.root,
        format=base.data.format,
        image_size=size,
        width_mult=base.model.width_mult,
        max_iters=base.train.max_iters,
        batch_size=base.train.batch_size,
        seed=base.seed,
        seeds=seed_list,
        num_train_boxes=train_boxes.num_boxes,
        num_val_boxes=val_boxes.num_boxes,
        num_val_images=len(gts),
        bootstrap=bootstrap_summary(bootstrap, bootstrap_seed) if bootstrap else None,
    )
    entries: dict[str, VariantReport] = {}
    curves: dict[str, list[tuple[int, float]]] = {}
    prior_shapes: dict[str, list[list[tuple[float, float]]]] = {}
    boot: dict[str, list[np.ndarray]] = {}
    for name in variants:
        kind, init = parse_variant(name)
        cfg, optimized = variant_config(name, base, train_boxes)
        fit_info = {} if optimized is None else optimized.to_dict()
        if kind == "learned":
            fit_info["initial_shapes"] = init
        fit_before = fit_report(PriorSet.from_config(cfg.priors), val_boxes, classes).to_dict()
        log.info("variant %s: %d priors, seeds %s", name, fit_before["num_priors"], seed_list)
        runs = [
            run_seed(name, cfg, s, out, dev, chance=untrained and k == 0, progress=progress)
            for k, s in enumerate(seed_list)
        ]
        first = runs[0]
        maps = [r.map for r in runs]
        boot[name] = []
        for r in runs:
            dets = [r.detections.get(rec.image_id, empty) for rec in val_records]
            if counts is not None:
                matches, _, _ = match_detections(gts, dets, classes, base.eval.iou_threshold)
                boot[name].append(resampled_map(matches, counts, metric))
        grid = PriorSet.from_config(first.final_cfg.priors)
        fit_after = fit_report(grid, val_boxes, classes).to_dict() if kind == "learned" else fit_before
        fps: float | None = None
        network_fps: float | None = None
        if bench_iters > 0:
            model = _final_model(first.final_cfg, first.checkpoint, dev)
            bench = benchmark(
                model, model.priors(), InferenceSettings.from_config(first.final_cfg), batch_size=1,
                device=bench_dev, warmup=3, iters=bench_iters, flops=False,
            )  # fmt: skip
            fps, network_fps = float(bench.end_to_end_fps), float(bench.network_fps)
        fit_keys = ("mean_iou_grid", "mean_iou_shape", "recall", "recall_expected", "positives_per_gt")
        entry = VariantReport(
            map=float(np.mean(maps)),
            map_sd=float(np.std(maps, ddof=1)) if len(maps) > 1 else None,
            maps=maps,
            seeds=seed_list,
            map_untrained=first.map_untrained,
            per_class_ap={c: _mean_or_none([r.per_class_ap.get(c) for r in runs]) for c in classes},
            metric=first.metric or metric,
            fps=fps,
            network_fps=network_fps,
            fps_device=str(bench_dev),
            num_priors=int(fit_after["num_priors"]),
            boxes_per_cell=int(fit_after["boxes_per_cell"]),
            mean_iou_grid=float(fit_after["mean_iou_grid"]),
            mean_iou_shape=float(fit_after["mean_iou_shape"]),
            recall=float(fit_after["recall"]),
            recall_expected=float(fit_after["recall_expected"]),
            positives_per_gt=float(fit_after["positives_per_gt"]),
            fit={k: fit_after[k] for k in ("per_class", "per_size", "per_level", "unmatched")},
            config=str(first.run_dir / "config.yaml")
            if kind != "learned"
            else json.loads((first.run_dir / RESULT_FILE).read_text(encoding="utf-8"))["final_config"],
            checkpoints=[str(r.checkpoint) for r in runs],
            fit_info=fit_info,
            description=describe(name),
            fit_before_training={k: fit_before[k] for k in fit_keys} if kind == "learned" else None,
        )
        prior_shapes[name] = [list(level) for level in grid.shapes]
        curves[name] = _loss_curve(first.run_dir)
        entries[name] = entry
        log.info("variant %s: mAP %.4f (seeds %s)", name, entry.map, maps)

    ref = entries.get(REFERENCE)
    for name, entry in entries.items():
        if ref is None or name == REFERENCE:
            continue
        delta = entry.map - ref.map
        if counts is not None:
            ci = paired_interval(boot[name], boot[REFERENCE])
            entries[name] = dataclasses.replace(
                entry, delta_map=delta, delta_ci=(ci[0], ci[1]), verdict=verdict(ci)
            )
        else:
            entries[name] = dataclasses.replace(entry, delta_map=delta)
    if ref is None:
        log.warning("no %r variant: no differences or intervals reported", REFERENCE)

    from ssd.evaluation.comparison import write_comparison

    partial = {"base": base_info.to_dict(), "variants": {n: e.to_dict() for n, e in entries.items()}}
    files = write_comparison(partial, curves, prior_shapes, val_boxes, classes, out)
    report = CompareReport(base_info, entries, files)
    text = json.dumps(report.to_dict(), indent=2, default=_json_default)
    (out / "report.json").write_text(text, encoding="utf-8")
    return report


def _mean_or_none(values: Sequence[Any]) -> float | None:
    nums = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(nums)) if nums else None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
