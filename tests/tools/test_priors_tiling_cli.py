"""ssd-priors with input.tiling (boxes in window space) and --image-fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssd.cli.priors import main
from ssd.data.coco import read_coco_records
from ssd.data.records import Record, image_folds
from ssd.data.tiling import Tiling, records_to_tiles, small_before_tiling
from ssd.priors.fit import records_to_boxes
from tests.tools.test_priors_cli import run, write_split

TILED = ["--set", "input.tiling.enabled=true"]


@pytest.fixture
def dataset(tmp_path: Path) -> dict[str, Path]:
    """The 2560 x 1920 band/blob COCO set of test_priors_cli (60 train, 30 val images)."""
    root = tmp_path / "data"
    root.mkdir()
    train = write_split(root, "train", 60, seed=0)
    val = write_split(root, "val", 30, seed=1)
    cfg = tmp_path / "base.yaml"
    cfg.write_text(
        f"data:\n  format: coco\n  root: {root}\n  train_annotations: train.json\n"
        "  val_annotations: val.json\n  classes: [band, blob]\n",
        encoding="utf-8",
    )
    return {"root": root, "train": train, "val": val, "cfg": cfg, "tmp": tmp_path}


def test_tiled_fit_sees_window_boxes(dataset: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["fit", "--config", str(dataset["cfg"]), "--annotations", str(dataset["val"]), "--format", "coco"]
    untiled = run(capsys, base)
    tiled = run(capsys, [*base, *TILED])
    records = read_coco_records(dataset["val"], dataset["root"], ("band", "blob"), check_images=False)
    tiles = records_to_tiles(records, Tiling())
    assert len(tiles) == 6 * len(records)
    assert tiled["num_gt"] == sum(t.num_boxes for t in tiles) > untiled["num_gt"]
    assert tiled["num_images"] == len(tiles)
    small = tiled["tiling"]["small_after_warp"]
    assert small["num_window_boxes"] == int(small_before_tiling(records, Tiling(), 512).sum())
    assert tiled["tiling"]["settings"]["scale"] == 0.5
    # bands of the whole 2560 px width are 1024 px in a window, 512 input px after its warp
    boxes = records_to_boxes(tiles, 512)
    assert boxes.wh_px[:, 0].max() == pytest.approx(512.0)
    # one window covering the image (scale 1, tile >= the image): the untiled figures
    one = run(capsys, [*base, *TILED, "--set", "input.tiling.scale=1.0", "--set", "input.tiling.tile=4096"])
    for key in ("num_gt", "recall", "mean_iou_grid", "mean_iou_shape"):
        assert one[key] == untiled[key]


def test_tiled_optimize_and_kmeans(dataset: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = dataset["tmp"] / "tiled.yaml"
    common = [
        "--config",
        str(dataset["cfg"]),
        "--annotations",
        str(dataset["train"]),
        "--format",
        "coco",
        *TILED,
    ]
    rep = run(capsys, ["optimize", *common, "--out", str(out), "--sample-size", "4000"])
    assert rep["num_priors"] <= 24564 and out.is_file()
    # fitted in window space: better there than the original priors
    assert rep["fit_train"]["coverage"]["recall"] > rep["fit_train"]["base"]["recall"]
    km = run(capsys, ["kmeans", *common, "--k", "3", "--restarts", "2"])
    untiled = run(capsys, ["kmeans", *common[:-2], "--k", "3", "--restarts", "2"])
    assert km["num_boxes"] > untiled["num_boxes"]


def test_image_fold_partitions_the_images(
    dataset: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["fit", "--config", str(dataset["cfg"]), "--annotations", str(dataset["val"]), "--format", "coco"]
    whole = run(capsys, base)
    a = run(capsys, [*base, "--image-fold", "0/2"])
    b = run(capsys, [*base, "--image-fold", "1/2", "--fold-seed", "0"])
    assert a["num_images"] + b["num_images"] == whole["num_images"]
    assert a["num_gt"] + b["num_gt"] == whole["num_gt"]
    assert abs(a["num_images"] - b["num_images"]) <= 2
    with pytest.raises(SystemExit) as exc:  # argparse: usage error
        main([*base, "--image-fold", "2/2"])
    assert exc.value.code == 2
    assert "--image-fold" in capsys.readouterr().err


def _record(i: int, labels: list[int]) -> Record:
    n = len(labels)
    return Record(
        Path(f"{i}.jpg"),
        f"img{i:03d}",
        100,
        100,
        boxes_px=np.tile(np.array([[0, 0, 10, 10]], np.float32), (n, 1)),
        labels=np.array(labels, np.int64),
        difficult=np.zeros(n, bool),
    )


def test_image_folds_are_stratified_and_seeded() -> None:
    records = [_record(i, [1 + i % 3] * (1 + i % 2)) for i in range(30)] + [
        _record(30 + i, []) for i in range(4)
    ]
    folds = image_folds(records, 2, seed=0)
    for key in (1, 2, 3):
        members = [f for r, f in zip(records, folds) if r.labels.size and r.labels[0] == key]
        assert abs(members.count(0) - members.count(1)) <= 1  # each class halved
    assert sorted(f for r, f in zip(records, folds) if not r.labels.size) == [0, 0, 1, 1]
    assert np.array_equal(folds, image_folds(records, 2, seed=0))
    assert not np.array_equal(folds, image_folds(records, 2, seed=1))
    assert np.array_equal(image_folds(records[::-1], 2, seed=0), folds[::-1])  # order independent
