"""Sliced inference: every window of a tiling (`ssd.data.tiling`) through the network as one
batch, detections mapped back to original pixels and merged.

Pipeline per call: crop each window of each uint8 image and warp it to S x S (antialiased, on the
device; plus the whole image when `tiling.full_image`) -> one network batch [T, 3, S, S] ->
`ssd.postprocess.postprocess` per window (boxes in window pixels, clipped to the window) -> shift
by the window origin -> merge per image and class -> Detections (xyxy, original pixels, sorted by
score, at most `max_detections`).

Merge ("seam", the default; "nms" is step 3 alone):
1. Seam join. A detection *touches a seam* on a side when that side of its box lies within
   `margin` (a share of the window size) of its window's border and that border is inside the
   image. Two same-class detections of horizontally neighbouring windows, the left one touching
   its right seam and the right one its left seam, that overlap (or meet) in x and whose y
   extents have 1-D IoU >= `seam_iou`, are pieces of one object (likewise vertically, with x);
   pieces are joined transitively (a band across three windows is three pieces) into their union
   box with the highest score. NMS alone cannot do this: the pieces of a full-width band cut by
   two seams overlap only in the window overlaps (IoU ~0.1), so every piece would survive as a
   false positive and none would match the band at IoU 0.5.
2. Absorb. A piece touching a seam whose area lies for >= `cover` inside a same-class
   detection of another window that touches no seam, or a joined box (the object seen whole
   there), is dropped; that detection keeps the higher of the two scores.
3. `torchvision.ops.batched_nms` per class at the postprocess IoU, then the per-image cap.

Why not the `sahi` library: it runs a detector one slice (or a fixed slice batch) at a time
through its own model wrappers and merges Python `ObjectPrediction` lists; its merges (NMS, NMM,
greedy NMM on intersection over smaller) either keep band pieces apart or merge any overlapping
pair of one class (clusters of small bubbles become one box); and it pulls in OpenCV, shapely,
fire and requests. The geometry here is a few hundred lines of torch, batches all windows of a
batch of images in one forward pass, and shares the clipping rule with training and the prior
tools.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision.ops import batched_nms

from ssd.config import Config
from ssd.data.records import DatasetError, Record
from ssd.data.tiling import Tiling
from ssd.inference.settings import InferenceSettings
from ssd.modeling.ssd import SSD
from ssd.structures import Detections, HeadOutputs

SEAM_MARGIN = 0.03  # share of the window size within which a box side "touches" a window border
SEAM_IOU = 0.5  # 1-D IoU across the seam for two pieces to be joined
ABSORB_COVER = 0.7  # share of a cut piece inside another window's detection for it to be absorbed


# --------------------------------------------------------------------------- inputs


def tile_inputs(
    images: Sequence[Tensor],
    windows: Sequence[Tensor],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
) -> Tensor:
    """uint8 [3, H, W] images and their windows ([T_i, 4] xyxy, integer original pixels) ->
    normalised float [sum T_i, 3, size, size]: each window cropped and warped (antialiased) on
    `device`, exactly as `ssd.inference.detector.preprocess` treats a whole image."""
    crops = []
    for img, wins in zip(images, windows):
        x = img.to(device, non_blocking=True)
        for x0, y0, x1, y1 in wins.to(torch.int64).tolist():
            crops.append(TF.resize(x[:, y0:y1, x0:x1], [size, size], antialias=True))
    batch = torch.stack(crops).float().div_(255.0)
    out: Tensor = TF.normalize(batch, list(mean), list(std))
    return out


# --------------------------------------------------------------------------- merge


def seam_flags(boxes: Tensor, windows: Tensor, width: float, height: float, margin: float) -> Tensor:
    """[K, 4] bool (left, top, right, bottom): the box side touches a border of its window
    (`windows` [K, 4], each detection's own) that lies inside the image."""
    ww = windows[:, 2] - windows[:, 0]
    wh = windows[:, 3] - windows[:, 1]
    left = (windows[:, 0] > 0) & (boxes[:, 0] <= windows[:, 0] + margin * ww)
    top = (windows[:, 1] > 0) & (boxes[:, 1] <= windows[:, 1] + margin * wh)
    right = (windows[:, 2] < width) & (boxes[:, 2] >= windows[:, 2] - margin * ww)
    bottom = (windows[:, 3] < height) & (boxes[:, 3] >= windows[:, 3] - margin * wh)
    return torch.stack([left, top, right, bottom], dim=1)


def _iou_1d(a0: Tensor, a1: Tensor, b0: Tensor, b1: Tensor) -> Tensor:
    """Pairwise 1-D IoU of intervals [a0, a1] ([K]) and [b0, b1] ([K]) -> [K, K]."""
    inter = (torch.minimum(a1[:, None], b1[None, :]) - torch.maximum(a0[:, None], b0[None, :])).clamp(min=0)
    union = (a1 - a0)[:, None] + (b1 - b0)[None, :] - inter
    return inter / union.clamp(min=1e-9)


def _components(adj: Tensor) -> Tensor:
    """Connected components of a symmetric boolean [K, K] graph: [K] smallest member index."""
    k = adj.shape[0]
    comp = torch.arange(k, device=adj.device)
    big = torch.full((k, k), k, device=adj.device, dtype=comp.dtype)
    while True:
        nxt = torch.minimum(comp, torch.where(adj, comp[None, :].expand(k, k), big).min(dim=1).values)
        nxt = nxt[nxt]  # pointer jumping: converges in O(log K) rounds on chains
        if torch.equal(nxt, comp):
            return comp
        comp = nxt


def merge_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    tiles: Tensor,
    windows: Tensor,
    image_size: tuple[int, int],
    *,
    nms_iou: float = 0.45,
    max_detections: int = 200,
    seam: bool = True,
    margin: float = SEAM_MARGIN,
    seam_iou: float = SEAM_IOU,
    cover: float = ABSORB_COVER,
) -> Detections:
    """Merge the detections of one image gathered from its windows (see the module docstring).

    `boxes` [K, 4] xyxy original pixels, `scores` [K], `labels` [K], `tiles` [K] index into
    `windows` [T, 4] (xyxy original pixels), `image_size` (height, width). With `seam=False`
    only batched NMS runs. Returns Detections sorted by score, at most `max_detections`."""
    height, width = float(image_size[0]), float(image_size[1])
    boxes, scores = boxes.float(), scores.float()
    if seam and boxes.shape[0] > 1:
        boxes, scores, labels = _seam_join(
            boxes, scores, labels, tiles, windows, width, height, margin, seam_iou, cover
        )
    keep = batched_nms(boxes, scores, labels, nms_iou)[:max_detections]  # sorted by score
    return Detections(boxes[keep], scores[keep], labels[keep])


