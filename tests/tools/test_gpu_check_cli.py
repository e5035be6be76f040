"""`ssd-gpu-check --device cpu --quick`: every section runs and lands in the .md and .json report
(this is how CI keeps the GPU check from rotting); plus its report naming and argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssd.cli.gpu_check import main
from ssd.engine.gpu_check import report_stem


def test_quick_cpu_check_writes_every_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    rc = main(["--device", "cpu", "--quick", "--output-dir", str(out)])
    printed = capsys.readouterr().out
    (js,) = out.glob("*.json")
    (md,) = out.glob("*.md")
    assert js.stem == md.stem
    result = json.loads(js.read_text())
    assert rc == 0, printed
    assert result["ok"] and result["environment"]["device_type"] == "cpu" and result["environment"]["quick"]
    tests = result["tests"]
    assert tests["status"] == "passed" and tests["failed"] == 0 and tests["passed"] >= 6
    names = {t["name"] for t in tests["tests"]}
    assert {"test_decode_and_nms_agree", "test_amp_training_step_is_finite", "test_resume_on_device"} <= names
    runs = result["inference"]["runs"]
    assert [(r["batch_size"], r["precision"]) for r in runs] == [(1, "fp32"), (2, "fp32")]
    for r in runs:
        for model in ("ours", "torchvision"):
            e2e = r[model]["end_to_end"]
            assert e2e["images_per_s"] > 0 and 0 < e2e["p50_ms"] <= e2e["p95_ms"]
            assert r[model]["detections_per_image"] > 0
        assert r["speed_ratio"]["end_to_end"] > 0 and r["peak_memory_mib"] > 0
    train = result["training"]
    assert train["batch_size"] == 2 and train["amp"] == "fp32" and train["losses_finite"]
    assert train["images_per_s"] > 0 and train["steps"] == 3
    assert result["memory"]["training_peak_mib"] > 0 and result["memory"]["inference_peak_mib"] > 0
    assert result["targets"]["applies"] is False
    text = md.read_text()
    for heading in ("## Tests", "## Inference", "## Training", "## Memory", "## Targets"):
        assert heading in text
    assert "| 2 | fp32 | torchvision |" in text and "test_resume_on_device | passed" in text
    assert printed.rstrip("\n") == text.rstrip("\n")


def test_report_stem() -> None:
    assert report_stem("NVIDIA H100 80GB HBM3") == "NVIDIA-H100-80GB-HBM3"
    assert report_stem("AMD EPYC 7B13 64-Core Processor") == "AMD-EPYC-7B13-64-Core-Processor"
    assert report_stem("///") == "device"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-sizes", "1,x"], "--batch-sizes"),
        (["--precisions", "fp8"], "--precisions"),
        (["--iters", "0"], "--iters"),
        (["--workers", "-1"], "--workers"),
    ],
)
def test_bad_arguments_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--device", "cpu", "--quick", *args]) == 2
    assert message in capsys.readouterr().err
