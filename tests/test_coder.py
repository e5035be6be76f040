"""Box encoding (SSD eq. 2 with variances 0.1/0.2): golden values and the decode(encode) round trip."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssd.boxes import cxcywh_to_xyxy
from ssd.priors.coder import decode, encode

V = (0.1, 0.2)


def test_encode_golden() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.1, 0.1]])
    gt_xyxy = torch.tensor(
        [
            [0.42, 0.34, 0.62, 0.74],  # cxcywh (0.52, 0.54, 0.2, 0.4): shifted, same size
            [0.3, 0.1, 0.7, 0.9],  # cxcywh (0.5, 0.5, 0.4, 0.8): same centre, twice the size
            [0.25, 0.7, 0.3, 0.725],  # cxcywh (0.275, 0.7125, 0.05, 0.025)
        ]
    )
    ln2 = math.log(2.0)
    expected = torch.tensor(
        [
            [0.02 / (0.1 * 0.2), 0.04 / (0.1 * 0.4), 0.0, 0.0],  # = (1, 1, 0, 0)
            [0.0, 0.0, ln2 / 0.2, ln2 / 0.2],
            [0.025 / 0.01, -0.0375 / 0.01, math.log(0.5) / 0.2, math.log(0.25) / 0.2],
        ]
    )
    torch.testing.assert_close(encode(gt_xyxy, priors, V), expected, rtol=0, atol=1e-5)


def test_decode_of_zero_deltas_is_the_prior() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.05, 0.3]])
    torch.testing.assert_close(decode(torch.zeros(2, 4), priors, V), cxcywh_to_xyxy(priors))


def test_decode_golden() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    deltas = torch.tensor([[1.0, -1.0, math.log(2.0) / 0.2, 0.0]])
    # centre (0.5 + 1 * 0.1 * 0.2, 0.5 - 1 * 0.1 * 0.4) = (0.52, 0.46), size (0.4, 0.4)
    torch.testing.assert_close(decode(deltas, priors, V), torch.tensor([[0.32, 0.26, 0.72, 0.66]]))


def test_batched_deltas_broadcast_over_priors() -> None:
    g = torch.Generator().manual_seed(0)
    priors = torch.cat([torch.rand(7, 2, generator=g), torch.rand(7, 2, generator=g) * 0.5 + 0.05], 1)
    deltas = torch.randn(3, 7, 4, generator=g)
    batched = decode(deltas, priors, V)
    assert batched.shape == (3, 7, 4)
    for b in range(3):
        torch.testing.assert_close(batched[b], decode(deltas[b], priors, V))
    torch.testing.assert_close(encode(batched, priors, V), deltas, rtol=1e-4, atol=1e-4)


def test_extreme_deltas_stay_finite() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.1, 0.1]] * 3)
    deltas = torch.tensor([[0.0, 0.0, 1e4, 1e4], [0.0, 0.0, -1e4, -1e4], [1e30, -1e30, 100.0, 0.0]])
    assert torch.isfinite(decode(deltas, priors, V)).all()


def test_degenerate_ground_truth_encodes_finite() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.1, 0.1]])
    zero_size = torch.tensor([[0.3, 0.3, 0.3, 0.3]])
    assert torch.isfinite(encode(zero_size, priors, V)).all()


coord = st.floats(0.0, 1.0, allow_nan=False)
prior_size = st.floats(0.02, 1.0, allow_nan=False)  # a box never grows > 50x its prior (decode caps ~62x)
gt_size = st.floats(0.01, 1.0, allow_nan=False)
variance = st.sampled_from([(0.1, 0.2), (1.0, 1.0), (0.05, 0.5)])


@settings(max_examples=60, deadline=None)
@given(
    priors=st.lists(st.tuples(coord, coord, prior_size, prior_size), min_size=1, max_size=8),
    data=st.data(),
    variances=variance,
)
def test_decode_inverts_encode(
    priors: list[tuple[float, float, float, float]], data: st.DataObject, variances: tuple[float, float]
) -> None:
    n = len(priors)
    gts = data.draw(st.lists(st.tuples(coord, coord, gt_size, gt_size), min_size=n, max_size=n))
    p = torch.tensor(priors, dtype=torch.float64)
    g_cxcywh = torch.tensor(gts, dtype=torch.float64)
    gt_xyxy = cxcywh_to_xyxy(g_cxcywh)
    back = decode(encode(gt_xyxy, p, variances), p, variances)
    torch.testing.assert_close(back, gt_xyxy, rtol=0, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    deltas=st.lists(st.tuples(*[st.floats(-3.0, 3.0, allow_nan=False)] * 4), min_size=1, max_size=6),
    data=st.data(),
)
def test_encode_inverts_decode(deltas: list[tuple[float, float, float, float]], data: st.DataObject) -> None:
    n = len(deltas)
    priors = data.draw(st.lists(st.tuples(coord, coord, prior_size, prior_size), min_size=n, max_size=n))
    d = torch.tensor(deltas, dtype=torch.float64)
    p = torch.tensor(priors, dtype=torch.float64)
    torch.testing.assert_close(encode(decode(d, p, V), p, V), d, rtol=0, atol=1e-7)
