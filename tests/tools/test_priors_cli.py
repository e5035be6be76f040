"""ssd-priors end to end on a small COCO-format dataset written to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ssd import build_model, load_config
from ssd.cli.priors import main

W, H = 2560, 1920


def write_split(root: Path, name: str, n_images: int, seed: int) -> Path:
    """A COCO json of 2560x1920 images with full-width bands (class band) and blobs (class blob),
    plus tiny placeholder image files (the config path checks that images exist)."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n_images):
        fname = f"{name}_{i}.jpg"
        Image.new("RGB", (4, 3)).save(root / fname)
        images.append({"id": i + 1, "file_name": fname, "width": W, "height": H})
        for _ in range(int(rng.integers(1, 4))):
            if rng.random() < 0.6:
                h = float(np.exp(rng.uniform(np.log(40), np.log(300))))
                y = float(rng.uniform(0, H - h))
                box, cat = [0.0, y, float(W), h], 1
            else:
                w, h = (float(v) for v in rng.uniform(150, 600, 2))
                x, y = float(rng.uniform(0, W - w)), float(rng.uniform(0, H - h))
                box, cat = [x, y, w, h], 2
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    path = root / f"{name}.json"
    cats = [{"id": 1, "name": "band"}, {"id": 2, "name": "blob"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> dict[str, Path]:
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


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_fit_reports_both_ious_and_writes_files(
    dataset: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = dataset["tmp"] / "fit"
    rep = run(
        capsys,
        [
            "fit",
            "--config",
            str(dataset["cfg"]),
            "--annotations",
            str(dataset["val"]),
            "--format",
            "coco",
            "--output-dir",
            str(out_dir),
        ],
    )
    for key in (
        "num_priors",
        "boxes_per_cell",
        "mean_iou_shape",
        "mean_iou_grid",
        "recall",
        "positives_per_gt",
        "per_class",
        "per_size",
        "unmatched",
    ):
        assert key in rep
    assert rep["num_priors"] == 24564 and rep["boxes_per_cell"] == 36
    # co-centred is the best any prior of a shape can do: grid IoU <= shape IoU
    assert 0 < rep["mean_iou_grid"] <= rep["mean_iou_shape"] <= 1
    assert set(rep["per_class"]) == {"band", "blob"}
    assert rep["positives_per_gt"] >= 1
    for name in ("fit.json", "fit.md", "shapes.png", "recall.png"):
        assert (out_dir / name).stat().st_size > 0
    # the config's own val split gives the same boxes
    rep2 = run(capsys, ["fit", "--config", str(dataset["cfg"]), "--split-name", "val"])
    assert rep2["num_gt"] == rep["num_gt"] and rep2["recall"] == rep["recall"]
    # position-averaged figures: on by default (8 x 8 shifts), off with --shifts 0
    assert rep["position_shifts"] == {"n": 8, "amplitude_px": 8.0}
    assert 0 < rep["recall_expected"] <= 1 and 0 < rep["mean_iou_grid_expected"] <= 1
    assert "position-averaged" in (out_dir / "fit.md").read_text(encoding="utf-8")
    off = run(capsys, ["fit", "--config", str(dataset["cfg"]), "--split-name", "val", "--shifts", "0"])
    assert off["recall_expected"] is None and off["recall"] == rep["recall"]
    assert main(["fit", "--config", str(dataset["cfg"]), "--split-name", "val", "--shifts", "-1"]) == 2
    assert "--shifts" in capsys.readouterr().err


def test_kmeans_and_sweep(dataset: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--config", str(dataset["cfg"]), "--annotations", str(dataset["train"]), "--format", "coco"]
    a = run(capsys, ["kmeans", *base, "--k", "4", "--restarts", "3", "--seed", "1"])
    b = run(capsys, ["kmeans", *base, "--k", "4", "--restarts", "3", "--seed", "1"])
    assert a["centroids"] == b["centroids"] and len(a["centroids"]) == 4
    assert 0 < a["mean_iou"] <= 1 and sum(a["counts"]) == a["num_boxes"]
    assert a["priors_all_levels"] == 4 * 5461
    e = run(capsys, ["kmeans", *base, "--k", "4", "--metric", "euclidean", "--update", "median"])
    assert e["metric"] == "euclidean" and e["update"] == "median"
    out_dir = dataset["tmp"] / "sweep"
    sw = run(
        capsys,
        [
            "sweep",
            *base,
            "--k-min",
            "2",
            "--k-max",
            "4",
            "--restarts",
            "2",
            "--metrics",
            "iou,euclidean,ratio-scale",
            "--output-dir",
            str(out_dir),
        ],
    )
    assert [(r["k"], r["metric"]) for r in sw["rows"]][:3] == [
        (2, "iou"),
        (2, "euclidean"),
        (2, "ratio-scale"),
    ]
    assert len(sw["rows"]) == 9
    iou = {r["k"]: r["mean_iou"] for r in sw["rows"] if r["metric"] == "iou"}
    assert iou[4] >= iou[2]
    assert (out_dir / "sweep.png").stat().st_size > 0


@pytest.mark.parametrize("method", ["coverage", "kmeans", "chi"])
def test_optimize_writes_a_config_that_loads_builds_and_fits_better(
    dataset: dict[str, Path], capsys: pytest.CaptureFixture[str], method: str
) -> None:
    new = dataset["tmp"] / f"{method}.yaml"
    out_dir = dataset["tmp"] / f"opt_{method}"
    res = run(
        capsys,
        [
            "optimize",
            "--config",
            str(dataset["cfg"]),
            "--out",
            str(new),
            "--method",
            method,
            *(["--sample-size", "800"] if method == "coverage" else []),
            "--restarts",
            "3",
            "--set",
            "model.width_mult=0.125",
            "--output-dir",
            str(out_dir),
        ],
    )
    assert res["out"] == str(new) and res["method"] == method
    cfg = load_config(new)
    assert cfg.model.width_mult == 0.125 and cfg.data.classes == ("band", "blob")
    model = build_model(cfg)
    assert model.priors().shape[0] == res["num_priors"]
    if method == "coverage":
        assert res["num_priors"] <= 24564
    if method == "chi":  # the published layout: 2/4/6/6/6/4/5 boxes per cell
        assert res["boxes_per_cell"] == 33 and res["num_priors"] == 14325
    assert (out_dir / "shapes.png").stat().st_size > 0 and (out_dir / "optimize.json").is_file()
    # on the held-out split, against the base priors
    fit = run(capsys, ["fit", "--config", str(dataset["cfg"]), "--compare", str(new), "--split-name", "val"])
    other = fit["compare"][method]
    assert other["num_priors"] == res["num_priors"]
    if method == "coverage":
        assert other["recall"] > fit["recall"] and other["mean_iou_grid"] > fit["mean_iou_grid"]


def test_errors_exit_2_and_name_the_culprit(
    dataset: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = dataset["tmp"] / "nope.json"
    assert (
        main(["fit", "--config", str(dataset["cfg"]), "--annotations", str(missing), "--format", "coco"]) == 2
    )
    assert str(missing) in capsys.readouterr().err
    base = ["--config", str(dataset["cfg"]), "--annotations", str(dataset["train"]), "--format", "coco"]
    assert main(["kmeans", *base, "--k", "100000"]) == 2
    assert "exceeds the number of distinct box shapes" in capsys.readouterr().err
    assert main(["fit", *base, "--split-name", "val"]) == 2
    assert "--split-name" in capsys.readouterr().err
    out = dataset["tmp"] / "x.yaml"
    assert main(["optimize", *base, "--out", str(out), "--max-priors", "100"]) == 2
    assert "max_priors=100" in capsys.readouterr().err
    assert main(["optimize", *base, "--out", str(out), "--method", "chi", "--jitter", "4"]) == 2
    assert "--jitter applies to --method coverage only" in capsys.readouterr().err
    assert main(["fit", "--config", str(dataset["tmp"] / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_voc_annotations_and_difficult_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann = tmp_path / "voc" / "Annotations"
    ann.mkdir(parents=True)
    obj = "<object><name>{}</name><difficult>{}</difficult><bndbox><xmin>{}</xmin><ymin>{}</ymin>"
    obj += "<xmax>{}</xmax><ymax>{}</ymax></bndbox></object>"
    for stem, objs in {"a": [("crack", 0, 1, 1, 200, 50), ("dent", 1, 5, 5, 30, 30)],
                       "b": [("crack", 0, 11, 21, 210, 70), ("dent", 0, 1, 1, 50, 100)]}.items():  # fmt: skip
        body = "".join(obj.format(*o) for o in objs)
        (ann / f"{stem}.xml").write_text(
            f"<annotation><size><width>400</width><height>200</height></size>{body}</annotation>"
        )
    split = tmp_path / "voc" / "trainval.txt"
    split.write_text("a\nb\n")
    cfg = tmp_path / "voc.yaml"
    cfg.write_text("data:\n  classes: [crack, dent]\n")
    base = [
        "--config",
        str(cfg),
        "--annotations",
        str(tmp_path / "voc"),
        "--format",
        "voc",
        "--split",
        str(split),
    ]
    km = run(capsys, ["kmeans", *base, "--k", "2", "--restarts", "1"])
    # difficult box dropped (data.use_difficult is false); 400x200 -> 512x512: x * 1.28, y * 2.56
    assert km["num_boxes"] == 3
    np.testing.assert_allclose(km["centroids"], [[64.0, 256.0], [256.0, 128.0]], rtol=1e-6)
    assert km["mean_iou"] == pytest.approx(1.0)
    rep = run(capsys, ["fit", *base])
    assert rep["num_gt"] == 3 and set(rep["per_class"]) == {"crack", "dent"}
    assert rep["per_class"]["dent"]["num_gt"] == 1


def test_optimize_subgrid_options(dataset: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["optimize", "--config", str(dataset["cfg"]), "--sample-size", "400", "--restarts", "1"]
    res = run(
        capsys,
        [
            *base,
            "--out",
            str(dataset["tmp"] / "sg.yaml"),
            "--subgrids",
            "2x2,1x4",
            "--jitter-scale",
            "0",
            "--iou-weight",
            "0.5",
            "--max-shapes-per-level",
            "8",
        ],
    )
    info = res["info"]
    assert info["subgrids"] == [[2, 2], [1, 4]] and info["iou_weight"] == 0.5
    assert all(len(level) <= 8 for level in res["shapes"]) and res["num_priors"] <= 24564
    assert all(len(e) in (2, 4) for level in res["shapes"] for e in level)
    off = run(capsys, [*base, "--out", str(dataset["tmp"] / "nosg.yaml"), "--subgrids", "none"])
    assert off["info"]["subgrids"] == [] and all(len(e) == 2 for level in off["shapes"] for e in level)
    default = run(capsys, [*base, "--out", str(dataset["tmp"] / "default.yaml"), "--jitter", "2"])
    assert default["info"]["subgrids"] == []  # off unless asked for
    assert default["info"]["sample_points"] <= 400
    auto = run(capsys, [*base, "--out", str(dataset["tmp"] / "auto.yaml"), "--subgrids", "auto"])
    assert auto["info"]["subgrids"] == "auto" and auto["num_priors"] <= 24564
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--out", str(dataset["tmp"] / "bad.yaml"), "--subgrids", "2by2"])
    assert exit_info.value.code == 2
    assert "NXxNY" in capsys.readouterr().err


def test_optimize_balance_options(dataset: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["optimize", "--config", str(dataset["cfg"]), "--sample-size", "400", "--restarts", "1"]
    one = run(capsys, [*base, "--out", str(dataset["tmp"] / "bal.yaml"), "--balance", "class"])
    assert one["info"]["balance"] == "class" and one["info"]["balance_power"] == 1.0
    assert "inner_split" not in one and one["num_priors"] <= 24564
    out = dataset["tmp"] / "inner.yaml"
    res = run(capsys, [*base, "--out", str(out), "--balance", "size", "--balance-power", "0,1"])
    inner = res["inner_split"]
    assert [c["options"] for c in inner["candidates"]] == [{"balance_power": 0.0}, {"balance_power": 1.0}]
    means = [sum(c["recall"]) for c in inner["candidates"]]
    assert means[inner["chosen"]] == max(means)
    assert res["info"]["balance_power"] == inner["candidates"][inner["chosen"]]["options"]["balance_power"]
    assert load_config(out).priors.shapes  # the written config loads
    assert main([*base, "--out", str(out), "--balance-power", "0.5"]) == 2
    assert "--balance-power needs --balance" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--out", str(out), "--balance", "size", "--balance-power", "-1"])
    assert exit_info.value.code == 2


def test_optimize_fits_option(dataset: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["optimize", "--config", str(dataset["cfg"]), "--sample-size", "400", "--restarts", "1"]
    out = dataset["tmp"] / "fits.yaml"
    res = run(capsys, [*base, "--out", str(out), "--fits", "2", "--seed", "3"])
    fits = res["info"]["fits"]
    assert [f["seed"] for f in fits] == [3, 4] and res["info"]["fit_seed"] in (3, 4)
    chosen = next(f for f in fits if f["seed"] == res["info"]["fit_seed"])
    assert chosen["holdout_objective"] == max(f["holdout_objective"] for f in fits)
    assert chosen["num_priors"] == res["num_priors"] <= 24564 and load_config(out).priors.shapes
    assert main([*base, "--out", str(out), "--fits", "2"]) == 0  # the text report names the fits
    assert (
        "fits (seed: objective on its own sample / on an independent sample): 0: " in capsys.readouterr().out
    )
    assert main([*base, "--out", str(out), "--method", "kmeans", "--fits", "2"]) == 2
    assert "--fits applies to --method coverage only" in capsys.readouterr().err


def test_optimize_local_search_option(dataset: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["optimize", "--config", str(dataset["cfg"]), "--sample-size", "400", "--restarts", "1"]
    out = dataset["tmp"] / "searched.yaml"
    plain = run(capsys, [*base, "--out", str(out)])
    res = run(capsys, [*base, "--out", str(out), "--local-search"])
    moves = res["info"]["local_search"]
    assert "local_search" not in plain["info"] and res["info"]["runs"] == plain["info"]["runs"]
    assert res["info"]["objective"] == pytest.approx(
        plain["info"]["objective"] + sum(m["improvement"] for m in moves)
    )
    assert res["num_priors"] <= 24564 and load_config(out).priors.shapes
    assert main([*base, "--out", str(out), "--local-search"]) == 0
    assert "local search: " in capsys.readouterr().out
    assert main([*base, "--out", str(out), "--method", "kmeans", "--local-search"]) == 2
    assert "--local-search applies to --method coverage only" in capsys.readouterr().err
