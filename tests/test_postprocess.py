"""Postprocess: per-class NMS, caps, thresholds, rescaling, NaN safety, and a loop oracle."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import nms

from ssd.boxes import cxcywh_to_xyxy
from ssd.postprocess import postprocess
from ssd.priors.coder import decode
from ssd.structures import Detections, HeadOutputs

V = (0.1, 0.2)


def outputs_from_probs(probs: torch.Tensor, deltas: torch.Tensor | None = None) -> HeadOutputs:
    """Logits whose softmax is `probs` [B, P, C]; zero deltas unless given (boxes = priors)."""
    if deltas is None:
        deltas = torch.zeros(*probs.shape[:2], 4)
    return HeadOutputs(probs.log(), deltas)


def probs_for(classes_scores: list[dict[int, float]], num_classes: int) -> torch.Tensor:
    """[1, P, C] probabilities: the listed (class: score) per prior, the rest on background."""
    rows = []
    for entry in classes_scores:
        row = torch.zeros(num_classes)
        for c, s in entry.items():
            row[c] = s
        row[0] = 1.0 - row.sum()
        rows.append(row)
    return torch.stack(rows)[None]


def loop_postprocess(
    outputs: HeadOutputs,
    priors: torch.Tensor,
    orig_sizes: torch.Tensor,
    score_threshold: float,
    nms_iou: float,
    top_k: int,
    max_detections: int,
) -> list[Detections]:
    """Oracle: per image, per class: threshold, top-k, torchvision.ops.nms; then merge and cap."""
    results = []
    for b in range(outputs.cls_logits.shape[0]):
        probs = outputs.cls_logits[b].float().softmax(-1)
        boxes = decode(outputs.box_deltas[b].float(), priors, V).clamp(0, 1)
        found: list[tuple[float, int, torch.Tensor]] = []
        for c in range(1, probs.shape[1]):
            s = probs[:, c]
            ok = (s > score_threshold) & torch.isfinite(s) & torch.isfinite(boxes).all(dim=1)
            idx = ok.nonzero().flatten()
            idx = idx[s[idx].argsort(descending=True)][:top_k]
            keep = nms(boxes[idx], s[idx], nms_iou)
            found += [(float(s[i]), c, boxes[i]) for i in idx[keep]]
        found.sort(key=lambda t: -t[0])
        found = found[:max_detections]
        h, w = orig_sizes[b].tolist()
        scale = torch.tensor([w, h, w, h])
        results.append(
            Detections(
                torch.stack([f[2] * scale for f in found]) if found else torch.zeros(0, 4),
                torch.tensor([f[0] for f in found]),
                torch.tensor([f[1] for f in found], dtype=torch.long),
            )
        )
    return results


def test_batched_postprocess_equals_loop_oracle() -> None:
    g = torch.Generator().manual_seed(0)
    bsz, num_p, num_c = 3, 300, 5
    priors = torch.cat([torch.rand(num_p, 2, generator=g), torch.rand(num_p, 2, generator=g) * 0.3 + 0.05], 1)
    logits = torch.randn(bsz, num_p, num_c, generator=g) * 2.5
    logits[2, :, 0] += 20.0  # image 2: everything is background
    deltas = torch.randn(bsz, num_p, 4, generator=g) * 0.5
    outputs = HeadOutputs(logits, deltas)
    sizes = torch.tensor([[300.0, 800.0], [512.0, 512.0], [1920.0, 2560.0]])
    kw = dict(score_threshold=0.2, nms_iou=0.45, top_k=40, max_detections=60)
    got = postprocess(outputs, priors, sizes, V, **kw)  # type: ignore[arg-type]
    want = loop_postprocess(outputs, priors, sizes, **kw)  # type: ignore[arg-type]
    assert len(got) == bsz
    assert len(want[0]) > 20 and len(want[1]) > 20 and len(want[2]) == 0
    assert len(want[0]) == 60 or len(want[1]) == 60  # the cap is exercised
    for a, b in zip(got, want):
        assert len(a) == len(b)
        torch.testing.assert_close(a.scores, b.scores)
        assert torch.equal(a.labels, b.labels)
        torch.testing.assert_close(a.boxes, b.boxes)
        assert (a.scores[:-1] >= a.scores[1:]).all()  # sorted by decreasing score


def test_nms_is_per_class() -> None:
    # priors 0 and 1 overlap heavily (IoU 0.9); prior 2 is elsewhere
    priors = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.31, 0.3, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]])
    sizes = torch.tensor([[100.0, 100.0]])
    kw = dict(score_threshold=0.2, nms_iou=0.45)
    different = probs_for([{1: 0.9}, {2: 0.8}, {1: 0.7}], 3)
    dets = postprocess(outputs_from_probs(different), priors, sizes, V, **kw)[0]  # type: ignore[arg-type]
    assert dets.labels.tolist() == [1, 2, 1]
    assert dets.scores.tolist() == pytest.approx([0.9, 0.8, 0.7])
    same = probs_for([{1: 0.9}, {1: 0.8}, {1: 0.7}], 3)
    dets = postprocess(outputs_from_probs(same), priors, sizes, V, **kw)[0]  # type: ignore[arg-type]
    assert dets.labels.tolist() == [1, 1]
    assert dets.scores.tolist() == pytest.approx([0.9, 0.7])
    torch.testing.assert_close(dets.boxes[0], torch.tensor([20.0, 20.0, 40.0, 40.0]))
    # one prior may yield detections of two classes
    both = probs_for([{1: 0.45, 2: 0.4}], 3)
    dets = postprocess(outputs_from_probs(both), priors[:1], sizes, V, **kw)[0]  # type: ignore[arg-type]
    assert dets.labels.tolist() == [1, 2]


def grid_priors(n: int) -> torch.Tensor:
    """n x n disjoint priors (cxcywh relative)."""
    c = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack(
        [cx.flatten(), cy.flatten(), torch.full((n * n,), 0.5 / n), torch.full((n * n,), 0.5 / n)], 1
    )


def test_max_detections_cap_keeps_the_best() -> None:
    priors = grid_priors(8)  # 64 disjoint boxes
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(64, generator=g) * 0.5 + 0.4
    probs = torch.stack([1 - scores, scores], dim=1)[None]
    dets = postprocess(outputs_from_probs(probs), priors, torch.tensor([[64.0, 64.0]]), V, max_detections=7)
    assert len(dets[0]) == 7
    torch.testing.assert_close(dets[0].scores, scores.sort(descending=True).values[:7])
    # the cap is per image: a second image gets its own 7
    two = postprocess(
        outputs_from_probs(probs.repeat(2, 1, 1)),
        priors,
        torch.tensor([[64.0, 64.0]] * 2),
        V,
        max_detections=7,
    )
    assert [len(d) for d in two] == [7, 7]


def test_top_k_per_class_before_nms() -> None:
    priors = grid_priors(6)
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(36, 2, generator=g) * 0.2 + 0.3  # two classes, all above the threshold
    probs = torch.cat([1 - scores.sum(1, keepdim=True), scores], dim=1)[None]
    dets = postprocess(outputs_from_probs(probs), priors, torch.tensor([[10.0, 10.0]]), V, top_k=5)[0]
    assert (dets.labels == 1).sum() == 5 and (dets.labels == 2).sum() == 5
    torch.testing.assert_close(dets.scores[dets.labels == 1], scores[:, 0].sort(descending=True).values[:5])


def test_score_threshold_is_strict() -> None:
    priors = grid_priors(2)
    probs = probs_for([{1: 0.5}, {1: 0.3}, {1: 0.30001}, {1: 0.1}], 2)
    dets = postprocess(outputs_from_probs(probs), priors, torch.tensor([[2.0, 2.0]]), V, score_threshold=0.3)[
        0
    ]
    assert dets.scores.tolist() == pytest.approx([0.5, 0.30001])
    assert (dets.scores > 0.3).all()


def test_rescale_to_non_square_original_pixels_and_clip() -> None:
    priors = torch.tensor([[0.3, 0.4, 0.2, 0.4], [0.95, 0.5, 0.3, 0.2]])
    probs = probs_for([{1: 0.9}, {2: 0.8}], 3)
    sizes = torch.tensor([[300.0, 800.0], [1920.0, 2560.0]])  # (height, width)
    dets = postprocess(outputs_from_probs(probs.repeat(2, 1, 1)), priors, sizes, V)
    # prior 0: xyxy relative (0.2, 0.2, 0.4, 0.6); prior 1 crosses the right border: x2 -> 1.0
    torch.testing.assert_close(
        dets[0].boxes, torch.tensor([[160.0, 60.0, 320.0, 180.0], [640.0, 120.0, 800.0, 180.0]])
    )
    torch.testing.assert_close(
        dets[1].boxes, torch.tensor([[512.0, 384.0, 1024.0, 1152.0], [2048.0, 768.0, 2560.0, 1152.0]])
    )


def test_nan_logits_and_deltas_do_not_crash_nor_leak() -> None:
    g = torch.Generator().manual_seed(3)
    num_p = 50
    priors = torch.cat([torch.rand(num_p, 2, generator=g), torch.full((num_p, 2), 0.1)], 1)
    logits = torch.randn(3, num_p, 3, generator=g) * 3
    deltas = torch.randn(3, num_p, 4, generator=g) * 0.1
    logits[0] = float("nan")  # a whole image of NaN
    logits[1, :10] = float("nan")  # some priors
    logits[1, 10:15, 1] = float("inf")
    deltas[1, 15:25] = float("nan")  # some boxes
    deltas[1, 25:30, 2:] = float("inf")
    dets = postprocess(
        HeadOutputs(logits, deltas), priors, torch.tensor([[100.0, 200.0]] * 3), V, score_threshold=0.05
    )
    assert len(dets[0]) == 0 and dets[0].boxes.shape == (0, 4)
    assert len(dets[1]) > 0 and len(dets[2]) > 0
    for d in dets:
        assert torch.isfinite(d.boxes).all() and torch.isfinite(d.scores).all()
        assert (d.labels >= 1).all()
    # image 2 (clean) is unaffected by its neighbours
    alone = postprocess(
        HeadOutputs(logits[2:], deltas[2:]), priors, torch.tensor([[100.0, 200.0]]), V, score_threshold=0.05
    )
    torch.testing.assert_close(dets[2].boxes, alone[0].boxes)
    torch.testing.assert_close(dets[2].scores, alone[0].scores)


def test_nothing_above_threshold_gives_empty_detections() -> None:
    priors = grid_priors(3)
    probs = probs_for([{1: 0.001}] * 9, 2).repeat(2, 1, 1)
    dets = postprocess(outputs_from_probs(probs), priors, torch.tensor([[5.0, 5.0]] * 2), V)
    assert [len(d) for d in dets] == [0, 0]
    assert dets[0].boxes.shape == (0, 4) and dets[0].labels.dtype == torch.long


def test_zero_deltas_decode_to_the_prior_boxes() -> None:
    priors = grid_priors(2)
    probs = probs_for([{1: 0.9}, {1: 0.8}, {1: 0.7}, {1: 0.6}], 2)
    dets = postprocess(outputs_from_probs(probs), priors, torch.tensor([[1.0, 1.0]]), V)[0]
    torch.testing.assert_close(dets.boxes, cxcywh_to_xyxy(priors))
