"""Run a model over a split and score it (VOC AP in either convention, or COCO AP)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssd.config import Config
from ssd.data.loader import build_eval_loader, build_records, checked
from ssd.data.records import DatasetError, Record
from ssd.detector import load_model_state
from ssd.engine.checkpoint import load_checkpoint
from ssd.modeling.build import build_model
from ssd.modeling.ssd import SSD
from ssd.postprocess import postprocess
from ssd.sliced import predict_split_tiled
from ssd.structures import Detections

log = logging.getLogger(__name__)


@dataclass
class SplitPredictions:
    """What one pass over a split produced: `detections` (xyxy, original pixels, on the CPU) of
    every image that was read, by image id; `records` of those images, in loader order; `skipped`
    the images left out (`data.skip_invalid`): the DatasetError of each, naming the file."""

    detections: dict[str, Detections]
    records: list[Record]
    skipped: list[DatasetError] = field(default_factory=list)


@torch.inference_mode()
def predict_split(
    model: SSD,
    cfg: Config,
    split: str,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> SplitPredictions:
    """Detections for every image of a split that can be read. Images that cannot be read are
    skipped and listed with `data.skip_invalid`; otherwise the first raises its DatasetError
    (naming the file), whatever `data.num_workers`. Sliced inference (`ssd.sliced`) when
    `input.tiling.enabled`."""
    if cfg.input.tiling.enabled:
        return SplitPredictions(*predict_split_tiled(model, cfg, split, device, progress))

    was_training = model.training
    model.eval()
    loader = build_eval_loader(cfg, split)
    records: list[Record] = loader.dataset.records  # type: ignore[attr-defined]
    priors = model.priors().detach()
    pp = cfg.postprocess
    out: dict[str, Detections] = {}
    skipped: list[DatasetError] = list(loader.dataset.left_out)  # type: ignore[attr-defined]
    try:
        for batch in checked(loader):
            for err in batch.skipped:
                skipped.append(err if isinstance(err, DatasetError) else DatasetError("?", str(err)))
            if batch.image_ids:
                outputs = model(batch.images.to(device, non_blocking=True))
                dets = postprocess(
                    outputs,
                    priors,
                    batch.orig_sizes.to(device),
                    variances=cfg.priors.variances,
                    score_threshold=pp.score_threshold,
                    nms_iou=pp.nms_iou,
                    top_k=pp.top_k,
                    max_detections=pp.max_detections,
                )
                for image_id, d in zip(batch.image_ids, dets):
                    out[image_id] = d.to("cpu")
            if progress is not None:
                progress(len(batch.image_ids) + len(batch.skipped))
    finally:
        model.train(was_training)
    if skipped:
        names = ", ".join(e.image_id or e.path for e in skipped[:20])
        more = f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        log.warning(
            "%s split: %d of %d images are unusable and not scored (data.skip_invalid): %s%s",
            split, len(skipped), len(records) + len(loader.dataset.left_out), names, more,  # type: ignore[attr-defined]
        )  # fmt: skip
    read = [r for r in records if r.image_id in out]
    return SplitPredictions(out, read, skipped)


def score(
    cfg: Config,
    split: str,
    detections: dict[str, Detections] | SplitPredictions,
    metric: str | None = None,
) -> dict[str, Any]:
    """Score detections against the ground truth (difficult boxes ignored): of exactly the
    images that were read when given `SplitPredictions` (the skipped ones are listed in
    "skipped_images" with the file and the reason, and counted in "num_skipped"), of every
    usable record of the split when given a plain dict. "num_images" is the number scored."""
    from ssd.evaluation.voc import GroundTruth, evaluate_voc

    metric = metric or cfg.eval.metric
    if isinstance(detections, SplitPredictions):
        records, skipped, dets_by_id = detections.records, detections.skipped, detections.detections
    else:
        records, skipped, dets_by_id = build_records(cfg, split), [], detections
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    gts = [GroundTruth.from_record(r) for r in records]
    dets = [dets_by_id.get(r.image_id, empty) for r in records]
    extra: dict[str, Any] = {
        "num_images": len(records),
        "num_skipped": len(skipped),
        "skipped_images": [
            {"image_id": e.image_id, "file": e.path, "problem": e.detail, "kind": e.kind} for e in skipped
        ],
    }
    if metric == "coco":
        from ssd.evaluation.coco import detections_to_coco, evaluate_coco, gt_to_coco

        ids = list(range(1, len(records) + 1))
        sizes = [(r.height, r.width) for r in records]
        result = evaluate_coco(gt_to_coco(gts, cfg.data.classes, ids, sizes), detections_to_coco(dets, ids))
        return {**result, **extra}
    if metric not in ("voc07", "area"):
        raise ValueError(f"eval.metric: unknown metric {metric!r}")
    voc = evaluate_voc(
        gts, dets, cfg.data.classes, cfg.eval.iou_threshold, "voc07" if metric == "voc07" else "area"
    )
    return {**voc.to_dict(), **extra}


def evaluate_model(model: SSD, cfg: Config, split: str, device: torch.device) -> dict[str, Any]:
    """Predict and score one split (exactly the images that were read); returns at least "mAP",
    "per_class_ap", "num_images" and the skipped images ("num_skipped", "skipped_images")."""
    return score(cfg, split, predict_split(model, cfg, split, device))


def evaluate_checkpoint(
    cfg: Config, checkpoint: str | Path, split: str = "val", device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint into the configured model and evaluate it on `split`."""
    dev = torch.device(device)
    model = build_model(cfg)
    state = load_checkpoint(checkpoint)
    load_model_state(model, state["model"], str(checkpoint))
    model.priors.freeze()
    model.to(dev)
    return evaluate_model(model, cfg, split, dev)