def _seam_join(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    tiles: Tensor,
    windows: Tensor,
    width: float,
    height: float,
    margin: float,
    seam_iou: float,
    cover: float,
) -> tuple[Tensor, Tensor, Tensor]:
    win = windows[tiles].float()
    flags = seam_flags(boxes, win, width, height, margin)
    same = (labels[:, None] == labels[None, :]) & (tiles[:, None] != tiles[None, :])
    x0, y0, x1, y1 = boxes.unbind(1)
    wx0, wy0, wx1, wy1 = win.unbind(1)
    tol_x = margin * (wx1 - wx0)
    tol_y = margin * (wy1 - wy0)
    rows_meet = torch.minimum(wy1[:, None], wy1[None, :]) > torch.maximum(wy0[:, None], wy0[None, :])
    cols_meet = torch.minimum(wx1[:, None], wx1[None, :]) > torch.maximum(wx0[:, None], wx0[None, :])
    # i left of j across a vertical seam
    horiz = (
        same
        & flags[:, 2][:, None]
        & flags[:, 0][None, :]
        & (wx0[None, :] > wx0[:, None])
        & (wx0[None, :] < wx1[:, None])
        & rows_meet
        & (x0[None, :] <= x1[:, None] + tol_x[:, None])
        & (_iou_1d(y0, y1, y0, y1) >= seam_iou)
    )
    # i above j across a horizontal seam
    vert = (
        same
        & flags[:, 3][:, None]
        & flags[:, 1][None, :]
        & (wy0[None, :] > wy0[:, None])
        & (wy0[None, :] < wy1[:, None])
        & cols_meet
        & (y0[None, :] <= y1[:, None] + tol_y[:, None])
        & (_iou_1d(x0, x1, x0, x1) >= seam_iou)
    )
    adj = horiz | vert
    adj = adj | adj.T
    comp = _components(adj)
    roots, comp_idx = torch.unique(comp, return_inverse=True)
    n = roots.shape[0]
    idx4 = comp_idx[:, None].expand(-1, 4)
    lo = torch.full((n, 4), float("inf"), device=boxes.device).scatter_reduce(0, idx4, boxes, "amin")
    hi = torch.full((n, 4), float("-inf"), device=boxes.device).scatter_reduce(0, idx4, boxes, "amax")
    merged = torch.cat([lo[:, :2], hi[:, 2:]], dim=1)
    m_scores = torch.zeros(n, device=boxes.device).scatter_reduce(
        0, comp_idx, scores, "amax", include_self=False
    )
    m_labels = labels[roots]
    size = torch.bincount(comp_idx, minlength=n)
    # a joined piece counts as its own "window" (never equal to a real one); singles keep theirs
    m_tiles = torch.where(size > 1, -1 - torch.arange(n, device=boxes.device), tiles[roots])
    any_flag = flags.any(dim=1).to(torch.int64)
    m_cut = (
        torch.zeros(n, dtype=torch.int64, device=boxes.device).scatter_reduce(
            0, comp_idx, any_flag, "amax", include_self=False
        )
        > 0
    ) & (size == 1)
    return _absorb(merged, m_scores, m_labels, m_tiles, m_cut, cover)


