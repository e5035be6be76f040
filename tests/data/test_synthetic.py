"""Synthetic Tianchi-layout generator: deterministic bytes, Table-1 classes and geometry, loadable."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from ssd.cli import synthesize
from ssd.config import Config, load_config, replace
from ssd.data.labelme import DEFECT_FREE_FOLDER, TIANCHI_CLASSES, TIANCHI_LABELS, read_labelme_records
from ssd.data.loader import build_records
from ssd.data.records import DatasetError
from ssd.data.synthetic import (
    GEOMETRY,
    SyntheticSummary,
    _allocate,
    _sample_box,
    generate_dataset,
    plan_dataset,
    quantile_transform,
    sample_quantiles,
    sample_wh,
)
from tests.data import REPO

SIZE = (160, 120)
N = 30


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticSummary]:
    root = tmp_path_factory.mktemp("synth") / "a"
    return root, generate_dataset(root, N, SIZE, seed=7)


def test_same_seed_same_bytes(dataset: tuple[Path, dict], tmp_path: Path) -> None:
    root, summary = dataset
    again = generate_dataset(tmp_path / "b", N, SIZE, seed=7)
    assert again == summary
    assert _files(root) == _files(tmp_path / "b")


def test_other_seed_other_images(dataset: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = dataset
    generate_dataset(tmp_path / "c", N, SIZE, seed=8)
    a, c = _files(root), _files(tmp_path / "c")
    assert a["train.txt"] != c["train.txt"] or any(a[k] != c.get(k) for k in a if k.endswith(".jpg"))


def test_workers_give_the_same_bytes(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "one", 6, (64, 48), seed=1)
    generate_dataset(tmp_path / "two", 6, (64, 48), seed=1, workers=2)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_layout_labels_and_split(dataset: tuple[Path, dict]) -> None:
    root, summary = dataset
    folders = {p.name for p in root.iterdir() if p.is_dir()}
    assert folders <= set(TIANCHI_LABELS) | {DEFECT_FREE_FOLDER}
    assert DEFECT_FREE_FOLDER in folders and not list((root / DEFECT_FREE_FOLDER).glob("*.json"))
    train = (root / "train.txt").read_text(encoding="utf-8").split()
    val = (root / "val.txt").read_text(encoding="utf-8").split()
    assert len(train) + len(val) == N and not set(train) & set(val)
    assert (len(train), len(val)) == (summary.train_images, summary.val_images) == (24, 6)
    assert all((root / p).is_file() for p in train + val)
    shapes = [
        s
        for p in root.rglob("*.json")
        if p.name != "synthetic.json"
        for s in json.loads(p.read_text())["shapes"]
    ]
    assert {s["label"] for s in shapes} == set(TIANCHI_LABELS)  # Chinese labels, all ten
    assert {len(s["points"]) for s in shapes} >= {2, 4}  # both rectangle forms occur
    doc = json.loads(next((root / "漏底").glob("*.json")).read_text(encoding="utf-8"))
    assert (doc["imageWidth"], doc["imageHeight"]) == SIZE


def test_records_load_with_every_class(dataset: tuple[Path, dict]) -> None:
    root, summary = dataset
    records = read_labelme_records(root, root / "train.txt", TIANCHI_CLASSES) + read_labelme_records(
        root, root / "val.txt", TIANCHI_CLASSES
    )
    assert len(records) == N
    labels = np.concatenate([r.labels for r in records])
    counts = np.bincount(labels, minlength=11)[1:]
    assert counts.tolist() == [summary.boxes_per_class[c] for c in TIANCHI_CLASSES]
    assert (counts > 0).all()
    assert summary.defect_free_images == sum(r.num_boxes == 0 for r in records) >= 1
    assert summary.multi_defect_images == sum(len(set(r.labels.tolist())) > 1 for r in records) >= 1
    w, h = SIZE
    for r in records:
        assert (r.width, r.height) == SIZE
        b = r.boxes_px
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    # classes that DATA.md measures as 100 % full width are full-width bands, the others mostly
    for name, least in [("pit", 1.0), ("variegated", 1.0), ("orange_peel", 1.0), ("bottom_leak", 0.5)]:
        k = TIANCHI_CLASSES.index(name) + 1
        boxes = np.concatenate([r.boxes_px[r.labels == k] for r in records])
        full = (boxes[:, 0] == 0) & (boxes[:, 2] == w)
        assert full.mean() >= least, name
    k = TIANCHI_CLASSES.index("jet") + 1
    jets = np.concatenate([r.boxes_px[r.labels == k] for r in records])
    assert (jets[:, 2] - jets[:, 0] < w).all()  # 0 % full width


def test_box_geometry_follows_data_md() -> None:
    rng = np.random.default_rng(0)
    for name, (W, H) in [("pit", (2560, 1920)), ("variegated", (1280, 960)), ("paint_bubble", (2560, 1920))]:
        g = GEOMETRY[name]
        boxes = np.array([_sample_box(rng, name, W, H, [], True) for _ in range(3000)])
        heights = (boxes[:, 3] - boxes[:, 1]) * 1920 / H
        np.testing.assert_allclose(np.percentile(heights, [10, 50, 90]), g.h, rtol=0.12)
        full = (boxes[:, 2] - boxes[:, 0]) >= W
        if g.full is not None:
            assert abs(full.mean() - g.full) < 0.03
    widths = np.array([sample_quantiles(rng, (31, 217, 2498)) for _ in range(20000)])
    np.testing.assert_allclose(np.percentile(widths, [10, 50, 90]), [31, 217, 2498], rtol=0.06)


def test_copula_keeps_the_marginals_and_correlates_w_and_h() -> None:
    rng = np.random.default_rng(1)
    g = GEOMETRY["dirty_spot"]
    wh = np.array([sample_wh(rng, g.w, g.h, g.rho) for _ in range(40000)])
    np.testing.assert_allclose(np.percentile(wh[:, 0], [10, 50, 90]), g.w, rtol=0.05)
    np.testing.assert_allclose(np.percentile(wh[:, 1], [10, 50, 90]), g.h, rtol=0.05)
    # normal scores recovered through the (monotone, piecewise log-linear) quantile transform
    z = np.stack([_normal_score(wh[:, 0], g.w), _normal_score(wh[:, 1], g.h)])
    assert abs(np.corrcoef(z)[0, 1] - g.rho) < 0.02
    # absurd shapes (width below p10 with height above p90) are rare; independent draws give 1 %
    absurd = (wh[:, 0] < g.w[0]) & (wh[:, 1] > g.h[2])
    assert absurd.mean() < 0.001
    zi = np.array([sample_wh(rng, g.w, g.h, 0.0) for _ in range(20000)])
    assert 0.007 < ((zi[:, 0] < g.w[0]) & (zi[:, 1] > g.h[2])).mean() < 0.013
    # quantile_transform: exact quantiles at the normal scores of p10 / p50 / p90, monotone
    assert [round(quantile_transform(v, (31, 217, 2498)), 6) for v in (-1.2815516, 0.0, 1.2815516)] == [
        31.0,
        217.0,
        2498.0,
    ]
    grid = [quantile_transform(float(v), g.h) for v in np.linspace(-3, 3, 61)]
    assert all(a < b for a, b in itertools.pairwise(grid))


def _normal_score(x: np.ndarray, q: tuple[float, float, float]) -> np.ndarray:
    """Inverse of `quantile_transform`."""
    p10, p50, p90 = q
    up = x >= p50
    z = np.empty_like(x)
    z[up] = 1.2815516 * np.log(x[up] / p50) / np.log(p90 / p50)
    z[~up] = -1.2815516 * np.log(x[~up] / p50) / np.log(p10 / p50)
    return z


def test_plan_follows_table_1() -> None:
    plan = plan_dataset(1000, seed=0)
    free = sum(not p for p in plan)
    assert free == 30
    primary = np.array([sum(p[0] == c for p in plan if p) for c in TIANCHI_CLASSES])
    weights = np.array([GEOMETRY[c].count for c in TIANCHI_CLASSES])
    np.testing.assert_allclose(primary, 1 + weights / weights.sum() * (970 - 10), atol=1)
    assert sum(len(p) == 2 for p in plan) == round(0.09 * 970)
    assert all(len(set(p)) == len(p) for p in plan)
    assert _allocate(7, np.array([1.0, 1.0, 2.0]), at_least_one=False) == [2, 2, 3]
    small = plan_dataset(16, seed=0)
    assert sum(not p for p in small) == 1 and len({p[0] for p in small if p}) == 10


def test_config_generates_on_first_use_then_reuses(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "smoke.yaml", [f"data.root={tmp_path / 's'}"])
    cfg = replace(cfg, **{"data.synthetic_num_images": 10, "data.synthetic_size": (64, 48)})
    assert isinstance(cfg, Config)
    train = build_records(cfg, "train")
    stamp = (tmp_path / "s" / "train.txt").stat().st_mtime_ns
    val = build_records(cfg, "val")
    assert len(train) + len(val) == 10 and len(val) == 2
    assert (tmp_path / "s" / "train.txt").stat().st_mtime_ns == stamp
    other = replace(cfg, **{"data.synthetic_seed": 5})
    with pytest.raises(DatasetError, match=r"synthetic\.json: generated with .* but the config asks"):
        build_records(other, "train")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    rc = synthesize.main(["--out", str(out), "--num-images", "5", "--size", "64x48", "--seed", "3", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_images"] == 5 and summary["size"] == [64, 48] and summary["images_per_minute"] > 0
    assert (out / "train.txt").is_file()
    assert synthesize.main(["--out", str(out), "--num-images", "0"]) == 2
    assert "num-images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        synthesize.main(["--out", str(out), "--size", "64by48"])
    assert exit_info.value.code == 2
