"""Run a model over a split and score it (VOC AP in either convention, or COCO AP)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ssd.config import Config
from ssd.data.loader import build_eval_loader, build_records, checked
from ssd.data.records import DatasetError, Record
from ssd.evaluation.coco import CocoResult
from ssd.evaluation.voc import VOCResult
from ssd.inference.runtime import DeviceCaps, autocast
from ssd.inference.settings import InferenceSettings
from ssd.inference.sliced import predict_split_tiled
from ssd.modeling.ssd import SSD
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
    (naming the file), whatever `data.num_workers`. Sliced inference (`ssd.inference.sliced`) when
    `input.tiling.enabled`."""
    if cfg.input.tiling.enabled:
        return SplitPredictions(*predict_split_tiled(model, cfg, split, device, progress))

    was_training = model.training
    model.eval()
    loader = build_eval_loader(cfg, split)
    records: list[Record] = loader.dataset.records  # type: ignore[attr-defined]
    priors = model.priors().detach()
    settings = InferenceSettings.from_config(cfg)
    out: dict[str, Detections] = {}
    precision = settings.precision_on(DeviceCaps.of(device))  # decode/NMS stay fp32
    skipped: list[DatasetError] = list(loader.dataset.left_out)  # type: ignore[attr-defined]
    try:
        for batch in checked(loader):
            for err in batch.skipped:
                skipped.append(err if isinstance(err, DatasetError) else DatasetError("?", str(err)))
            if batch.image_ids:
                with autocast(device.type, precision):
                    outputs = model(batch.images.to(device, non_blocking=True))
                dets = settings.postprocess(outputs, priors, batch.orig_sizes.to(device))
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


@dataclass(frozen=True)
class SkippedImage:
    """An image of the split that could not be read and was not scored: its id, the file, the
    problem and its kind (`DatasetError`)."""

    image_id: str | None
    file: str
    problem: str
    kind: str

    @classmethod
    def of(cls, error: DatasetError) -> SkippedImage:
        return cls(image_id=error.image_id, file=error.path, problem=error.detail, kind=error.kind)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Evaluation:
    """The scores of one split: the metric's result (`VOCResult` / `CocoResult`: mAP, per-class
    AP, ground-truth counts, PR curves per class), the confusion matrix, the number of images
    scored and the images skipped. `to_dict()` is the JSON form: the result's keys ("mAP",
    "per_class_ap", ...), then "confusion_matrix", "num_images", "num_skipped", "skipped_images"."""

    result: VOCResult | CocoResult
    confusion: ConfusionReport
    num_images: int
    skipped: tuple[SkippedImage, ...] = ()

    @property
    def map(self) -> float:
        """The headline mAP (NaN when no class has ground truth)."""
        return self.result.map

    @property
    def per_class_ap(self) -> dict[str, float]:
        return self.result.per_class_ap

    @property
    def metric(self) -> str:
        return self.result.metric

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.result.to_dict(),
            "confusion_matrix": self.confusion.to_dict(),
            "num_images": self.num_images,
            "num_skipped": self.num_skipped,
            "skipped_images": [s.to_dict() for s in self.skipped],
        }


def score(
    cfg: Config,
    split: str,
    detections: dict[str, Detections] | SplitPredictions,
    metric: str | None = None,
) -> Evaluation:
    """Score detections against the ground truth (difficult boxes ignored): of exactly the
    images that were read when given `SplitPredictions` (the skipped ones are listed in
    `skipped` with the file and the reason), of every usable record of the split when given a
    plain dict. `num_images` is the number scored; `confusion` the matrix of `confusion`."""
    from ssd.evaluation.voc import GroundTruth, evaluate_voc

    metric = metric or cfg.eval.metric
    if isinstance(detections, SplitPredictions):
        records, skipped, dets_by_id = detections.records, detections.skipped, detections.detections
    else:
        records, skipped, dets_by_id = build_records(cfg, split), [], detections
    empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    gts = [GroundTruth.from_record(r) for r in records]
    dets = [dets_by_id.get(r.image_id, empty) for r in records]
    result: VOCResult | CocoResult
    if metric == "coco":
        from ssd.evaluation.coco import coco_eval, detections_to_coco, gt_to_coco

        ids = list(range(1, len(records) + 1))
        sizes = [(r.height, r.width) for r in records]
        result = coco_eval(gt_to_coco(gts, cfg.data.classes, ids, sizes), detections_to_coco(dets, ids))
    elif metric in ("voc07", "area"):
        result = evaluate_voc(
            gts, dets, cfg.data.classes, cfg.eval.iou_threshold, "voc07" if metric == "voc07" else "area"
        )
    else:
        raise ValueError(f"eval.metric: unknown metric {metric!r}")
    return Evaluation(
        result=result,
        confusion=confusion(cfg, gts, dets),
        num_images=len(records),
        skipped=tuple(SkippedImage.of(e) for e in skipped),
    )


