"""Run a model over a split and score it (VOC AP in either convention, or COCO AP)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ssd.config import Config
from ssd.data.loader import build_eval_loader, build_records
from ssd.detector import load_model_state
from ssd.engine.checkpoint import load_checkpoint
from ssd.engine.runtime import DeviceCaps, autocast, resolve_inference_precision
from ssd.modeling.build import build_model
from ssd.modeling.ssd import SSD
from ssd.postprocess import postprocess
from ssd.structures import Detections

log = logging.getLogger(__name__)


@torch.inference_mode()
def predict_split(
    model: SSD,
    cfg: Config,
    split: str,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Detections]:
    """Detections (xyxy, original pixels, on the CPU) for every image of a split, by image id."""
    was_training = model.training
    model.eval()
    loader = build_eval_loader(cfg, split)
    priors = model.priors().detach()
    pp = cfg.postprocess
    out: dict[str, Detections] = {}
    precision = resolve_inference_precision(cfg, DeviceCaps.of(device))  # decode/NMS stay fp32
    for batch in loader:
        with autocast(device.type, precision):
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
            progress(len(batch.image_ids))
    model.train(was_training)
    return out


def score(
    cfg: Config, split: str, detections: dict[str, Detections], metric: str | None = None
) -> dict[str, Any]:
    """Score detections against the split's ground truth (difficult boxes ignored)."""
    from ssd.evaluation.voc import GroundTruth, evaluate_voc

    metric = metric or cfg.eval.metric
    records = build_records(cfg, split)
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    gts = [GroundTruth.from_record(r) for r in records]
    dets = [detections.get(r.image_id, empty) for r in records]
    if metric == "coco":
        from ssd.evaluation.coco import detections_to_coco, evaluate_coco, gt_to_coco

        ids = list(range(1, len(records) + 1))
        sizes = [(r.height, r.width) for r in records]
        return evaluate_coco(gt_to_coco(gts, cfg.data.classes, ids, sizes), detections_to_coco(dets, ids))
    if metric not in ("voc07", "area"):
        raise ValueError(f"eval.metric: unknown metric {metric!r}")
    result = evaluate_voc(
        gts, dets, cfg.data.classes, cfg.eval.iou_threshold, "voc07" if metric == "voc07" else "area"
    )
    return result.to_dict()


def evaluate_model(model: SSD, cfg: Config, split: str, device: torch.device) -> dict[str, Any]:
    """Predict and score one split; returns at least "mAP" and "per_class_ap"."""
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
