"""Paired bootstrap of mAP differences over validation images.

A resample draws N images with replacement from the N validation images; an image drawn m times
counts m times: its detections, their TP/FP status (matching is within an image, so it does not
change) and its ground truth. Per class this is a weighted PR curve over the detections ranked
once (`ssd.evaluation.voc.match_detections`), so AP is recomputed for B resamples at once as
cumulative sums of weights, without re-matching. Giving a detection weight m is exactly the
same AP as m consecutive copies of it (a run of copies of one TP ends on its best point, a run
of FP copies never beats the point before it), so a resample's AP equals `evaluate_voc` on the
resampled image list (tested).

The *paired* interval uses the same resamples for both variants: what it measures is how much
the difference of the two mAPs depends on which images were drawn, with the trained networks
held fixed. Several training seeds per variant enter as the mean over seeds in every resample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ssd.evaluation.voc import ClassMatches

# Memory per chunk of resamples: about this many float64 elements per working array.
_CHUNK_ELEMENTS = 2_000_000


def resample_counts(num_images: int, resamples: int, seed: int) -> np.ndarray:
    """[B, N] int64: how often each of N images is drawn in each of B bootstrap resamples
    (N draws with replacement each), from a seeded numpy generator."""
    if num_images < 1 or resamples < 1:
        raise ValueError(f"need num_images >= 1 and resamples >= 1, got {num_images}, {resamples}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_images, size=(resamples, num_images))
    flat = draws + (np.arange(resamples) * num_images)[:, None]
    return np.bincount(flat.ravel(), minlength=resamples * num_images).reshape(resamples, num_images)


def _ap_rows(tp_cum: np.ndarray, fp_cum: np.ndarray, npos: np.ndarray, metric: str) -> np.ndarray:
    """AP per row of cumulative TP / FP weights [b, D] with `npos` [b] positives (NaN where 0)."""
    b, d = tp_cum.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = tp_cum + fp_cum
        prec = np.where(denom > 0, tp_cum / np.where(denom > 0, denom, 1.0), 0.0)
        rec = tp_cum / np.where(npos > 0, npos, 1.0)[:, None]
    if metric == "voc07":
        # envelope: max precision at any later point; AP = mean over t of it at the first rec >= t
        env = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
        out = np.zeros(b)
        for k in range(11):
            first = (rec < k / 10.0).sum(axis=1)  # rec is non-decreasing along a row
            ok = first < d
            vals = np.zeros(b)
            vals[ok] = env[np.nonzero(ok)[0], first[ok]]
            out += vals
        out /= 11.0
    elif metric == "area":
        mrec = np.concatenate([np.zeros((b, 1)), rec, np.ones((b, 1))], axis=1)
        mpre = np.concatenate([np.zeros((b, 1)), prec, np.zeros((b, 1))], axis=1)
        env = np.maximum.accumulate(mpre[:, ::-1], axis=1)[:, ::-1]
        out = ((mrec[:, 1:] - mrec[:, :-1]) * env[:, 1:]).sum(axis=1)
    else:
        raise ValueError(f"metric must be 'voc07' or 'area', got {metric!r}")
    return np.where(npos > 0, out, np.nan)


def resampled_class_ap(m: ClassMatches, counts: np.ndarray, metric: str = "voc07") -> np.ndarray:
    """[B] AP of one class under each resample `counts` [B, N] (NaN where a resample holds no
    ground truth of the class)."""
    counts = np.asarray(counts)
    bsz = counts.shape[0]
    npos = (counts @ m.num_gt.astype(np.int64)).astype(np.float64)
    d = int(m.tp.shape[0])
    if d == 0:
        return np.where(npos > 0, 0.0, np.nan)
    tp = m.tp.astype(np.float64)
    out = np.empty(bsz)
    step = max(1, _CHUNK_ELEMENTS // d)
    for start in range(0, bsz, step):
        w = counts[start : start + step][:, m.image].astype(np.float64)  # [b, D]
        tp_cum = np.cumsum(w * tp, axis=1)
        fp_cum = np.cumsum(w * (1.0 - tp), axis=1)
        out[start : start + step] = _ap_rows(tp_cum, fp_cum, npos[start : start + step], metric)
    return out


def resampled_map(
    matches: Mapping[str, ClassMatches], counts: np.ndarray, metric: str = "voc07"
) -> np.ndarray:
    """[B] mAP under each resample: the mean AP over the classes with ground truth in it."""
    aps = np.stack([resampled_class_ap(m, counts, metric) for m in matches.values()])  # [K, B]
    valid = ~np.isnan(aps)
    n = valid.sum(axis=0)
    total = np.where(valid, aps, 0.0).sum(axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def paired_interval(
    variant: Sequence[np.ndarray], reference: Sequence[np.ndarray], level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of mean_s(variant_s) - mean_s(reference_s) over the resamples, where
    both are lists (one per training seed) of [B] resampled mAPs computed on the same counts."""
    diff = np.mean(np.stack(list(variant)), axis=0) - np.mean(np.stack(list(reference)), axis=0)
    diff = diff[~np.isnan(diff)]
    if diff.size == 0:
        return (math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(diff, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def verdict(ci: Sequence[float]) -> str:
    """What the interval allows one to say: "better" (all above 0), "worse" (all below 0) or
    "no detectable difference" (it contains 0)."""
    lo, hi = float(ci[0]), float(ci[1])
    if math.isnan(lo) or math.isnan(hi):
        return "no detectable difference"
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "no detectable difference"


@dataclass(frozen=True)
class BootstrapSummary:
    """How the intervals were made, for the report."""

    resamples: int
    seed: int
    level: float = 0.95
    method: str = "paired percentile"

    def to_dict(self) -> dict[str, object]:
        return {"resamples": self.resamples, "seed": self.seed, "level": self.level, "method": self.method}


def bootstrap_summary(resamples: int, seed: int, level: float = 0.95) -> BootstrapSummary:
    """How the intervals were made, for the report."""
    return BootstrapSummary(int(resamples), int(seed), float(level))
