"""ssd-tiling-report on two untrained runs of a tiny synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssd.cli.tiling_report import main
from ssd.config import config_from_dict, save_config
from ssd.inference.checkpoint import save_checkpoint
from ssd.modeling.build import build_model
from tests.conftest import TINY_PRIORS, synthetic_data


def _run(folder: Path, data_root: Path, tiling: dict[str, object], seed: int = 0, images: int = 8) -> Path:
    cfg = config_from_dict(
        {
            "data": synthetic_data(images, (320, 240), root=str(data_root)),
            "model": {"width_mult": 0.0625},
            "priors": TINY_PRIORS,
            "input": {"tiling": tiling},
            "postprocess": {"score_threshold": 0.05, "top_k": 50, "max_detections": 50},
        }
    )
    torch.manual_seed(seed)
    model = build_model(cfg)
    folder.mkdir(parents=True)
    save_config(cfg, folder / "config.yaml")
    save_checkpoint({"model": model.state_dict()}, folder / "last.pt")
    return folder


def test_report_of_an_untiled_and_a_tiled_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    untiled = _run(tmp_path / "untiled", data, {})
    # one window covering the 320 x 240 images: the same detections as untiled
    single = _run(tmp_path / "single", data, {"enabled": True, "scale": 1.0, "tile": 512})
    tiled = _run(tmp_path / "tiled", data, {"enabled": True, "scale": 1.0, "tile": 160, "overlap": 32})
    out = tmp_path / "report"
    argv = ["--run", f"untiled={untiled}", "--run", f"single={single}", "--run", f"tiled={tiled}"]
    assert main([*argv, "--fps-iters", "1", "--output-dir", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert (
        rep["single"]["mAP"] == rep["untiled"]["mAP"]
        and rep["single"]["mAP_small"] == rep["untiled"]["mAP_small"]
    )
    assert rep["untiled"]["tiled"] is False and rep["untiled"]["tiles_per_s"] is None
    # 320 x 240 in 160 px windows with 32 px overlap: 3 x 2
    assert rep["tiled"]["tiles_per_image"] == 6 and rep["tiled"]["tiles_per_s"] > 0
    assert set(rep["tiled"]["per_class_ap"]) == set(rep["untiled"]["per_class_ap_small"])
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| tiled |" in md and "small boxes" in md
    assert json.loads((out / "report.json").read_text())["tiled"]["num_images"] == 2
    assert main(["--run", "nodir"]) == 2


def test_seeds_are_compared_with_the_first_variant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    untiled = [_run(tmp_path / f"u{s}", data, {}, seed=s) for s in (0, 1)]
    # a single window covering the image: per seed the same detections as untiled
    single = [
        _run(tmp_path / f"s{s}", data, {"enabled": True, "scale": 1.0, "tile": 512}, seed=s) for s in (0, 1)
    ]
    tiled = _run(tmp_path / "t0", data, {"enabled": True, "scale": 1.0, "tile": 160, "overlap": 32})
    runs = ["--run", f"untiled={untiled[0]},{untiled[1]}", "--run", f"single={single[0]},{single[1]}"]
    assert main([*runs, "--run", f"tiled={tiled}", "--fps-iters", "1", "--resamples", "200", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    u, s, t = rep["untiled"]["seeds"], rep["single"]["seeds"], rep["tiled"]["seeds"]
    assert u["runs"] == [str(p) for p in untiled] and u["delta_map"] is None and u["verdict"] is None
    assert u["mAP"][0] == rep["untiled"]["mAP"]  # the first folder is the one detailed and timed
    assert s["mAP"] == u["mAP"] and s["delta_map"] == 0.0 and s["delta_ci"] == [0.0, 0.0]
    assert s["verdict"] == "no detectable difference"
    assert t["mean_mAP"] == t["mAP"][0] == rep["tiled"]["mAP"]
    assert t["delta_map"] == pytest.approx(t["mAP"][0] - sum(u["mAP"]) / 2)
    lo, hi = t["delta_ci"]
    assert lo <= hi and t["verdict"] in ("better", "worse", "no detectable difference")
    other = _run(tmp_path / "other", tmp_path / "data2", {}, images=4)  # another validation split
    assert main(["--run", f"untiled={untiled[0]}", "--run", f"other={other}", "--fps-iters", "1"]) == 2
    assert "scored on other images" in capsys.readouterr().err
    assert main(["--run", f"untiled={untiled[0]}", "--run", f"untiled={untiled[1]}"]) == 2  # a name twice
    assert "with a new NAME" in capsys.readouterr().err
