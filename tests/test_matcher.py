"""Matching (SSD sec. 2.2): best-prior forcing, threshold, padding, and a loop-based oracle."""

from __future__ import annotations

import pytest
import torch

from ssd.boxes import cxcywh_to_xyxy
from ssd.priors.matcher import MatchResult, iou_matrix, match, match_from_iou, pad_targets


def loop_iou(a: list[float], b: list[float]) -> float:
    """IoU of two xyxy boxes, plain Python."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def loop_match(
    boxes: list[torch.Tensor], labels: list[torch.Tensor], priors: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ssd.pytorch-style matcher with Python loops: labels [B, P], gt_index [B, P], boxes [B, P, 4]."""
    priors_xyxy = cxcywh_to_xyxy(priors.double()).tolist()
    num_p = len(priors_xyxy)
    out_labels, out_index, out_boxes = [], [], []
    for gt, lab in zip(boxes, labels):
        gt_list = gt.double().tolist()
        lab_list = lab.tolist()
        overlaps = [[loop_iou(g, p) for p in priors_xyxy] for g in gt_list]
        truth_overlap = [-1.0] * num_p
        truth_idx = [0] * num_p
        for j in range(num_p):
            for g in range(len(gt_list)):
                if overlaps[g][j] > truth_overlap[j]:
                    truth_overlap[j], truth_idx[j] = overlaps[g][j], g
        best_prior = [max(range(num_p), key=lambda j, g=g: overlaps[g][j]) for g in range(len(gt_list))]
        for g in range(len(gt_list)):  # in order: a later ground truth overrides an earlier one
            truth_overlap[best_prior[g]] = 2.0
            truth_idx[best_prior[g]] = g
        lab_row, idx_row, box_row = [], [], []
        for j in range(num_p):
            if truth_overlap[j] >= threshold:
                lab_row.append(lab_list[truth_idx[j]])
                idx_row.append(truth_idx[j])
                box_row.append(gt_list[truth_idx[j]])
            else:
                lab_row.append(0)
                idx_row.append(-1)
                box_row.append([0.0] * 4)
        out_labels.append(lab_row)
        out_index.append(idx_row)
        out_boxes.append(box_row)
    return (
        torch.tensor(out_labels, dtype=torch.long),
        torch.tensor(out_index, dtype=torch.long),
        torch.tensor(out_boxes, dtype=torch.float64).reshape(len(boxes), num_p, 4),
    )


def random_case(
    g: torch.Generator, batch: int, num_priors: int, max_gt: int, num_classes: int = 5
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    # priors on a jittered 6x6 grid with sizes >= 0.25: every ground truth overlaps some prior, so
    # the best prior of each ground truth is unique (no ties at IoU 0)
    centres = (torch.randint(0, 6, (num_priors, 2), generator=g).float() + 0.5) / 6
    centres += (torch.rand(num_priors, 2, generator=g) - 0.5) * 0.05
    sizes = torch.rand(num_priors, 2, generator=g) * 0.5 + 0.25
    grid = torch.stack(torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij"), -1).reshape(-1, 2)
    centres[:36] = (grid.float() + 0.5) / 6  # make sure every grid cell has a prior
    priors = torch.cat([centres, sizes], dim=1)
    boxes, labels = [], []
    for _ in range(batch):
        n = int(torch.randint(0, max_gt + 1, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 0.8
        wh = torch.rand(n, 2, generator=g) * 0.4 + 0.02
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=1.0)], dim=1))
        labels.append(torch.randint(1, num_classes, (n,), generator=g))
    return boxes, labels, priors


def test_matcher_equals_loop_oracle_on_random_cases() -> None:
    g = torch.Generator().manual_seed(0)
    total_pos = 0
    for threshold in (0.5, 0.3, 0.7):
        for _ in range(6):
            boxes, labels, priors = random_case(g, batch=3, num_priors=60, max_gt=6)
            result = match(boxes, labels, priors, threshold)
            exp_labels, exp_index, exp_boxes = loop_match(boxes, labels, priors, threshold)
            assert torch.equal(result.labels, exp_labels)
            assert torch.equal(result.gt_index, exp_index)
            torch.testing.assert_close(result.boxes.double(), exp_boxes)
            total_pos += int((exp_labels > 0).sum())
    assert total_pos > 100  # the cases exercise many positives


def test_iou_output_is_the_best_iou_or_two_when_forced() -> None:
    priors = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5], [0.75, 0.25, 0.5, 0.5]])
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 0.9]])  # exactly prior 0; 80% of prior 1
    result = match([gt], [torch.tensor([1, 2])], priors, 0.5)
    assert result.iou[0].tolist() == pytest.approx([2.0, 2.0, 0.0])
    assert result.labels[0].tolist() == [1, 2, 0]