@dataclass(frozen=True)
class ConfusionReport:
    """A confusion matrix with its row/column `labels` (classes + "background") and the score
    and IoU thresholds it was counted at."""

    labels: list[str]
    matrix: list[list[int]]
    score_threshold: float
    iou_threshold: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def confusion(cfg: Config, gts: list[Any], dets: list[Detections]) -> ConfusionReport:
    """The confusion matrix (classes + background, see `ssd.evaluation.confusion`) at
    `eval.confusion_score` and `eval.iou_threshold`."""
    from ssd.evaluation.confusion import confusion_matrix

    matrix = confusion_matrix(
        gts,
        dets,
        len(cfg.data.classes),
        iou_threshold=cfg.eval.iou_threshold,
        score_threshold=cfg.eval.confusion_score,
    )
    return ConfusionReport(
        labels=[*cfg.data.classes, "background"],
        matrix=matrix.tolist(),
        score_threshold=cfg.eval.confusion_score,
        iou_threshold=cfg.eval.iou_threshold,
    )


def evaluate_model(
    model: SSD,
    cfg: Config,
    split: str,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Predict and score one split (exactly the images that were read; `score`). `progress(n)`
    is called with the number of images of each batch."""
    return score(cfg, split, predict_split(model, cfg, split, device, progress))


@dataclass(frozen=True)
class SpeedFigures:
    """End-to-end and network images/s (from the median), the median end-to-end batch latency in
    ms, and how they were measured (`measure_speed`)."""

    end_to_end_fps: float
    network_fps: float
    median_ms: float
    batch_size: int
    precision: str
    device: str
    device_name: str
    iters: int
    orig_size: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["orig_size"] = list(self.orig_size)
        return out


def measure_speed(
    model: SSD,
    cfg: Config,
    device: torch.device,
    *,
    batch_size: int = 1,
    precision: str = "fp32",
    iters: int | None = None,
    orig_size: tuple[int, int] = (375, 500),
) -> SpeedFigures:
    """End-to-end speed of `model` on `device` (pre-processing of uint8 images, network, decode,
    NMS, rescale; `ssd.engine.benchmark`), median of `iters` timed iterations (default 10 on the
    CPU, 50 on CUDA) after warm-up. Returns the figures the reports print (`SpeedFigures`). The
    model is left in eval mode on `device`."""
    from ssd.engine.benchmark import benchmark

    cuda = device.type == "cuda"
    n = iters if iters is not None else (50 if cuda else 10)
    res = benchmark(
        model, model.priors().detach(), InferenceSettings.from_config(cfg), batch_size=batch_size,
        precision=precision, device=device, warmup=10 if cuda else 2, iters=n, orig_size=orig_size,
        flops=False,
    )  # fmt: skip
    return SpeedFigures(
        end_to_end_fps=res.end_to_end_fps,
        network_fps=res.network_fps,
        median_ms=res.end_to_end.median_ms,
        batch_size=batch_size,
        precision=precision,
        device=str(device),
        device_name=res.device_name,
        iters=n,
        orig_size=orig_size,
    )


def typical_image_size(cfg: Config, split: str) -> tuple[int, int]:
    """(height, width) of the first image of a split (what the speed figure is measured at)."""
    records = build_records(cfg, split)
    return (int(records[0].height), int(records[0].width)) if records else (375, 500)
