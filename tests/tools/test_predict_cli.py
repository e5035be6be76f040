"""ssd-predict on a folder of good and bad images (random weights, the smoke config)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssd.cli.predict import main, output_names
from tests.conftest import REPO
from tests.data import write_image
from tests.data.test_images import save_with_orientation

SMOKE = str(REPO / "configs" / "smoke.yaml")


def _folder(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    write_image(d / "a" / "x.png", 40, 30, (200, 10, 10))
    write_image(d / "b" / "x.png", 40, 30, (10, 200, 10))  # same stem, other folder
    write_image(d / "b" / "x.jpg", 40, 30)  # same stem, other extension
    good = write_image(d / "cut.png", 64, 48).read_bytes()
    (d / "cut.png").write_bytes(good[: len(good) // 2])  # header fine, data ends early
    Image.fromarray(np.arange(0, 65536, 64, dtype=np.uint16).reshape(32, 32)).save(d / "deep.png")
    save_with_orientation(d / "rot.jpg", np.zeros((30, 40, 3), np.uint8), 6)
    return d


def test_bad_images_are_reported_and_the_rest_drawn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = _folder(tmp_path), tmp_path / "out"
    rc = main(["--config", SMOKE, str(src), "--output-dir", str(out), "--score", "1.1", "--json"])
    cap = capsys.readouterr()
    assert rc == 1  # some images could not be read; the others were drawn
    results = {Path(r["image"]).relative_to(src).as_posix(): r for r in json.loads(cap.out)}
    assert set(results) == {"a/x.png", "b/x.jpg", "b/x.png", "cut.png", "deep.png", "rot.jpg"}
    assert "cannot decode image" in results["cut.png"]["error"] and "output" not in results["cut.png"]
    assert f"{src / 'cut.png'}: cannot decode image" in cap.err
    outputs = [r["output"] for k, r in results.items() if k != "cut.png"]
    assert len(set(outputs)) == 5 and all(Path(o).is_file() for o in outputs)
    assert sorted(Path(o).name for o in outputs) == ["deep.png", "rot.png", "x.png", "x_jpg.png", "x_png.png"]
    with Image.open(results["deep.png"]["output"]) as deep:  # the 16-bit image drawn with its grey levels
        assert deep.mode == "RGB" and len(np.unique(np.asarray(deep))) > 200
    with Image.open(results["rot.jpg"]["output"]) as rot:  # drawn as viewers show it
        assert rot.size == (30, 40)
    with Image.open(results["a/x.png"]["output"]) as first:  # the first x.png was not overwritten
        assert np.asarray(first)[15, 20].tolist() == [200, 10, 10]


def test_all_good_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_image(tmp_path / "in" / "ok.png", 40, 30)
    argv = ["--config", SMOKE, str(tmp_path / "in"), "--output-dir", str(tmp_path / "out"), "--score", "1.1"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == f"1 images, 0 detections drawn into {tmp_path / 'out'}"
    assert (tmp_path / "out" / "ok.png").is_file()


def test_a_file_as_output_dir_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_image(tmp_path / "ok.png", 40, 30)
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    assert main(["--config", SMOKE, str(tmp_path / "ok.png"), "--output-dir", str(blocker)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(blocker) in err and "not a folder" in err
    assert blocker.read_text() == "not a folder"


def test_output_names_are_unique() -> None:
    files = [Path("a/x.png"), Path("b/x.png"), Path("c/X.png"), Path("x.jpg"), Path("y")]
    assert output_names(files) == ["x.png", "x_png.png", "X_png_2.png", "x_jpg.png", "y.png"]