def test_best_prior_is_forced_even_below_threshold() -> None:
    priors = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5], [0.5, 0.5, 0.1, 0.1]])
    # a ground truth whose best IoU (with prior 0) is 0.25: below 0.5, still matched to prior 0
    gt = torch.tensor([[0.0, 0.0, 0.25, 0.25]])
    assert loop_iou(gt[0].tolist(), cxcywh_to_xyxy(priors[0]).tolist()) == pytest.approx(0.25)
    result = match([gt], [torch.tensor([3])], priors, 0.5)
    assert result.labels[0].tolist() == [3, 0, 0]
    assert result.gt_index[0].tolist() == [0, -1, -1]
    torch.testing.assert_close(result.boxes[0, 0], gt[0])
    assert torch.equal(result.boxes[0, 1:], torch.zeros(2, 4))


def test_two_ground_truths_on_one_best_prior_the_later_wins() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.1, 0.1, 0.05, 0.05]])
    a = [0.28, 0.3, 0.68, 0.7]  # both have prior 0 as best prior (IoU 0.905), none other
    b = [0.32, 0.3, 0.72, 0.7]
    p0, p1 = cxcywh_to_xyxy(priors).tolist()
    assert loop_iou(a, p0) == pytest.approx(loop_iou(b, p0)) == pytest.approx(0.152 / 0.168)
    assert loop_iou(a, p1) == loop_iou(b, p1) == 0.0
    gt = torch.tensor([a, b])
    result = match([gt], [torch.tensor([1, 2])], priors, 0.5)
    assert result.gt_index[0].tolist() == [1, -1]
    assert result.labels[0].tolist() == [2, 0]
    # swap the order: the other one wins
    result = match([gt.flip(0)], [torch.tensor([2, 1])], priors, 0.5)
    assert result.gt_index[0].tolist() == [1, -1]
    assert result.labels[0].tolist() == [1, 0]


def test_forced_prior_overrides_a_better_threshold_match() -> None:
    # prior 0 overlaps gt A with IoU 0.9 (>= 0.5), but it is gt B's only overlapping prior:
    # forcing gives it to B; A keeps its own best prior 1
    priors = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.52, 0.5, 0.4, 0.4]])
    gt_a = [0.33, 0.3, 0.73, 0.7]
    gt_b = [0.25, 0.25, 0.35, 0.35]
    p0, p1 = cxcywh_to_xyxy(priors).tolist()
    assert loop_iou(gt_a, p0) == pytest.approx(0.148 / 0.172)  # >= 0.5, but not A's best
    assert loop_iou(gt_a, p1) == pytest.approx(0.156 / 0.164)
    assert loop_iou(gt_b, p0) > loop_iou(gt_b, p1) > 0
    result = match([torch.tensor([gt_a, gt_b])], [torch.tensor([1, 2])], priors, 0.5)
    assert result.gt_index[0].tolist() == [1, 0]
    assert result.labels[0].tolist() == [2, 1]


def test_threshold_is_inclusive() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 1.0, 0.5]])
    gt = torch.tensor([[0.25, 0.25, 0.75, 0.75]])  # IoU with prior 1 is exactly 0.5
    assert loop_iou(gt[0].tolist(), cxcywh_to_xyxy(priors[1]).tolist()) == 0.5
    assert match([gt], [torch.tensor([1])], priors, 0.5).labels[0].tolist() == [1, 1]
    assert match([gt], [torch.tensor([1])], priors, 0.51).labels[0].tolist() == [1, 0]


def test_zero_ground_truth_alone_and_in_a_batch() -> None:
    g = torch.Generator().manual_seed(3)
    _, _, priors = random_case(g, batch=1, num_priors=40, max_gt=1)
    empty = torch.zeros(0, 4)
    none = torch.zeros(0, dtype=torch.long)
    alone = match([empty], [none], priors, 0.5)
    assert alone.labels.shape == (1, 40)
    assert (alone.labels == 0).all() and (alone.gt_index == -1).all()
    assert torch.equal(alone.boxes, torch.zeros(1, 40, 4))
    assert (alone.iou == -1).all()

    gt = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8], [0.2, 0.6, 0.3, 0.9]])
    lab = torch.tensor([1, 2, 3])
    mixed = match(
        [empty, gt, torch.tensor([[0.3, 0.3, 0.6, 0.6]])], [none, lab, torch.tensor([4])], priors, 0.5
    )
    assert (mixed.labels[0] == 0).all() and (mixed.gt_index[0] == -1).all()
    single = match([gt], [lab], priors, 0.5)
    # padding does not change the matching of the other images
    assert torch.equal(mixed.labels[1], single.labels[0])
    assert torch.equal(mixed.gt_index[1], single.gt_index[0])
    assert torch.equal(mixed.boxes[1], single.boxes[0])
    assert (mixed.gt_index[2] <= 0).all() and (mixed.labels[2] > 0).any()


