"""tools/bench_loader.py on a tiny synthetic config: JSON summary, output file, usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssd.config import save_config
from tests.engine.test_train import tiny_cfg
from tools.bench_loader import main


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    save_config(tiny_cfg(tmp_path / "data"), path)  # 8 synthetic 320x240 images, 272 input
    return path


@pytest.mark.parametrize("workers", [0, 1])
def test_json_summary_counts_the_timed_images(
    tiny_yaml: Path, tmp_path: Path, workers: int, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "bench"
    argv = ["--config", str(tiny_yaml), "--num-workers", str(workers), "--batch-size", "3"]
    rc = main([*argv, "--iters", "3", "--warmup", "1", "--json", "--quiet", "--output-dir", str(out_dir)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_workers"] == workers and summary["batch_size"] == 3
    assert summary["images"] == 9 and summary["batches"] == 3  # batches straddle the 6-image epoch
    assert summary["image_shape"] == [3, 272, 272]
    assert summary["images_per_s"] == pytest.approx(9 / summary["seconds"])
    assert summary["ms_per_batch"] == pytest.approx(1000 * summary["seconds"] / 3)
    assert summary["first_batch_s"] > 0
    assert json.loads((out_dir / "bench_loader.json").read_text()) == summary


def test_text_output_and_config_batch_size(tiny_yaml: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tiny_yaml), "--iters", "1", "--warmup", "0", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "images/s" in out and "per batch of 2" in out  # tiny_cfg's train.batch_size


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--iters", "0"], "--iters must be >= 1"),
        (["--num-workers", "-1"], "--num-workers must be >= 0"),
        (["--set", "train.no_such_key=1"], "train.no_such_key"),
    ],
)
def test_usage_errors_exit_2(
    tiny_yaml: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(tiny_yaml), "--quiet", *args]) == 2
    assert message in capsys.readouterr().err
