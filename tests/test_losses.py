"""MultiBox loss: hard-negative mining against a loop oracle, normalisation, empty images."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssd.losses import MultiBoxLoss, hard_negative_mask
from ssd.priors.coder import encode
from ssd.priors.matcher import match
from ssd.structures import HeadOutputs, Targets

V = (0.1, 0.2)


def loop_hard_negatives(ce: torch.Tensor, positive: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per image: sort the background priors by loss (descending, ties by index) and keep the
    first floor(ratio * num_pos) of them."""
    out = torch.zeros_like(positive)
    for b in range(ce.shape[0]):
        num_pos = int(positive[b].sum())
        background = [j for j in range(ce.shape[1]) if not positive[b, j]]
        background.sort(key=lambda j: (-float(ce[b, j]), j))
        num_neg = min(math.floor(ratio * num_pos), len(background))
        for j in background[:num_neg]:
            out[b, j] = True
    return out


@pytest.mark.parametrize("ratio", [3.0, 0.5, 1.7, 100.0, 0.0])
def test_hard_negative_mask_equals_loop_oracle(ratio: float) -> None:
    g = torch.Generator().manual_seed(int(ratio * 10))
    for _ in range(5):
        ce = torch.rand(4, 50, generator=g) * 5
        positive = torch.rand(4, 50, generator=g) < torch.tensor([[0.1], [0.0], [0.5], [0.02]])
        mask = hard_negative_mask(ce, positive, ratio)
        assert torch.equal(mask, loop_hard_negatives(ce, positive, ratio))
        assert not (mask & positive).any()
        assert not mask[1].any()  # an image without positives keeps no negatives


def test_hard_negative_count_with_ties() -> None:
    ce = torch.ones(2, 20)
    positive = torch.zeros(2, 20, dtype=torch.bool)
    positive[0, :3] = True  # 3 positives -> 9 negatives
    positive[1, :6] = True  # 6 positives -> 18, but only 14 background priors
    mask = hard_negative_mask(ce, positive, 3.0)
    assert mask.sum(dim=1).tolist() == [9, 14]
    assert torch.equal(mask, loop_hard_negatives(ce, positive, 3.0))


def test_hard_negatives_pick_the_highest_losses() -> None:
    ce = torch.tensor([[0.1, 5.0, 0.2, 4.0, 9.0, 3.0, 0.3, 8.0]])
    positive = torch.tensor([[False, False, False, False, True, False, False, False]])
    mask = hard_negative_mask(ce, positive, 3.0)
    assert mask[0].nonzero().flatten().tolist() == [1, 3, 7]  # 5, 4, 8 (prior 4 is positive)


# --------------------------------------------------------------------------- MultiBoxLoss