def test_all_empty_batch() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    result = match([torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2, priors, 0.5)
    assert result.labels.shape == (2, 1) and (result.labels == 0).all()


def test_pad_targets() -> None:
    boxes = [torch.rand(2, 4), torch.zeros(0, 4), torch.rand(3, 4)]
    labels = [
        torch.tensor([1, 2]),
        torch.zeros(0, dtype=torch.long),
        torch.tensor([3, 1, 2], dtype=torch.int32),
    ]
    out_boxes, out_labels, valid = pad_targets(boxes, labels, torch.device("cpu"))
    assert out_boxes.shape == (3, 3, 4) and out_labels.dtype == torch.long
    assert valid.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert torch.equal(out_boxes[0, :2], boxes[0]) and torch.equal(out_labels[2], torch.tensor([3, 1, 2]))


def _random_targets(counts: list[int], seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for n in counts:
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.02
        xy = torch.rand(n, 2, generator=g) * (1 - wh)
        boxes.append(torch.cat([xy, xy + wh], 1))
        labels.append(torch.randint(1, 5, (n,), generator=g))
    return boxes, labels


def _padded_reference(
    boxes: list[torch.Tensor], labels: list[torch.Tensor], priors: torch.Tensor, thr: float
) -> MatchResult:
    """The whole batch padded to its largest count and matched at once."""

    gt, gt_labels, valid = pad_targets(boxes, labels, priors.device)
    return match_from_iou(iou_matrix(gt, valid, priors), gt, gt_labels, valid, thr)


@pytest.mark.parametrize("budget", [1, 700, 10**9])
def test_grouped_chunked_matching_equals_the_padded_batch(budget: int) -> None:
    priors = torch.rand(90, 4) * 0.5 + 0.05
    counts = [0, 3, 57, 1, 0, 8, 2]
    boxes, labels = _random_targets(counts, 3)
    got = match(boxes, labels, priors, 0.4, max_iou_elements=budget)
    ref = _padded_reference(boxes, labels, priors, 0.4)
    assert torch.equal(got.labels, ref.labels) and torch.equal(got.gt_index, ref.gt_index)
    assert torch.equal(got.boxes, ref.boxes) and torch.equal(got.iou, ref.iou)


def test_matcher_memory_follows_each_images_boxes(monkeypatch: pytest.MonkeyPatch) -> None:
    # one crowded image among normal ones: the IoU is never computed for the padded batch
    # (images x largest count), and never for more than the budget at once
    import ssd.priors.matcher as matcher

    calls: list[tuple[int, int]] = []
    real = matcher.box_iou

    def recording(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append((int(a.shape[0]), int(b.shape[0])))
        return real(a, b)

    monkeypatch.setattr(matcher, "box_iou", recording)
    priors = torch.rand(1000, 4) * 0.5 + 0.05
    counts = [2, 500, 3, 1, 4, 2, 3, 1]
    boxes, labels = _random_targets(counts, 4)
    result = match(boxes, labels, priors, 0.5, max_iou_elements=60_000)
    rows = sum(r for r, _ in calls)
    assert rows <= 2 * sum(counts) + len(counts)  # padding at most doubles the boxes
    assert max(r * p for r, p in calls) <= 60_000  # chunked to the budget
    ref = _padded_reference(boxes, labels, priors, 0.5)
    assert torch.equal(result.gt_index, ref.gt_index) and torch.equal(result.labels, ref.labels)
    calls.clear()
    match(boxes, labels, priors, 0.5)  # default budget: the crowded image in one chunk of its own
    assert max(r for r, _ in calls) == 500 and sum(r for r, _ in calls) <= 2 * sum(counts) + len(counts)


def test_match_groups() -> None:
    from ssd.priors.matcher import match_groups

    assert match_groups([3, 1, 2, 2]) == [[1, 2, 3, 0]]
    assert match_groups([2, 5000, 3, 0]) == [[3, 0, 2], [1]]
    assert match_groups([]) == []
    groups = match_groups([7, 7, 300, 40, 1, 0, 0, 2])
    assert sorted(i for g in groups for i in g) == list(range(8))
