"""Prior generation: the SSD512 layout, golden tiny cases, the two config forms, clipping."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

import ssd
from ssd.config import Config, ConfigError, PriorsConfig, replace
from ssd.priors.generator import (
    layout_from_config,
    offsets_per_level,
    prior_layout,
    ratio_form_shapes,
    shape_entry,
    shapes_per_level,
    split_entry,
)

REPO = Path(__file__).resolve().parents[1]


def reference_priors(cfg: PriorsConfig) -> torch.Tensor:
    """Slow, loop-based ratio-form generator written from the paper's rule (float64):
    per cell (row i, column j) centre ((j + 0.5) * step, (i + 0.5) * step) / image_size, then the
    square s_k, the square sqrt(s_k * s'_k), and (s_k sqrt(r), s_k / sqrt(r)) plus its flip."""
    out = []
    size = cfg.image_size
    for k, f in enumerate(cfg.feature_maps):
        step = cfg.steps[k]
        s = cfg.min_sizes[k] / size
        for i, j in itertools.product(range(f), repeat=2):
            cx, cy = (j + 0.5) * step / size, (i + 0.5) * step / size
            out.append([cx, cy, s, s])
            if cfg.max_sizes:
                big = math.sqrt(s * cfg.max_sizes[k] / size)
                out.append([cx, cy, big, big])
            for r in cfg.aspect_ratios[k]:
                out.append([cx, cy, s * math.sqrt(r), s / math.sqrt(r)])
                out.append([cx, cy, s / math.sqrt(r), s * math.sqrt(r)])
    return torch.tensor(out, dtype=torch.float64)


def test_ssd512_voc_config_gives_24564_priors_by_the_paper_rule() -> None:
    cfg = ssd.load_config(REPO / "configs" / "ssd512_voc.yaml")
    priors = ssd.generate_priors(cfg.priors)
    assert priors.shape == (24564, 4)
    assert priors.dtype == torch.float32
    torch.testing.assert_close(priors.double(), reference_priors(cfg.priors), rtol=0, atol=1e-6)


def test_ssd512_boxes_per_cell_and_level_sizes() -> None:
    cfg = Config().priors
    levels = shapes_per_level(cfg)
    assert [len(level) for level in levels] == [4, 6, 6, 6, 6, 4, 4]
    layout = layout_from_config(cfg)
    counts = torch.bincount(layout.level_index).tolist()
    assert counts == [64 * 64 * 4, 32 * 32 * 6, 16 * 16 * 6, 8 * 8 * 6, 4 * 4 * 6, 2 * 2 * 4, 1 * 1 * 4]
    assert sum(counts) == 24564 == layout.num_priors
    # the first level's four shapes in pixels: 35.84, sqrt(35.84 * 76.8), and ratio 2 both ways
    big = math.sqrt(35.84 * 76.8)
    r2 = math.sqrt(2.0)
    expected = [(35.84, 35.84), (big, big), (35.84 * r2, 35.84 / r2), (35.84 / r2, 35.84 * r2)]
    assert [v for wh in levels[0] for v in wh] == pytest.approx([v for wh in expected for v in wh])
    # last level: a single cell centred on the image
    priors = ssd.generate_priors(cfg)
    assert torch.equal(priors[-4:, :2], torch.full((4, 2), 0.5))


def test_one_by_one_map_golden() -> None:
    # 100x100 input, one 1x1 map: s = 30 px, s' = 60 px, ratio 2 -> hand-computed relative sizes
    cfg = PriorsConfig(
        image_size=100,
        feature_maps=(1,),
        steps=(100,),
        min_sizes=(30,),
        max_sizes=(60,),
        aspect_ratios=((2,),),
    )
    expected = torch.tensor(
        [
            [0.5, 0.5, 0.3, 0.3],
            [0.5, 0.5, 0.4242641, 0.4242641],  # sqrt(30 * 60) / 100
            [0.5, 0.5, 0.4242641, 0.2121320],  # 30 * sqrt(2) / 100, 30 / sqrt(2) / 100
            [0.5, 0.5, 0.2121320, 0.4242641],
        ]
    )
    torch.testing.assert_close(ssd.generate_priors(cfg), expected, rtol=0, atol=1e-6)


def test_two_by_two_map_centres_row_major() -> None:
    cfg = PriorsConfig(
        image_size=64, feature_maps=(2,), steps=(32,), min_sizes=(16,), max_sizes=(), aspect_ratios=((),)
    )
    priors = ssd.generate_priors(cfg)
    expected_centres = torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    assert torch.equal(priors[:, :2], expected_centres)  # (cx, cy), j (column) fastest
    torch.testing.assert_close(priors[:, 2:], torch.full((4, 2), 0.25))


def test_steps_need_not_tile_the_image_exactly() -> None:
    # centres follow (j + 0.5) * step / image_size even when f * step != image_size
    cfg = PriorsConfig(
        image_size=300, feature_maps=(3,), steps=(64,), min_sizes=(30,), max_sizes=(), aspect_ratios=((),)
    )
    cx = ssd.generate_priors(cfg)[:3, 0]
    torch.testing.assert_close(cx, torch.tensor([32.0, 96.0, 160.0]) / 300)


def test_shape_form_equals_ratio_form() -> None:
    ratio_cfg = Config().priors
    levels = ratio_form_shapes(ratio_cfg.min_sizes, ratio_cfg.max_sizes, ratio_cfg.aspect_ratios)
    shape_cfg = replace(ratio_cfg, shapes=tuple(tuple(level) for level in levels))
    assert shapes_per_level(shape_cfg) == levels
    assert torch.equal(ssd.generate_priors(shape_cfg), ssd.generate_priors(ratio_cfg))


def test_shape_form_any_number_of_shapes_including_extreme_bands() -> None:
    cfg = PriorsConfig(
        image_size=512,
        feature_maps=(2, 1),
        steps=(256, 512),
        shapes=(((512.0, 27.0),), ((10.0, 20.0), (30.0, 40.0), (300.0, 5.0))),
    )
    priors = ssd.generate_priors(cfg)
    assert priors.shape == (2 * 2 * 1 + 1 * 1 * 3, 4)
    torch.testing.assert_close(priors[0], torch.tensor([0.25, 0.25, 1.0, 27 / 512]))
    torch.testing.assert_close(priors[3], torch.tensor([0.75, 0.75, 1.0, 27 / 512]))
    torch.testing.assert_close(
        priors[4:],
        torch.tensor(
            [[0.5, 0.5, 10 / 512, 20 / 512], [0.5, 0.5, 30 / 512, 40 / 512], [0.5, 0.5, 300 / 512, 5 / 512]]
        ),
    )


def test_clip_golden() -> None:
    base = dict(image_size=100, feature_maps=(2,), steps=(50,), max_sizes=(), aspect_ratios=((),))
    unclipped = ssd.generate_priors(PriorsConfig(**base, min_sizes=(80,)))  # type: ignore[arg-type]
    clipped = ssd.generate_priors(PriorsConfig(**base, min_sizes=(80,), clip=True))  # type: ignore[arg-type]
    # cell (0, 0): centre (0.25, 0.25), size 0.8 -> corners (-0.15, -0.15, 0.65, 0.65) -> clipped
    # to (0, 0, 0.65, 0.65) -> cxcywh (0.325, 0.325, 0.65, 0.65)
    torch.testing.assert_close(unclipped[0], torch.tensor([0.25, 0.25, 0.8, 0.8]))
    torch.testing.assert_close(clipped[0], torch.tensor([0.325, 0.325, 0.65, 0.65]))
    torch.testing.assert_close(clipped[3], torch.tensor([0.675, 0.675, 0.65, 0.65]))


def test_clip_keeps_every_prior_inside_and_changes_only_the_outside_ones() -> None:
    cfg = Config().priors
    unclipped = ssd.generate_priors(cfg)
    clipped = ssd.generate_priors(replace(cfg, clip=True))
    corners = torch.cat([clipped[:, :2] - clipped[:, 2:] / 2, clipped[:, :2] + clipped[:, 2:] / 2], dim=1)
    assert corners.min() >= -1e-6 and corners.max() <= 1 + 1e-6
    ucorners = torch.cat(
        [unclipped[:, :2] - unclipped[:, 2:] / 2, unclipped[:, :2] + unclipped[:, 2:] / 2], 1
    )
    inside = ((ucorners >= 0) & (ucorners <= 1)).all(dim=1)
    assert 0 < int(inside.sum()) < len(inside)  # SSD512 has priors crossing the border
    torch.testing.assert_close(clipped[inside], unclipped[inside])
    assert (clipped[~inside, 2:] <= unclipped[~inside, 2:] + 1e-6).all()


def test_layout_indices() -> None:
    layout = prior_layout([2, 1], [4.0, 8.0], [3, 2], 8)
    assert layout.num_priors == 2 * 2 * 3 + 2
    assert layout.shape_index.tolist() == [0, 1, 2] * 4 + [3, 4]
    assert layout.level_index.tolist() == [0] * 12 + [1] * 2
    assert layout.num_shapes == (3, 2)


def test_generate_priors_equals_model_priors_bit_for_bit(small_cfg: Config) -> None:
    for cfg in (small_cfg, replace(small_cfg, **{"priors.clip": True})):
        model = ssd.build_model(cfg)
        assert torch.equal(model.priors(), ssd.generate_priors(cfg.priors))


# --------------------------------------------------------------------------- sub-cell offsets


def reference_shape_priors(cfg: PriorsConfig) -> torch.Tensor:
    """Loop-based shape-form generator (float64): entry [w, h] or [w, h, dx, dy] in cell (i, j)
    sits at ((j + 0.5 + dx) * step, (i + 0.5 + dy) * step) / image_size."""
    assert cfg.shapes is not None
    out = []
    size = cfg.image_size
    for level, f in enumerate(cfg.feature_maps):
        step = cfg.steps[level]
        for i, j in itertools.product(range(f), repeat=2):
            for entry in cfg.shapes[level]:
                w, h = entry[0], entry[1]
                dx, dy = (entry[2], entry[3]) if len(entry) == 4 else (0.0, 0.0)
                out.append([(j + 0.5 + dx) * step / size, (i + 0.5 + dy) * step / size, w / size, h / size])
    return torch.tensor(out, dtype=torch.float64)


OFFSET_SHAPES = (
    ((8.0, 8.0), (8.0, 8.0, 0.25, 0.25), (8.0, 8.0, -0.25, 0.25), (30.0, 6.0, 0.0, -0.375)),
    ((20.0, 20.0), (60.0, 10.0, 0.0, 0.25)),
    ((50.0, 40.0, 0.4, -0.49),),
)


def test_one_by_one_map_with_offsets_golden() -> None:
    # 100x100 input, one 1x1 map of step 100: the offsets move the centre by dx*100, dy*100 px
    cfg = PriorsConfig(
        image_size=100,
        feature_maps=(1,),
        steps=(100,),
        shapes=(((30.0, 30.0), (30.0, 30.0, 0.25, -0.25), (20.0, 10.0, -0.1, 0.4)),),
    )
    expected = torch.tensor(
        [[0.5, 0.5, 0.3, 0.3], [0.75, 0.25, 0.3, 0.3], [0.4, 0.9, 0.2, 0.1]],
    )
    torch.testing.assert_close(ssd.generate_priors(cfg), expected, rtol=0, atol=1e-7)
    assert offsets_per_level(cfg) == [[(0.0, 0.0), (0.25, -0.25), (-0.1, 0.4)]]
    assert shapes_per_level(cfg) == [[(30.0, 30.0), (30.0, 30.0), (20.0, 10.0)]]


def test_offsets_follow_the_reference_loop_and_the_cell_order() -> None:
    cfg = PriorsConfig(image_size=64, feature_maps=(8, 4, 1), steps=(8, 16, 64), shapes=OFFSET_SHAPES)
    priors = ssd.generate_priors(cfg)
    assert priors.shape == (8 * 8 * 4 + 4 * 4 * 2 + 1, 4)
    torch.testing.assert_close(priors.double(), reference_shape_priors(cfg), rtol=0, atol=1e-7)
    # a 2x2 sub-grid at +-0.25 of step 8 is a lattice of step 4 (x) within the level
    layout = layout_from_config(cfg)
    assert layout.num_shapes == (4, 2, 1)
    assert layout.shape_offsets[:4].tolist() == [[0.0, 0.0], [0.25, 0.25], [-0.25, 0.25], [0.0, -0.375]]
    cx = priors[:4, 0] * 64  # cell (0, 0): centres 4, 6, 2, 4 px
    assert cx.tolist() == [4.0, 6.0, 2.0, 4.0]


def test_zero_offsets_equal_plain_shapes_bit_for_bit() -> None:
    plain = PriorsConfig(
        image_size=64, feature_maps=(8, 1), steps=(8, 64), shapes=(((8.0, 6.0),), ((40.0, 30.0),))
    )
    zero = replace(plain, shapes=(((8.0, 6.0, 0.0, 0.0),), ((40.0, 30.0, 0.0, 0.0),)))
    assert torch.equal(ssd.generate_priors(plain), ssd.generate_priors(zero))
    assert split_entry((8.0, 6.0, 0.0, 0.0)) == ((8.0, 6.0), (0.0, 0.0))
    assert shape_entry((8.0, 6.0), (0.0, 0.0)) == (8.0, 6.0)
    assert shape_entry((8.0, 6.0), (0.25, -0.25)) == (8.0, 6.0, 0.25, -0.25)


def test_generate_priors_equals_model_priors_with_offsets(small_cfg: Config) -> None:
    base = shapes_per_level(small_cfg.priors)
    shapes = [list(level) for level in base]
    shapes[0] = [*shapes[0], (10.0, 12.0, 0.25, 0.25), (10.0, 12.0, -0.25, -0.25)]
    shapes[3] = [*shapes[3], (300.0, 20.0, 0.0, 0.375)]
    cfg = replace(small_cfg, **{"priors.shapes": tuple(tuple(level) for level in shapes)})
    for c in (cfg, replace(cfg, **{"priors.clip": True})):
        model = ssd.build_model(c)
        priors = ssd.generate_priors(c.priors)
        assert priors.shape[0] == 24564 + 2 * 64 * 64 + 8 * 8
        assert torch.equal(model.priors(), priors)
        assert model.head.cls[0].out_channels == 6 * c.num_classes  # the per-cell count grows
    unclipped = ssd.generate_priors(cfg.priors).double()
    torch.testing.assert_close(unclipped, reference_shape_priors(cfg.priors), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("[10, 10, 0.5, 0]", "must be in \\(-0.5, 0.5\\)"),
        ("[10, 10, 0, -0.5]", "must be in \\(-0.5, 0.5\\)"),
        ("[10, 10, 0.1]", "expected \\[w, h\\] or \\[w, h, dx, dy\\], got 3 numbers"),
        ("[10, 10, 0.1, 0.1, 0.1]", "got 5 numbers"),
        ("[0, 10, 0.1, 0.1]", "w and h must be positive"),
    ],
)
def test_shape_entries_are_validated_with_the_dotted_key(entry: str, message: str) -> None:
    levels = ["[[8, 8]]"] * 7
    levels[2] = f"[[8, 8], {entry}]"
    with pytest.raises(ConfigError, match=r"priors\.shapes\[2\]\[1\]: .*" + message):
        ssd.load_config(None, [f"priors.shapes=[{', '.join(levels)}]"])
    ok = levels.copy()
    ok[2] = "[[8, 8], [10, 10, 0.49, -0.49]]"
    cfg = ssd.load_config(None, [f"priors.shapes=[{', '.join(ok)}]"])
    assert cfg.priors.shapes is not None and cfg.priors.shapes[2][1] == (10.0, 10.0, 0.49, -0.49)
