"""Tiled vs untiled: score trained runs on their validation split (mAP, mAP of the small boxes,
per-class AP) and time them (images/s of full photos, tiles/s), as one report.

A run is a training folder (`config.yaml` + `last.pt`, as `ssd-train` writes it); its
config says whether it is tiled (`input.tiling.enabled`), and it is evaluated the way it was
trained. Small boxes: `ssd.evaluation.small` (under 32 x 32 after the 512 warp of the image).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssd.config import load_config
from ssd.engine.benchmark_tiled import TiledBenchmark, benchmark_tiled
from ssd.engine.evaluate import predict_split, score
from ssd.evaluation.small import small_only
from ssd.evaluation.voc import GroundTruth, evaluate_voc
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
    run = Path(run_dir)
    cfg = load_config(run / "config.yaml")
    dev = torch.device(device)
    _, model = load_model(run / checkpoint, cfg)  # the EMA weights when the run kept them, as ssd-evaluate
    model.to(dev)
    dets = predict_split(model, cfg, split, dev)
    overall = score(cfg, split, dets, "voc07").result.to_dict()  # JSON numbers: NaN is None
    records = dets.records  # the images that were read
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    gts = small_only([GroundTruth.from_record(r) for r in records], [(r.height, r.width) for r in records])
    small = evaluate_voc(
        gts,
        [dets.detections.get(r.image_id, empty) for r in records],
        cfg.data.classes,
        cfg.eval.iou_threshold,
        "voc07",
    ).to_dict()
    h, w = records[0].height, records[0].width
    speed = benchmark_tiled(
        model, cfg, device=dev, orig_size=(h, w), batch_size=fps_batch, warmup=fps_warmup, iters=fps_iters
    )
    tiled = cfg.input.tiling.enabled
    return RunReport(
        run=str(run),
        checkpoint=checkpoint,
        tiled=tiled,
        tiling=speed.tiling if tiled else None,
        num_priors=int(model.priors().shape[0]),
        image_size=cfg.priors.image_size,
        iterations=cfg.train.max_iters,
        split=split,
        num_images=len(records),
        map=overall["mAP"],
        map_small=small["mAP"],
        num_gt_small=small["num_gt"],
        per_class_ap=overall["per_class_ap"],
        per_class_ap_small=small["per_class_ap"],
        fps=speed.tiled_fps if tiled else speed.untiled_fps,
        tiles_per_s=speed.tiled_tiles_per_s if tiled else None,
        tiles_per_image=speed.tiles_per_image if tiled else 1,
        speed=speed,
    )


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


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
