"""ssd-check-dataset: the per-file table, the summary per kind, exit status 0 / 1 / 2,
--json, --split, --decode, --show, --output-dir; and the real NEU-DET command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from ssd.cli.check_dataset import main
from tests.conftest import NEU_ROOT, needs_neu
from tests.data import REPO
from tests.data.test_check import GOOD, make_voc, voc_xml


def write_cfg(tmp_path: Path, root: Path, **data: Any) -> Path:
    cfg = tmp_path / "cfg.yaml"
    values = {"format": "voc", "root": str(root), "train_split": "train.txt", "val_split": "val.txt",
              "classes": ["crack", "dent"], **data}  # fmt: skip
    cfg.write_text(yaml.safe_dump({"data": values}))
    return cfg


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    status = main([*argv, "--quiet"])
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    bad = {
        "dup": voc_xml([*GOOD, GOOD[0]]),  # a warning
        "flat": voc_xml([("crack", 9, 9, 4, 20)]),  # fatal, in val
        "noext": voc_xml(GOOD, filename="noext"),  # info
    }
    root = make_voc(tmp_path / "voc", bad)
    (root / "train.txt").write_text("good\ndup\nnoext\n")
    (root / "val.txt").write_text("good\nflat\n")
    return root


def test_table_summary_and_exit_status(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_cfg(tmp_path, dataset)
    status, out, _ = run(capsys, ["--config", str(cfg)])
    assert status == 1
    assert "- train: 3 samples, 0 unusable" in out and "- val: 2 samples, 1 unusable" in out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    # problem table (warning or worse) then the summary per kind (with the info-level quirk)
    assert any("| fatal " in r and "degenerate_box" in r and "Annotations/flat.xml" in r for r in rows)
    assert any("| warning " in r and "duplicate_box" in r and "Annotations/dup.xml" in r for r in rows)
    assert not any("| info " in r and "noext.xml" in r and "lacks the extension" in r for r in rows)
    assert any(r.startswith("| filename_without_extension | info") for r in rows)
    assert "FAILED: training would refuse this data (1 fatal, 1 warning, 1 info)" in out
    # the train split alone has no fatal problem: exit 0
    status, out, _ = run(capsys, ["--config", str(cfg), "--split", "train", "--show", "info"])
    assert status == 0 and "OK: usable for training" in out
    assert any("| info " in line and "lacks the extension" in line for line in out.splitlines())


def test_json_and_output_dir(tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_cfg(tmp_path, dataset)
    status, out, _ = run(capsys, ["--config", str(cfg), "--json", "--output-dir", str(tmp_path / "rep")])
    report = json.loads(out)
    assert status == 1 and report["exit_status"] == 1 and report["ok"] is False
    assert report["counts"] == {
        "degenerate_box": {"fatal": 1},
        "duplicate_box": {"warning": 1},
        "filename_without_extension": {"info": 1},
    }
    assert report["bad_samples"] == {"train": [], "val": ["flat"]}
    flat = next(p for p in report["problems"] if p["kind"] == "degenerate_box")
    assert flat["file"].endswith("flat.xml") and flat["split"] == "val" and flat["sample"] == "flat"
    assert json.loads((tmp_path / "rep" / "check_report.json").read_text()) == report
    md = (tmp_path / "rep" / "check_report.md").read_text()
    assert md.startswith("# Dataset check") and "lacks the extension" in md  # the file lists everything


def test_decode_finds_truncated_images(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cut = dataset / "JPEGImages" / "dup.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(cut)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    cfg = write_cfg(tmp_path, dataset)
    status, out, _ = run(capsys, ["--config", str(cfg), "--split", "train", "--json"])
    assert status == 0 and "unreadable_image" not in json.loads(out)["counts"]
    status, out, _ = run(capsys, ["--config", str(cfg), "--split", "train", "--json", "--decode"])
    assert status == 1 and json.loads(out)["counts"]["unreadable_image"] == {"fatal": 1}


def test_usage_and_config_errors_exit_2(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_cfg(tmp_path, dataset)
    status, _, err = run(capsys, ["--config", str(cfg), "--set", "data.box_outside=trim"])
    assert status == 2 and "data.box_outside" in err
    status, _, err = run(capsys, ["--config", str(tmp_path / "none.yaml")])
    assert status == 2 and "none.yaml" in err
    coco = write_cfg(tmp_path, dataset, format="coco")
    status, _, err = run(capsys, ["--config", str(coco)])
    assert status == 2 and "data.train_annotations" in err
    with pytest.raises(SystemExit) as info:
        main(["--split", "test"])
    assert info.value.code == 2
    # a missing dataset is a fatal finding (exit 1), not a usage error
    status, out, _ = run(capsys, ["--config", str(write_cfg(tmp_path, tmp_path / "nowhere"))])
    assert status == 1 and "| layout " in out


def test_synthetic_dataset_is_generated_then_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "syn"
    status, out, _ = run(
        capsys,
        ["--config", str(REPO / "configs" / "smoke.yaml"), "--set", f"data.root={root}",
         "--set", "data.synthetic_num_images=6", "--set", "data.synthetic_size=[64,48]", "--json"],
    )  # fmt: skip
    report = json.loads(out)
    assert status == 0 and (root / "train.txt").is_file()
    assert sum(report["num_samples"].values()) == 6
    assert not {k for k, v in report["counts"].items() if "fatal" in v}


@needs_neu
def test_neu_det_command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    argv = ["--config", "configs/ssd512_neu.yaml", "--set", f"data.root={NEU_ROOT.resolve()}"]
    status, out, _ = run(capsys, argv)
    assert status == 0
    assert "OK: usable for training (0 fatal, 3 warning, 1974 info)" in out
    assert "- train: 1440 samples, 0 unusable" in out and "- val: 360 samples, 0 unusable" in out
    listed = [line for line in out.splitlines() if line.startswith("| warning ")]
    assert len(listed) == 3 and all("duplicate_box" in line for line in listed)


def test_bomb_header_rotated_and_16bit_images_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.data.test_images import STORED, bomb_png, save_with_orientation

    bad = {
        "huge": voc_xml([("crack", 1, 1, 3, 3)], size=None),  # no <size>: the header is read
        "rot": voc_xml([("crack", 1, 1, 3, 3)], size=(4, 6)),
        "deep": voc_xml([("crack", 1, 1, 3, 3)], size=(6, 4), depth=1),
    }
    root = make_voc(tmp_path / "voc", bad, {k: None for k in bad})
    bomb_png(root / "JPEGImages" / "huge.png")
    save_with_orientation(root / "JPEGImages" / "rot.png", STORED, 8)
    Image.fromarray(np.full((4, 6), 1000, np.uint16)).save(root / "JPEGImages" / "deep.png")
    (root / "train.txt").write_text("good\nhuge\nrot\ndeep\n")
    (root / "val.txt").write_text("good\n")
    status, out, _ = run(capsys, ["--config", str(write_cfg(tmp_path, root)), "--json", "--show", "info"])
    report = json.loads(out)
    assert status == 1 and report["bad_samples"]["train"] == ["huge"]
    by_sample = {(p["sample"], p["kind"]): p for p in report["problems"]}
    assert "DecompressionBombError" in by_sample[("huge", "unreadable_image")]["detail"]
    assert by_sample[("huge", "unreadable_image")]["file"].endswith("huge.xml")
    assert "EXIF orientation 8" in by_sample[("rot", "exif_orientation")]["detail"]
    assert by_sample[("deep", "high_bit_depth")]["severity"] == "info"
