"""ONNX export of the network, or of the whole detector (batch 1) with decode + NMS, checked
against onnxruntime.

Two graphs:

- network (`TensorOutputs`): `images` float [B, 3, S, S] (resized to S x S, normalised with the
  config's mean/std) -> `cls_logits` [B, P, C], `box_deltas` [B, P, 4] (encoded offsets against
  the priors [P, 4] cxcywh relative). The batch dimension is dynamic.
- with NMS (`DetectionsModule`): `images` float [1, 3, S, S] -> `boxes` [K, 4] xyxy **relative to
  the network input** (multiply by (W, H, W, H) of the original image for pixels), `scores` [K],
  `labels` [K] int64 in 1..C-1, sorted by decreasing score. The batch is fixed at 1: the
  per-image split of `ssd.postprocess.postprocess` needs data-dependent Python, which tracing
  cannot express. torchvision's `nms` becomes ONNX `NonMaxSuppression`.

Export uses PyTorch's TorchScript-based exporter (`dynamo=False`): the torch.export-based one
needs the extra `onnxscript` package and torchvision registers its NMS symbolic for this one.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from ssd.inference.settings import InferenceSettings
from ssd.modeling.ssd import SSD, TensorOutputs
from ssd.priors.coder import decode

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17


class DetectionsModule(nn.Module):
    """Batch-1 detector graph for export: `forward(images [1, 3, S, S])` -> `boxes` [K, 4] xyxy
    relative to the input, `scores` [K], `labels` [K] int64 in 1..C-1, sorted by score.

    Same computation as `ssd.postprocess.postprocess` for one image with `orig_sizes` (1, 1):
    softmax, decode, clamp to [0, 1], per-class top-k over priors, score threshold, one
    class-aware NMS, cap at `max_detections`.
    """

    priors: Tensor

    def __init__(self, model: SSD, settings: InferenceSettings) -> None:
        super().__init__()
        self.net = TensorOutputs(model)
        self.register_buffer("priors", model.priors().detach().float().clone())
        self.settings = settings

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s = self.settings
        logits, deltas = self.net(images)
        num_priors, num_classes = logits.shape[1], logits.shape[2]
        scores = logits[0].float().softmax(dim=-1)[:, 1:]  # [P, C-1]
        boxes = decode(deltas[0].float(), self.priors, s.variances).clamp(0.0, 1.0)  # [P, 4]
        k = min(s.top_k, int(num_priors))
        top_scores, top_idx = scores.topk(k, dim=0)  # [k, C-1]
        cand_boxes = boxes[top_idx]  # [k, C-1, 4]
        labels = torch.arange(1, num_classes, device=logits.device)[None, :].expand(k, num_classes - 1)
        keep = (top_scores > s.score_threshold) & torch.isfinite(top_scores)
        keep = keep & torch.isfinite(cand_boxes).all(dim=-1)
        cand_boxes, top_scores, labels = cand_boxes[keep], top_scores[keep], labels[keep]
        kept = batched_nms(cand_boxes, top_scores, labels, s.nms_iou)[: s.max_detections]
        return cand_boxes[kept], top_scores[kept], labels[kept]


def export_onnx(
    model: SSD,
    path: str | Path,
    settings: InferenceSettings,
    *,
    with_nms: bool = False,
    opset: int = DEFAULT_OPSET,
    example_batch: int = 1,
) -> Path:
    """Export `model` (eval mode, CPU) to `path`: the network with a dynamic batch, or with
    `with_nms` the batch-1 `DetectionsModule`. Returns the written path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    size = settings.image_size
    example = torch.zeros(1 if with_nms else example_batch, 3, size, size)
    module: nn.Module
    if with_nms:
        module = DetectionsModule(model, settings).eval()
        output_names = ["boxes", "scores", "labels"]
        dynamic_axes: dict[str, dict[int, str]] = {name: {0: "detections"} for name in output_names}
    else:
        module = TensorOutputs(model).eval()
        output_names = ["cls_logits", "box_deltas"]
        dynamic_axes = {"images": {0: "batch"}, "cls_logits": {0: "batch"}, "box_deltas": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        # the legacy exporter announces its deprecation, and tracing warns about the
        # data-dependent shapes that the NMS graph has on purpose
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined, unused-ignore]
        warnings.simplefilter("ignore", category=UserWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            input_names=["images"],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    log.info("wrote %s (%s)", path, "with NMS, batch 1" if with_nms else "network, dynamic batch")
    return path


def _onnx_session(path: str | Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0


@dataclass(frozen=True)
class ImageCheck:
    """One image of an NMS-graph check: detection counts of PyTorch and ONNX Runtime, the largest
    box and score differences after matching, and whether they agree."""

    detections_torch: int
    detections_onnx: int
    max_abs_diff_boxes: float
    max_abs_diff_scores: float
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OnnxCheck:
    """The result of `verify_onnx`: the ONNX file, which graph, how many images, the largest
    difference and the tolerance it was held to, and `ok`. Network graph: also the largest
    difference per output and the largest reference magnitude; NMS graph: the largest box and
    score differences and each image's `ImageCheck`."""

    onnx: str
    with_nms: bool
    num_images: int
    max_abs_diff: float
    tolerance: float
    ok: bool
    max_abs_diff_per_output: dict[str, float] | None = None
    max_abs_reference: float | None = None
    max_abs_diff_boxes: float | None = None
    max_abs_diff_scores: float | None = None
    per_image: list[ImageCheck] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (the "verification" entry of the export report)."""
        out: dict[str, Any] = {
            "onnx": self.onnx,
            "with_nms": self.with_nms,
            "num_images": self.num_images,
            "max_abs_diff": self.max_abs_diff,
        }
        if self.with_nms:
            out["max_abs_diff_boxes"] = self.max_abs_diff_boxes
            out["max_abs_diff_scores"] = self.max_abs_diff_scores
            out["tolerance"] = self.tolerance
            out["per_image"] = [c.to_dict() for c in self.per_image or []]
        else:
            out["max_abs_diff_per_output"] = self.max_abs_diff_per_output
            out["max_abs_reference"] = self.max_abs_reference
            out["tolerance"] = self.tolerance
        out["ok"] = self.ok
        return out


def verify_onnx(
    path: str | Path,
    model: SSD,
    images: Tensor,
    settings: InferenceSettings,
    *,
    with_nms: bool = False,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    device: str | torch.device = "cpu",
) -> OnnxCheck:
    """Run the ONNX file with onnxruntime (CPU) and PyTorch (on `device`) on `images`
    [N, 3, S, S] (normalised) and compare.

    Network graph: one batch of N; `max_abs_diff` over logits and deltas, `ok` when every
    element is within `atol + rtol * max|reference|`. NMS graph: image by image; `ok` when each
    image gives the same number of detections with the same labels, and boxes / scores within
    `atol + rtol * max|reference|` after matching each detection to the nearest PyTorch one of the
    same class (near-equal scores may be ordered differently). Returns an `OnnxCheck`.
    """
    session = _onnx_session(path)
    dev = torch.device(device)
    model = model.eval().to(dev)
    images = images.float().cpu()
    num_images = int(images.shape[0])
    with torch.no_grad():
        if not with_nms:
            ref = [t.cpu().numpy() for t in TensorOutputs(model)(images.to(dev))]
            got = session.run(None, {"images": images.numpy()})
            diffs = {name: _max_abs(g, r) for name, g, r in zip(("cls_logits", "box_deltas"), got, ref)}
            scale = max(float(np.abs(r).max()) for r in ref)
            shapes_ok = all(g.shape == r.shape for g, r in zip(got, ref))
            return OnnxCheck(
                onnx=str(path),
                with_nms=False,
                num_images=num_images,
                max_abs_diff=max(diffs.values()),
                max_abs_diff_per_output=diffs,
                max_abs_reference=scale,
                tolerance=atol + rtol * scale,
                ok=shapes_ok and max(diffs.values()) <= atol + rtol * scale,
            )
        module = DetectionsModule(model, settings).eval()
        per_image: list[ImageCheck] = []
        worst_box = worst_score = 0.0
        all_ok = True
        for i in range(images.shape[0]):
            x = images[i : i + 1]
            rb, rs, rl = (t.cpu().numpy() for t in module(x.to(dev)))
            gb, gs, gl = session.run(None, {"images": x.numpy()})
            same_count = len(rs) == len(gs)
            same_labels = same_count and sorted(rl.tolist()) == sorted(gl.tolist())
            box_diff = score_diff = 0.0
            if same_count and len(rs):
                for j in range(len(gs)):
                    cand = np.flatnonzero(rl == gl[j])
                    if cand.size == 0:
                        same_labels = False
                        break
                    dist = np.abs(rb[cand].astype(np.float64) - gb[j]).max(axis=1)
                    best = cand[int(dist.argmin())]
                    box_diff = max(box_diff, float(dist.min()))
                    score_diff = max(score_diff, abs(float(rs[best]) - float(gs[j])))
            tol = atol + rtol  # boxes (relative) and scores lie in [0, 1]
            ok = same_count and same_labels and box_diff <= tol and score_diff <= tol
            all_ok &= ok
            worst_box, worst_score = max(worst_box, box_diff), max(worst_score, score_diff)
            per_image.append(ImageCheck(len(rs), len(gs), box_diff, score_diff, ok))
    return OnnxCheck(
        onnx=str(path),
        with_nms=True,
        num_images=num_images,
        max_abs_diff=max(worst_box, worst_score),
        max_abs_diff_boxes=worst_box,
        max_abs_diff_scores=worst_score,
        tolerance=atol + rtol,
        per_image=per_image,
        ok=all_ok,
    )
