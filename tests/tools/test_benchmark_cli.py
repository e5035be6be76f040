"""ssd-benchmark end to end on a tiny config: JSON summary, output files, sweep, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ssd.cli.benchmark import main
from ssd.config import config_from_dict, config_to_dict
from ssd.inference.checkpoint import save_checkpoint
from ssd.modeling.build import build_model
from tests.engine.test_benchmark import TINY, TINY_PRIORS

FAST = ["--device", "cpu", "--warmup", "0", "--iters", "2", "--threads", "1", "--orig-size", "48x64"]


@pytest.fixture(autouse=True)
def _restore_threads() -> object:
    threads = torch.get_num_threads()  # --threads 1 sets the process-wide count
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(TINY))  # JSON is YAML
    return path


def test_cli_json_single_run(tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "bench"
    rc = main(
        ["--config", str(tiny_yaml), "--batch-size", "2", "--json", "--output-dir", str(out_dir), *FAST]
    )
    assert rc == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # stdout is pure JSON
    for key in ("network_fps", "end_to_end_fps", "includes", "device", "batch_size", "precision"):
        assert key in summary, key
    assert summary["batch_size"] == 2 and summary["precision"] == "fp32" and summary["device"] == "cpu"
    assert math.isfinite(summary["network_fps"]) and summary["network_fps"] > 0
    assert math.isfinite(summary["end_to_end_fps"]) and summary["end_to_end_fps"] > 0
    assert set(summary["includes"]) == {"network", "end_to_end"}
    assert summary["num_priors"] == TINY_PRIORS and summary["iters"] == 2
    assert "end to end" in captured.err  # the readable table goes to stderr with --json
    assert json.loads((out_dir / "benchmark.json").read_text())["batch_size"] == 2
    assert "| ours | 2 | fp32 | network |" in (out_dir / "benchmark.md").read_text()


def test_cli_table_without_json(tiny_yaml: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tiny_yaml), *FAST]) == 0
    out = capsys.readouterr().out
    assert "median ms" in out and "| ours | 1 | fp32 | end to end |" in out


def test_cli_sweep(tiny_yaml: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--config", str(tiny_yaml), "--sweep", "--sweep-batch-sizes", "1,2", "--sweep-precisions", "fp32"]
    assert main([*args, "--json", *FAST]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sweep"] is True
    assert [(r["batch_size"], r["precision"]) for r in summary["runs"]] == [(1, "fp32"), (2, "fp32")]
    assert all(r["end_to_end_fps"] > 0 for r in summary["runs"])


def test_cli_uses_checkpoint_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config_from_dict(TINY)
    ckpt = save_checkpoint(
        {"model": build_model(cfg).state_dict(), "config": config_to_dict(cfg)}, tmp_path / "m.pt"
    )
    assert main(["--checkpoint", str(ckpt), "--json", *FAST]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["image_size"] == 320 and summary["checkpoint"] == str(ckpt)


def test_cli_errors(tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "missing.yaml"), *FAST]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert main(["--config", str(tiny_yaml), "--set", "priors.image_size=-1", *FAST]) == 2
    assert "priors.image_size" in capsys.readouterr().err
    assert main(["--config", str(tiny_yaml), "--vs-torchvision", *FAST]) == 2
    assert "512" in capsys.readouterr().err
    assert main(["--config", str(tiny_yaml), "--sweep", "--sweep-precisions", "fp8", *FAST]) == 2
    assert "--sweep-precisions" in capsys.readouterr().err
    assert main(["--config", str(tiny_yaml), *FAST[:-1], "big"]) == 2
    assert "--orig-size" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cli_cuda_unavailable(tiny_yaml: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tiny_yaml), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