def _absorb(
    boxes: Tensor, scores: Tensor, labels: Tensor, tiles: Tensor, cut: Tensor, cover: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Drop single pieces touching a seam that lie (>= `cover` of their area) inside a same-class
    detection of another window; the covering detection keeps the higher score."""
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)  # [K, K]
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)
    inside = inter / area[:, None].clamp(min=1e-9) >= cover  # [j, i]: j mostly inside i
    ok = (
        cut[:, None]
        & ~cut[None, :]
        & inside
        & (labels[:, None] == labels[None, :])
        & (tiles[:, None] != tiles[None, :])
        & ~torch.eye(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    )
    # a piece is absorbed by the largest covering detection; only uncut detections (or joined
    # pieces) cover, so no two pieces absorb each other
    absorbed = ok.any(dim=1)
    if not bool(absorbed.any()):
        return boxes, scores, labels
    cov_area = torch.where(ok, area[None, :].expand_as(ok), torch.full_like(inter, -1.0))
    target = cov_area.argmax(dim=1)
    scores = scores.clone()
    j = absorbed.nonzero().squeeze(1)
    scores.scatter_reduce_(0, target[j], scores[j], "amax")
    keep = ~absorbed
    return boxes[keep], scores[keep], labels[keep]


# --------------------------------------------------------------------------- predictor


@dataclass
class SlicedPredictor:
    """`predictor(images uint8 [3, H, W] list) -> list[Detections]` (xyxy, original pixels).

    `model` maps [T, 3, S, S] to HeadOutputs; `priors` [P, 4] cxcywh relative. `last_num_tiles`
    is the number of windows of the last call (for tiles/s)."""

    model: Callable[[Tensor], HeadOutputs]
    priors: Tensor
    tiling: Tiling
    settings: InferenceSettings
    device: torch.device
    seam: bool = True
    last_num_tiles: int = 0

    @torch.inference_mode()
    def __call__(self, images: Sequence[Tensor]) -> list[Detections]:
        if not images:
            return []
        windows = [self.tiling.windows(int(im.shape[-1]), int(im.shape[-2])) for im in images]
        st = self.settings
        x = tile_inputs(images, windows, st.image_size, st.mean, st.std, self.device)
        all_windows = torch.cat(windows).to(self.device)
        self.last_num_tiles = int(all_windows.shape[0])
        outputs = self.model(x)
        sizes = torch.stack([all_windows[:, 3] - all_windows[:, 1], all_windows[:, 2] - all_windows[:, 0]], 1)
        per_tile = st.postprocess(outputs, self.priors.to(self.device), sizes)
        results, t = [], 0
        for im, wins in zip(images, windows):
            n = int(wins.shape[0])
            dets = per_tile[t : t + n]
            offsets = all_windows[t : t + n, :2].repeat(1, 2)
            boxes = torch.cat([d.boxes + offsets[i] for i, d in enumerate(dets)])
            scores = torch.cat([d.scores for d in dets])
            labels = torch.cat([d.labels for d in dets])
            tiles = torch.cat(
                [torch.full((len(d),), i, dtype=torch.long, device=boxes.device) for i, d in enumerate(dets)]
            )
            results.append(
                merge_detections(
                    boxes,
                    scores,
                    labels,
                    tiles,
                    all_windows[t : t + n],
                    (int(im.shape[-2]), int(im.shape[-1])),
                    nms_iou=st.nms_iou,
                    max_detections=st.max_detections,
                    seam=self.seam,
                )
            )
            t += n
        return results


def build_sliced_predictor(cfg: Config, model: SSD, device: torch.device) -> SlicedPredictor:
    """The sliced predictor of `cfg.input.tiling` around an SSD `model` (its own priors, frozen)."""
    return SlicedPredictor(
        model=model,
        priors=model.priors().detach(),
        tiling=Tiling.from_config(cfg.input.tiling),
        settings=InferenceSettings.from_config(cfg),
        device=torch.device(device),
        seam=cfg.input.tiling.merge == "seam",
    )


# --------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def predict_split_tiled(
    model: SSD,
    cfg: Config,
    split: str,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Detections], list[Record], list[DatasetError]]:
    """Sliced detections (xyxy, original pixels, on the CPU) for every image of a split that can
    be read, by image id; `eval.batch_size` images (all their windows) per forward pass. Also
    the records of the images read (loader order) and the DatasetError of each image left out
    (`data.skip_invalid`; without it the first unreadable image raises its DatasetError)."""
    from ssd.data.loader import LoadFailure, build_eval_loader

    was_training = model.training
    model.eval()
    loader = build_eval_loader(cfg, split, raw=True)
    records: list[Record] = loader.dataset.records  # type: ignore[attr-defined]
    skipped: list[DatasetError] = list(loader.dataset.left_out)  # type: ignore[attr-defined]
    predictor = build_sliced_predictor(cfg, model, device)
    out: dict[str, Detections] = {}
    try:
        for items in loader:
            failures = [s for s in items if isinstance(s, LoadFailure)]
            for f in failures:
                if not f.skipped:
                    raise f.error
                skipped.append(f.error)
            samples = [s for s in items if not isinstance(s, LoadFailure)]
            if samples:
                dets = predictor([s.image for s in samples])
                for s, d in zip(samples, dets):
                    out[s.image_id] = d.to("cpu")
            if progress is not None:
                progress(len(items))
    finally:
        model.train(was_training)
    return out, [r for r in records if r.image_id in out], skipped