def make_case(
    seed: int, batch: int = 3, num_priors: int = 80, num_classes: int = 4, requires_grad: bool = False
) -> tuple[HeadOutputs, Targets, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(num_priors, 2, generator=g)
    sizes = torch.rand(num_priors, 2, generator=g) * 0.4 + 0.1
    priors = torch.cat([centres, sizes], dim=1)
    boxes, labels = [], []
    for i in range(batch):
        n = 0 if i == 1 else 1 + i  # image 1 has no ground truth
        xy = torch.rand(n, 2, generator=g) * 0.6
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.1
        boxes.append(torch.cat([xy, xy + wh], dim=1))
        labels.append(torch.randint(1, num_classes, (n,), generator=g))
    logits = torch.randn(batch, num_priors, num_classes, generator=g, requires_grad=requires_grad)
    deltas = torch.randn(batch, num_priors, 4, generator=g, requires_grad=requires_grad)
    return HeadOutputs(logits, deltas), Targets(boxes, labels), priors


def loop_loss(
    outputs: HeadOutputs, targets: Targets, priors: torch.Tensor, ratio: float = 3.0
) -> tuple[float, float, int]:
    """The MultiBox loss image by image with plain loops (matching from the tested matcher)."""
    loc_sum, cls_sum, num_pos = 0.0, 0.0, 0
    for b in range(outputs.cls_logits.shape[0]):
        m = match([targets.boxes[b]], [targets.labels[b]], priors, 0.5)
        labels = m.labels[0]
        pos = [j for j in range(len(labels)) if labels[j] > 0]
        num_pos += len(pos)
        for j in pos:
            target = encode(m.boxes[0, j], priors[j], V)
            loc_sum += float(F.smooth_l1_loss(outputs.box_deltas[b, j], target, reduction="sum"))
        ce = [
            float(F.cross_entropy(outputs.cls_logits[b, j][None], labels[j][None]))
            for j in range(len(labels))
        ]
        negatives = sorted((j for j in range(len(labels)) if labels[j] == 0), key=lambda j: -ce[j])
        chosen = pos + negatives[: min(int(ratio * len(pos)), len(negatives))]
        cls_sum += sum(ce[j] for j in chosen)
    n = max(num_pos, 1)
    return loc_sum / n, cls_sum / n, num_pos


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multibox_loss_equals_loop_oracle(seed: int) -> None:
    outputs, targets, priors = make_case(seed)
    result = MultiBoxLoss()(outputs, targets, priors)
    loc, cls, num_pos = loop_loss(outputs, targets, priors)
    assert int(result.num_pos) == num_pos > 0
    assert float(result.loc) == pytest.approx(loc, rel=1e-5)
    assert float(result.cls) == pytest.approx(cls, rel=1e-5)
    assert float(result.total) == pytest.approx(loc + cls, rel=1e-5)


def test_loc_weight_scales_only_the_localisation_term() -> None:
    outputs, targets, priors = make_case(4)
    base = MultiBoxLoss()(outputs, targets, priors)
    weighted = MultiBoxLoss(loc_weight=2.5)(outputs, targets, priors)
    assert float(weighted.total) == pytest.approx(2.5 * float(base.loc) + float(base.cls), rel=1e-6)


def test_loss_is_normalised_by_the_number_of_positives() -> None:
    outputs, targets, priors = make_case(5)
    single = MultiBoxLoss()(outputs, targets, priors)
    # the same batch twice: sums and positives both double, the loss stays the same
    doubled_out = HeadOutputs(outputs.cls_logits.repeat(2, 1, 1), outputs.box_deltas.repeat(2, 1, 1))
    doubled_tg = Targets(targets.boxes * 2, targets.labels * 2)
    double = MultiBoxLoss()(doubled_out, doubled_tg, priors)
    assert int(double.num_pos) == 2 * int(single.num_pos)
    assert float(double.total) == pytest.approx(float(single.total), rel=1e-5)
    # and it is a sum over positives divided by their number: perfect boxes give zero loc loss,
    # one positive off by exactly 1 in dcx (smooth L1 = 0.5) gives 0.5 / num_pos
    m = single.match
    pos = m.labels > 0
    perfect = torch.zeros_like(outputs.box_deltas)
    perfect[pos] = encode(m.boxes[pos], priors.expand_as(perfect)[pos], V)
    res = MultiBoxLoss()(HeadOutputs(outputs.cls_logits, perfect), targets, priors)
    assert float(res.loc) == pytest.approx(0.0, abs=1e-6)
    first = pos.nonzero()[0]
    perfect[first[0], first[1], 0] += 1.0
    res = MultiBoxLoss()(HeadOutputs(outputs.cls_logits, perfect), targets, priors)
    assert float(res.loc) == pytest.approx(0.5 / int(pos.sum()), rel=1e-4)


def test_zero_ground_truth_image_alone() -> None:
    outputs, _, priors = make_case(6, batch=1)
    outputs.cls_logits.requires_grad_(True)
    outputs.box_deltas.requires_grad_(True)
    empty = Targets([torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)])
    result = MultiBoxLoss()(outputs, empty, priors)
    assert torch.isfinite(result.total)
    assert float(result.loc.detach()) == 0.0 and float(result.cls.detach()) == 0.0
    assert int(result.num_pos) == 0
    result.total.backward()
    assert outputs.cls_logits.grad is not None and outputs.box_deltas.grad is not None
    assert torch.isfinite(outputs.cls_logits.grad).all() and torch.isfinite(outputs.box_deltas.grad).all()


def test_zero_ground_truth_image_in_a_batch_adds_nothing() -> None:
    outputs, targets, priors = make_case(7)
    assert len(targets.boxes[1]) == 0
    keep = [0, 2]
    sub_out = HeadOutputs(outputs.cls_logits[keep], outputs.box_deltas[keep])
    sub_tg = Targets([targets.boxes[i] for i in keep], [targets.labels[i] for i in keep])
    full = MultiBoxLoss()(outputs, targets, priors)
    without = MultiBoxLoss()(sub_out, sub_tg, priors)
    assert int(full.num_pos) == int(without.num_pos) > 0
    assert float(full.loc) == pytest.approx(float(without.loc), rel=1e-6)
    assert float(full.cls) == pytest.approx(float(without.cls), rel=1e-6)
    assert torch.isfinite(full.total)


def test_gradients_reach_logits_deltas_and_learnable_priors() -> None:
    outputs, targets, priors = make_case(8, requires_grad=True)
    priors = priors.clone().requires_grad_(True)
    result = MultiBoxLoss()(outputs, targets, priors)
    result.total.backward()
    assert outputs.box_deltas.grad is not None and priors.grad is not None
    assert outputs.box_deltas.grad[1].abs().sum() == 0  # image without ground truth: no loc grad
    assert outputs.box_deltas.grad.abs().sum() > 0
    assert priors.grad[:, 2:].abs().sum() > 0  # the prior sizes get the localisation gradient
