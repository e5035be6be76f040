"""Tiled inference speed beside the untiled pipeline (structure of the report; no speed goal)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssd.cli.benchmark import main
from ssd.config import Config, config_from_dict
from ssd.engine.benchmark_tiled import benchmark_tiled
from ssd.modeling.build import build_model
from tests.conftest import TINY_PRIORS


def _cfg() -> Config:
    return config_from_dict(
        {
            "model": {"width_mult": 0.0625},
            "data": {"classes": ["a", "b"]},
            "priors": TINY_PRIORS,
            "input": {"tiling": {"scale": 1.0, "tile": 200, "overlap": 40}},
        }
    )


def test_benchmark_tiled_reports_images_and_tiles_per_second() -> None:
    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model(cfg)
    model.priors.freeze()
    res = benchmark_tiled(model, cfg, orig_size=(300, 500), batch_size=2, warmup=0, iters=2)
    # 500 px wide: ceil((500 - 40) / 160) = 3 windows; 300 high: ceil(260 / 160) = 2 -> 6 per image
    assert res.tiles_per_image == 6
    assert res.untiled.iters == res.tiled.iters == 2
    assert res.tiled_tiles_per_s == pytest.approx(6 * res.tiled_fps)
    assert res.untiled_fps > 0 and res.tiled_fps > 0
    assert res.slowdown == pytest.approx(res.untiled_fps / res.tiled_fps)
    assert res.tiling["scale"] == 1.0


def test_benchmark_cli_tiled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model: {width_mult: 0.0625}\ndata: {classes: [a, b]}\n"
        "input: {tiling: {enabled: true, scale: 0.5, tile: 128, overlap: 16}}\n"
        f"priors: {json.dumps(TINY_PRIORS)}\n",
        encoding="utf-8",
    )
    argv = [
        "--config",
        str(cfg),
        "--device",
        "cpu",
        "--orig-size",
        "240x320",
        "--warmup",
        "0",
        "--iters",
        "1",
    ]
    assert main([*argv, "--tiled", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # window 256 original px: x starts 0, 64 (2 windows), y one window of 240 -> 2 tiles
    assert out["tiled"]["tiles_per_image"] == 2 and out["tiled"]["tiled_fps"] > 0
