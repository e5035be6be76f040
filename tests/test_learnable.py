"""Learnable priors (Zhong et al.): gradients, separation, export, warm-up schedules."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

import ssd
from ssd.config import config_from_dict
from ssd.losses import MultiBoxLoss, PriorAids
from ssd.modeling.build import export_learned_priors
from ssd.modeling.head import ScaleOnlyBatchNorm
from ssd.modeling.priors import PriorBoxes, break_ties
from ssd.priors.generator import flat_shapes, prior_layout
from ssd.structures import HeadOutputs, Targets

SMALL = {
    "model": {"width_mult": 0.125, "batch_norm": True},
    "priors": {
        "image_size": 320,
        "feature_maps": [40, 20, 10, 5, 3, 2, 1],
        "steps": [8, 16, 32, 64, 107, 160, 320],
        "min_sizes": [22.4, 48, 96, 144, 192, 240, 288],
        "max_sizes": [48, 96, 144, 192, 240, 288, 336],
        "learnable": True,
        "learn": {"warmup_iters": 10},
    },
    "data": {"classes": ["a", "b"]},
}


def small_cfg(**priors: object) -> ssd.Config:
    values = {**SMALL, "priors": {**SMALL["priors"], **priors}}  # type: ignore[dict-item]
    return config_from_dict(values)


def test_gradients_reach_shape_parameters() -> None:
    torch.manual_seed(0)
    cfg = small_cfg()
    model = ssd.build_model(cfg)
    assert isinstance(model.priors.log_wh, torch.nn.Parameter)
    out = model(torch.randn(2, 3, 320, 320))
    targets = Targets(
        [torch.tensor([[0.1, 0.1, 0.9, 0.3]]), torch.tensor([[0.4, 0.2, 0.6, 0.9], [0.0, 0.0, 0.2, 0.1]])],
        [torch.tensor([1]), torch.tensor([2, 1])],
    )
    loss = MultiBoxLoss()(out, targets, model.priors())
    loss.total.backward()
    grad = model.priors.log_wh.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_fixed_priors_are_a_buffer_with_the_same_key() -> None:
    cfg = small_cfg(learnable=False)
    model = ssd.build_model(cfg)
    assert "priors.log_wh" in model.state_dict()
    assert not any(n.startswith("priors.") for n, _ in model.named_parameters())
    learn_state = ssd.build_model(small_cfg()).state_dict()
    assert "priors.log_wh" in learn_state


def test_identical_shapes_separate_toward_ground_truth_clusters() -> None:
    """Only the localisation loss, network outputs frozen at zero: two shapes that start equal
    end at the two ground-truth clusters (a wide and a tall one)."""
    image = 32
    layout = prior_layout([2], [16], [2], image)
    priors = PriorBoxes(layout, flat_shapes([[(12.0, 12.0), (12.0, 12.0)]], image), learnable=True)
    w0, h0 = priors.shapes_wh.detach()[0]
    assert not torch.equal(priors.shapes_wh[0], priors.shapes_wh[1])  # ties broken
    gen = torch.Generator().manual_seed(0)
    boxes, labels = [], []
    for _ in range(8):
        # a wide box centred on cell (0, 0) and a tall one on cell (1, 1), sizes jittered
        jw = 1 + 0.1 * (torch.rand(2, generator=gen) - 0.5)
        wide = torch.tensor([8 - 10 * jw[0], 8 - 3, 8 + 10 * jw[0], 8 + 3]) / image
        tall = torch.tensor([24 - 3, 24 - 10 * jw[1], 24 + 3, 24 + 10 * jw[1]]) / image
        boxes.append(torch.stack([wide, tall]))
        labels.append(torch.tensor([1, 1]))
    targets = Targets(boxes, labels)
    criterion = MultiBoxLoss(iou_threshold=0.5)
    opt = torch.optim.SGD(priors.parameters(), lr=0.05)
    zeros = HeadOutputs(torch.zeros(8, layout.num_priors, 2), torch.zeros(8, layout.num_priors, 4))
    for _ in range(300):
        opt.zero_grad()
        criterion(zeros, targets, priors()).loc.backward()
        opt.step()
    wh = priors.shapes_wh.detach() * image
    wide_shape, tall_shape = (wh[0], wh[1]) if wh[0, 0] > wh[1, 0] else (wh[1], wh[0])
    assert wide_shape[0] / wide_shape[1] > 2.5 and tall_shape[1] / tall_shape[0] > 2.5
    assert torch.allclose(wide_shape, torch.tensor([20.0, 6.0]), rtol=0.15)
    assert torch.allclose(tall_shape, torch.tensor([6.0, 20.0]), rtol=0.15)
    assert math.isclose(float(w0), float(h0), rel_tol=0.05)


def test_break_ties_only_moves_duplicates_and_keeps_area() -> None:
    log_wh = torch.log(torch.tensor([[0.1, 0.1], [0.1, 0.1], [0.2, 0.1], [0.1, 0.1], [0.3, 0.3]]))
    out = break_ties(log_wh, (4, 1))
    assert (
        torch.equal(out[0], log_wh[0]) and torch.equal(out[2], log_wh[2]) and torch.equal(out[4], log_wh[4])
    )
    assert len({tuple(r.tolist()) for r in out[:4]}) == 4
    assert torch.allclose(out.sum(1), log_wh.sum(1))  # log area unchanged


def test_exported_config_reproduces_learned_priors_exactly(tmp_path: Path) -> None:
    cfg = small_cfg()
    model = ssd.build_model(cfg)
    with torch.no_grad():
        model.priors.log_wh.add_(
            torch.linspace(-0.3, 0.3, model.priors.log_wh.numel()).view_as(model.priors.log_wh)
        )
    expected = model.priors().detach().clone()
    exported = export_learned_priors(model, cfg, tmp_path / "learned.yaml")
    assert not exported.priors.learnable and exported.priors.shapes is not None
    assert exported.model.wh_batchnorm is True
    reloaded = ssd.load_config(tmp_path / "learned.yaml")
    priors = ssd.generate_priors(reloaded.priors)
    assert torch.equal(priors, model.priors())
    assert torch.allclose(priors, expected, rtol=1e-6, atol=1e-7)
    # the frozen model's state dict loads into the model built from the exported config
    fixed = ssd.build_model(reloaded)
    fixed.load_state_dict(model.state_dict())
    assert torch.equal(fixed.priors(), priors)


def test_warmup_schedules_have_the_annealing_endpoints() -> None:
    aids = PriorAids.from_config(small_cfg(learn={"warmup_iters": 100}))
    assert aids.temperature(0) == pytest.approx(2.0)
    assert aids.clustering_weight(0) == pytest.approx(1.0)
    assert aids.temperature(50) == pytest.approx(1.0)
    assert aids.clustering_weight(50) == pytest.approx(0.5)
    assert aids.temperature(100) == 0.0 and aids.clustering_weight(100) == 0.0
    assert aids.temperature(10_000) == 0.0
    temps = [aids.temperature(i) for i in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(temps))
    off = PriorAids.from_config(
        small_cfg(learn={"warmup_iters": 100, "soft_assignment": False, "online_clustering": False})
    )
    assert off.temperature(0) == 0.0 and off.clustering_weight(0) == 0.0


def test_cell_priors_pick_the_cell_containing_the_centre() -> None:
    cfg = small_cfg()
    aids = PriorAids.from_config(cfg)
    priors = ssd.generate_priors(cfg.priors)
    layout = aids.layout
    centers = torch.tensor([[0.01, 0.02], [0.5, 0.5], [0.999, 0.3], [0.26, 0.74]])
    idx = aids.cell_priors(centers)
    assert idx.shape == (4, sum(layout.num_shapes))
    for g, c in enumerate(centers):
        for _col, p in enumerate(idx[g].tolist()):
            level = int(layout.level_index[p])
            half = layout.steps[level] / 2 / layout.image_size
            # the prior's centre is the centre of the cell that holds c (last cell clamps)
            assert abs(float(priors[p, 0] - c[0])) <= half + 1e-6 or float(priors[p, 0]) > 1 - 2 * half
            assert abs(float(priors[p, 1] - c[1])) <= half + 1e-6 or float(priors[p, 1]) > 1 - 2 * half
        # one prior per distinct shape
        assert sorted(layout.shape_index[idx[g]].tolist()) == list(range(idx.shape[1]))


def test_soft_assignment_at_low_temperature_is_the_best_prior_of_the_cell() -> None:
    cfg = small_cfg()
    aids = PriorAids.from_config(cfg)
    priors = ssd.generate_priors(cfg.priors)
    gen = torch.Generator().manual_seed(1)
    deltas = torch.randn(1, priors.shape[0], 4, generator=gen)
    box = torch.tensor([[0.2, 0.3, 0.6, 0.4]])
    targets = Targets([box], [torch.tensor([1])])
    from torchvision.ops import box_iou

    from ssd.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
    from ssd.priors.coder import encode

    idx = aids.cell_priors(xyxy_to_cxcywh(box)[:, :2])[0]
    best = idx[box_iou(box, cxcywh_to_xyxy(priors[idx]))[0].argmax()]
    expected = torch.nn.functional.smooth_l1_loss(
        deltas[0, best], encode(box, priors[best : best + 1], cfg.priors.variances)[0], reduction="sum"
    )
    got = aids.soft_loc_loss(deltas, targets, priors, temperature=1e-3)
    assert got == pytest.approx(float(expected), rel=1e-4)
    hot = aids.soft_loc_loss(deltas, targets, priors, temperature=100.0)
    per = torch.nn.functional.smooth_l1_loss(
        deltas[0, idx], encode(box.expand(len(idx), 4), priors[idx], cfg.priors.variances), reduction="none"
    ).sum(-1)
    assert hot == pytest.approx(float(per.mean()), rel=1e-2)  # near-uniform weights


def test_aids_loss_during_and_after_warmup() -> None:
    torch.manual_seed(0)
    cfg = small_cfg()
    model = ssd.build_model(cfg)
    aids = PriorAids.from_config(cfg)
    out = model(torch.randn(2, 3, 320, 320))
    targets = Targets(
        [torch.tensor([[0.1, 0.1, 0.9, 0.3]]), torch.zeros(0, 4)],
        [torch.tensor([1]), torch.zeros(0, dtype=torch.long)],
    )
    criterion = MultiBoxLoss()
    during, extra = aids.loss(criterion, out, targets, model.priors(), 0)
    assert "cluster" in extra and extra["cluster"] > 0
    after, extra_after = aids.loss(criterion, out, targets, model.priors(), 10)
    plain = criterion(out, targets, model.priors())
    assert extra_after == {}
    assert torch.equal(after.total, plain.total)
    assert not torch.equal(during.loc, plain.loc)  # soft assignment replaces the hard loc term
    (during.total + extra["cluster"]).backward()
    assert model.priors.log_wh.grad is not None and model.priors.log_wh.grad.abs().sum() > 0


def test_scale_only_batchnorm_has_no_shift() -> None:
    bn = ScaleOnlyBatchNorm(2)
    assert [n for n, _ in bn.named_parameters()] == ["weight"]
    x = torch.randn(4, 100, 2) * 3 + 5
    y = bn(x)
    assert y.shape == x.shape
    assert torch.allclose(y.reshape(-1, 2).mean(0), torch.zeros(2), atol=1e-5)
    model = ssd.build_model(small_cfg())
    assert model.head.wh_norm is not None
    assert ssd.build_model(small_cfg(learnable=False)).head.wh_norm is None


def test_learned_shapes_keep_their_offsets_and_export_them(tmp_path: Path) -> None:
    shapes = [[[20, 20], [40, 20]]] + [[[48, 48]]] * 6
    shapes[0] += [[10, 10, -0.25, -0.25], [10, 10, 0.25, 0.25]]
    shapes[2] = [[96, 96], [300, 30, 0.0, 0.375]]
    cfg = small_cfg(shapes=shapes)
    model = ssd.build_model(cfg)
    priors0 = model.priors().detach().clone()
    assert torch.equal(priors0, ssd.generate_priors(cfg.priors))
    offsets = model.priors._offsets
    assert (
        offsets.shape == (11, 2)
        and offsets[2].tolist() == [-0.25, -0.25]
        and offsets[6].tolist() == [0.0, 0.375]
    )
    assert "priors._offsets" not in model.state_dict()  # derived from the config, like the centres
    # a learning step moves the shapes, never the centres (offsets included)
    out = model(torch.randn(2, 3, 320, 320))
    box = torch.tensor([[0.1, 0.1, 0.14, 0.13], [0.2, 0.5, 0.9, 0.6]])
    targets = Targets([box, box], [torch.tensor([1, 2])] * 2)
    MultiBoxLoss()(out, targets, model.priors()).total.backward()
    torch.optim.SGD([model.priors.log_wh], lr=1.0).step()
    moved = model.priors().detach()
    assert torch.equal(moved[:, :2], priors0[:, :2]) and not torch.equal(moved[:, 2:], priors0[:, 2:])
    # the cell of a centre still gives one prior per distinct shape (the offset copies included)
    aids = PriorAids.from_config(cfg)
    idx = aids.cell_priors(torch.tensor([[0.5, 0.5]]))
    assert sorted(aids.layout.shape_index[idx[0]].tolist()) == list(range(11))
    exported = export_learned_priors(model, cfg, tmp_path / "learned.yaml")
    assert exported.priors.shapes is not None
    assert exported.priors.shapes[0][2][2:] == (-0.25, -0.25) and exported.priors.shapes[2][1][2:] == (
        0.0,
        0.375,
    )
    assert len(exported.priors.shapes[0][0]) == 2  # no offset: written as [w, h]
    reloaded = ssd.load_config(tmp_path / "learned.yaml")
    assert torch.equal(ssd.generate_priors(reloaded.priors), model.priors())


def test_clustering_term_is_eq_11_with_the_assignment_in_force() -> None:
    """lambda / (2N) sum delta_ij T_ij: soft delta (N = G) during the soft warm-up, the hard
    matches (N = positives) when the soft assignment is off; checked against a direct sum."""
    from ssd.boxes import xyxy_to_cxcywh

    cfg = small_cfg(learn={"warmup_iters": 10})
    aids = PriorAids.from_config(cfg)
    priors = ssd.generate_priors(cfg.priors)
    gen = torch.Generator().manual_seed(2)
    p = priors.shape[0]
    out = HeadOutputs(torch.randn(1, p, 3, generator=gen), torch.randn(1, p, 4, generator=gen))
    boxes = torch.tensor([[0.2, 0.3, 0.6, 0.4], [0.05, 0.1, 0.3, 0.7]])
    targets = Targets([boxes], [torch.tensor([1, 2])])
    it = 3  # lambda = 0.7, T = 1.4
    lam, temp = aids.clustering_weight(it), aids.temperature(it)
    assert lam == pytest.approx(0.7) and temp == pytest.approx(1.4)
    _, extra = aids.loss(MultiBoxLoss(), out, targets, priors, it)
    # direct: softmax(-(1 - IoU) / T) over the cell priors of each box, T_ij in log space
    from torchvision.ops import box_iou

    from ssd.boxes import cxcywh_to_xyxy

    total, norm = 0.0, 0.0
    for g in range(2):
        idx = aids.cell_priors(xyxy_to_cxcywh(boxes[g : g + 1])[:, :2])[0]
        iou = box_iou(boxes[g : g + 1], cxcywh_to_xyxy(priors[idx]))[0]
        w = torch.softmax(-(1 - iou) / temp, 0)
        gwh = xyxy_to_cxcywh(boxes[g : g + 1])[0, 2:]
        t = (priors[idx, 2:].log() - gwh.log()).pow(2).sum(-1)
        total += float((w * t).sum())
        norm += float(w.sum())
    assert norm == pytest.approx(2.0)
    assert float(extra["cluster"]) == pytest.approx(lam * total / (2 * norm), rel=1e-5)
    # hard assignment (soft warm-up off): 1 / (2 N) over the matched positives
    hard = PriorAids.from_config(small_cfg(learn={"warmup_iters": 10, "soft_assignment": False}))
    result, extra = hard.loss(MultiBoxLoss(), out, targets, priors, it)
    pos = result.match.labels[0] > 0
    gwh = xyxy_to_cxcywh(result.match.boxes[0][pos])[:, 2:]
    t = (priors[pos, 2:].log() - gwh.log()).pow(2).sum(-1)
    assert float(extra["cluster"]) == pytest.approx(lam * float(t.sum()) / (2 * int(pos.sum())), rel=1e-5)


def test_warmup_defaults_are_the_papers() -> None:
    lp = ssd.Config().priors.learn
    assert lp.warmup_iters == 1500 and lp.temperature_start == 2.0 and lp.clustering_weight_start == 1.0
