"""Tiled vs untiled: score trained runs on their validation split (mAP, mAP of the small boxes,
per-class AP) and time them (images/s of full photos, tiles/s), as one report.

A run is a training folder (`config.yaml` + `last.pt`, as `ssd-train` writes it); its
config says whether it is tiled (`input.tiling.enabled`), and it is evaluated the way it was
trained. Small boxes: `ssd.evaluation.small` (under 32 x 32 after the 512 warp of the image).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssd.config import load_config
from ssd.engine.benchmark_tiled import TiledBenchmark, benchmark_tiled
from ssd.engine.evaluate import predict_split, score
from ssd.evaluation.small import small_only
from ssd.evaluation.voc import ClassMatches, GroundTruth, evaluate_voc, match_detections
from ssd.inference.checkpoint import load_model
from ssd.structures import Detections


@dataclass(frozen=True)
class RunReport:
    """Scores and speed of one run: mAP@0.5 of all boxes (`map`) and of the small ones
    (`map_small`, ground truth per class `num_gt_small`), per-class AP of both, and images/s
    (`fps`), tiles/s and tiles per image as the run infers (tiled or not), with the full
    `speed` timing. `to_dict()` gives the JSON entry (keys "mAP", "mAP_small", ...)."""

    run: str
    checkpoint: str
    tiled: bool
    tiling: dict[str, Any] | None
    num_priors: int
    image_size: int
    iterations: int
    split: str
    num_images: int
    map: float
    map_small: float
    num_gt_small: dict[str, int]
    per_class_ap: dict[str, float]
    per_class_ap_small: dict[str, float]
    fps: float
    tiles_per_s: float | None
    tiles_per_image: float
    speed: TiledBenchmark

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "checkpoint": self.checkpoint,
            "tiled": self.tiled,
            "tiling": self.tiling,
            "num_priors": self.num_priors,
            "image_size": self.image_size,
            "iterations": self.iterations,
            "split": self.split,
            "num_images": self.num_images,
            "mAP": self.map,
            "mAP_small": self.map_small,
            "num_gt_small": self.num_gt_small,
            "per_class_ap": self.per_class_ap,
            "per_class_ap_small": self.per_class_ap_small,
            "fps": self.fps,
            "tiles_per_s": self.tiles_per_s,
            "tiles_per_image": self.tiles_per_image,
            "speed": self.speed.to_dict(),
        }


@dataclass(frozen=True)
class ScoredRun:
    """One run scored on its split (no timing): mAP@0.5 of all boxes and of the small ones, per
    class, and the per-class VOC matches of both (`ssd.evaluation.voc.match_detections`) that
    `compare_seeds` re-weights per image."""

    run: str
    checkpoint: str
    tiled: bool
    num_priors: int
    image_size: int
    iterations: int
    split: str
    image_ids: tuple[str, ...]
    orig_size: tuple[int, int]
    map: float
    map_small: float
    num_gt_small: dict[str, int]
    per_class_ap: dict[str, float]
    per_class_ap_small: dict[str, float]
    matches: dict[str, ClassMatches]
    matches_small: dict[str, ClassMatches]


def score_run(
    run_dir: str | Path,
    *,
    checkpoint: str = "last.pt",
    split: str = "val",
    device: str | torch.device = "cpu",
) -> ScoredRun:
    """Score one run the way it was trained (tiled or not) on `split` (see the module docstring)."""
    run = Path(run_dir)
    cfg = load_config(run / "config.yaml")
    dev = torch.device(device)
    _, model = load_model(run / checkpoint, cfg)  # the EMA weights when the run kept them, as ssd-evaluate
    model.to(dev)
    dets = predict_split(model, cfg, split, dev)
    overall = score(cfg, split, dets, "voc07").result.to_dict()  # JSON numbers: NaN is None
    records = dets.records  # the images that were read
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    found = [dets.detections.get(r.image_id, empty) for r in records]
    gts = [GroundTruth.from_record(r) for r in records]
    gts_small = small_only(gts, [(r.height, r.width) for r in records])
    iou, classes = cfg.eval.iou_threshold, cfg.data.classes
    small = evaluate_voc(gts_small, found, classes, iou, "voc07").to_dict()
    return ScoredRun(
        run=str(run),
        checkpoint=checkpoint,
        tiled=cfg.input.tiling.enabled,
        num_priors=int(model.priors().shape[0]),
        image_size=cfg.priors.image_size,
        iterations=cfg.train.max_iters,
        split=split,
        image_ids=tuple(r.image_id for r in records),
        orig_size=(records[0].height, records[0].width),
        map=overall["mAP"],
        map_small=small["mAP"],
        num_gt_small=small["num_gt"],
        per_class_ap=overall["per_class_ap"],
        per_class_ap_small=small["per_class_ap"],
        matches=match_detections(gts, found, classes, iou)[0],
        matches_small=match_detections(gts_small, found, classes, iou)[0],
    )


def time_run(
    scored: ScoredRun,
    *,
    device: str | torch.device = "cpu",
    fps_batch: int = 1,
    fps_iters: int = 3,
    fps_warmup: int = 1,
) -> RunReport:
    """`scored` with its speed (`benchmark_tiled` on photos of the split's size): the report of
    one run."""
    run = Path(scored.run)
    cfg = load_config(run / "config.yaml")
    dev = torch.device(device)
    _, model = load_model(run / scored.checkpoint, cfg)
    model.to(dev)
    speed = benchmark_tiled(
        model,
        cfg,
        device=dev,
        orig_size=scored.orig_size,
        batch_size=fps_batch,
        warmup=fps_warmup,
        iters=fps_iters,
    )
    tiled = scored.tiled
    return RunReport(
        run=scored.run,
        checkpoint=scored.checkpoint,
        tiled=tiled,
        tiling=speed.tiling if tiled else None,
        num_priors=scored.num_priors,
        image_size=scored.image_size,
        iterations=scored.iterations,
        split=scored.split,
        num_images=len(scored.image_ids),
        map=scored.map,
        map_small=scored.map_small,
        num_gt_small=scored.num_gt_small,
        per_class_ap=scored.per_class_ap,
        per_class_ap_small=scored.per_class_ap_small,
        fps=speed.tiled_fps if tiled else speed.untiled_fps,
        tiles_per_s=speed.tiled_tiles_per_s if tiled else None,
        tiles_per_image=speed.tiles_per_image if tiled else 1,
        speed=speed,
    )


def evaluate_run(
    run_dir: str | Path,
    *,
    checkpoint: str = "last.pt",
    split: str = "val",
    device: str | torch.device = "cpu",
    fps_batch: int = 1,
    fps_iters: int = 3,
    fps_warmup: int = 1,
) -> RunReport:
    """Scores and speed of one run (see the module docstring)."""
    scored = score_run(run_dir, checkpoint=checkpoint, split=split, device=device)
    return time_run(scored, device=device, fps_batch=fps_batch, fps_iters=fps_iters, fps_warmup=fps_warmup)


@dataclass(frozen=True)
class SeedFigures:
    """One variant over its training seeds (one run folder each, in the order given): mAP and
    small-box mAP of every seed, and against the reference variant the difference of the seed
    means with its paired bootstrap interval over the images (every resample draws the same
    images for every run; the seeds of a variant are averaged within a resample, as
    `ssd-compare` does) and the verdict read from it (`ssd.evaluation.bootstrap.verdict`)."""

    variant: str
    runs: tuple[str, ...]
    map: tuple[float, ...]
    map_small: tuple[float, ...]
    delta_map: float | None = None
    delta_ci: tuple[float, float] | None = None
    verdict: str | None = None
    delta_map_small: float | None = None
    delta_ci_small: tuple[float, float] | None = None
    verdict_small: str | None = None

    @property
    def mean_map(self) -> float:
        return float(np.mean(self.map))

    @property
    def mean_map_small(self) -> float:
        return float(np.mean(self.map_small))

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "runs": list(self.runs),
            "mAP": [_json_num(v) for v in self.map],
            "mAP_small": [_json_num(v) for v in self.map_small],
            "mean_mAP": _json_num(self.mean_map),
            "mean_mAP_small": _json_num(self.mean_map_small),
            "delta_map": _json_num(self.delta_map),
            "delta_ci": None if self.delta_ci is None else [_json_num(v) for v in self.delta_ci],
            "verdict": self.verdict,
            "delta_map_small": _json_num(self.delta_map_small),
            "delta_ci_small": None
            if self.delta_ci_small is None
            else [_json_num(v) for v in self.delta_ci_small],
            "verdict_small": self.verdict_small,
        }


def _num(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _json_num(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else float(v)


def compare_seeds(
    variants: Mapping[str, Sequence[ScoredRun]], *, resamples: int = 2000, seed: int = 0
) -> list[SeedFigures]:
    """Every variant over its seeds against the first variant (the reference), see
    `SeedFigures`. All runs must be scored on the same images in the same order."""
    from ssd.evaluation.bootstrap import paired_interval, resample_counts, resampled_map, verdict

    names = list(variants)
    if not names or any(not runs for runs in variants.values()):
        raise ValueError("compare_seeds needs at least one run per variant")
    first = variants[names[0]][0]
    for name in names:
        for r in variants[name]:
            if r.image_ids != first.image_ids:
                raise ValueError(
                    f"{r.run}: scored on other images than {first.run}; compare runs of one split"
                )
    counts = resample_counts(len(first.image_ids), resamples, seed)
    boot = {
        (name, key): [resampled_map(getattr(r, key), counts, "voc07") for r in variants[name]]
        for name in names
        for key in ("matches", "matches_small")
    }
    out: list[SeedFigures] = []
    for i, name in enumerate(names):
        runs = variants[name]
        fig = SeedFigures(
            name,
            tuple(r.run for r in runs),
            tuple(_num(r.map) for r in runs),
            tuple(_num(r.map_small) for r in runs),
        )
        if i > 0:
            ref = out[0]
            ci = paired_interval(boot[name, "matches"], boot[names[0], "matches"])
            ci_small = paired_interval(boot[name, "matches_small"], boot[names[0], "matches_small"])
            fig = replace(
                fig,
                delta_map=fig.mean_map - ref.mean_map,
                delta_ci=ci,
                verdict=verdict(ci),
                delta_map_small=fig.mean_map_small - ref.mean_map_small,
                delta_ci_small=ci_small,
                verdict_small=verdict(ci_small),
            )
        out.append(fig)
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.1f}"


def report_markdown(results: Mapping[str, RunReport]) -> str:
    """Markdown tables of `evaluate_run` results by variant name. Speed: each run is timed
    interleaved with the untiled pipeline on the same photos, so its "time per photo vs
    untiled" holds whatever the machine load was; images/s of different runs may not compare."""
    names = list(results)
    lines = [
        "| variant | priors | mAP@0.5 (%) | mAP@0.5 small boxes (%) | images/s | tiles/s | tiles per image "
        "| untiled images/s, same timing | time per photo vs untiled |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in names:
        r = results[n]
        tiles = "-" if r.tiles_per_s is None else f"{r.tiles_per_s:.2f}"
        ratio = r.speed.slowdown if r.tiled else 1.0
        lines.append(
            f"| {n} | {r.num_priors:,} | {_pct(r.map)} | {_pct(r.map_small)} | {r.fps:.3f} "
            f"| {tiles} | {r.tiles_per_image:g} | {r.speed.untiled_fps:.3f} | {ratio:.2f}x |"
        )
    classes = list(results[names[0]].per_class_ap)
    small_gt = results[names[0]].num_gt_small
    lines += [
        "",
        "Per-class AP@0.5 (%), all boxes / small boxes only (small ground truth in brackets):",
        "",
        "| class | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for c in classes:
        cells = [
            f"{_pct(results[n].per_class_ap[c])} / {_pct(results[n].per_class_ap_small.get(c))}"
            for n in names
        ]
        lines.append(f"| {c} ({small_gt.get(c, 0)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pp(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:+.1f}"


def _ci(ci: tuple[float, float] | None) -> str:
    if ci is None or math.isnan(ci[0]) or math.isnan(ci[1]):
        return "-"
    return f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def seeds_markdown(figures: Sequence[SeedFigures], num_images: int, resamples: int, seed: int) -> str:
    """Markdown table of `compare_seeds`: per variant the mAPs of its seeds and their mean, and
    against the first variant the difference of the means with its interval and verdict."""
    ref = figures[0].variant
    lines = [
        f"mAP@0.5 (%) per training seed (one run folder each) and their mean; against {ref}: the "
        f"difference of the seed means (points) with its 95% paired bootstrap interval over the "
        f"{num_images} photos ({resamples:,} resamples, resample seed {seed}; the same photos drawn "
        "for every run, the seeds of a variant averaged within a resample) and what it allows one "
        "to say. The interval covers the choice of photos; with few seeds the training noise is "
        "only sampled, so read it with the per-seed values. The tables above show the first run "
        "folder of each variant.",
        "",
        f"| variant | seeds | mAP per seed | mean | vs {ref} | 95% interval | verdict "
        f"| small-box mAP per seed | mean | vs {ref} | 95% interval | verdict |",
        "|---|---:|---|---:|---:|---:|---|---|---:|---:|---:|---|",
    ]
    for f in figures:
        per_seed = ", ".join(_pct(v) for v in f.map)
        per_seed_small = ", ".join(_pct(v) for v in f.map_small)
        lines.append(
            f"| {f.variant} | {len(f.runs)} | {per_seed} | {_pct(f.mean_map)} | {_pp(f.delta_map)} "
            f"| {_ci(f.delta_ci)} | {f.verdict or '-'} | {per_seed_small} | {_pct(f.mean_map_small)} "
            f"| {_pp(f.delta_map_small)} | {_ci(f.delta_ci_small)} | {f.verdict_small or '-'} |"
        )
    return "\n".join(lines) + "\n"
