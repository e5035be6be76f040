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


def _run(folder: Path, data_root: Path, tiling: dict[str, object]) -> Path:
    cfg = config_from_dict(
        {
            "data": synthetic_data(8, (320, 240), root=str(data_root)),
            "model": {"width_mult": 0.0625},
            "priors": TINY_PRIORS,
            "input": {"tiling": tiling},
            "postprocess": {"score_threshold": 0.05, "top_k": 50, "max_detections": 50},
        }
    )
    torch.manual_seed(0)
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
