"""The GPU check's verdicts and report on a made-up H100 result (no GPU needed)."""

from __future__ import annotations

from dataclasses import replace

from ssd.engine.benchmark import SpeedRatio
from ssd.engine.gpu_check import (
    CheckResult,
    CheckSizes,
    Environment,
    GpuTests,
    InferenceRun,
    InferenceSection,
    MemorySection,
    ModelTiming,
    TargetsSection,
    Timing,
    TrainingSection,
    _targets,
    format_markdown,
)


def _timing(images_per_s: float, p50: float) -> ModelTiming:
    part = Timing(images_per_s=images_per_s, p50_ms=p50, p95_ms=p50 * 1.2, min_ms=p50 * 0.9)
    return ModelTiming(network=part, end_to_end=part, detections_per_image=200.0, channels_last=True)


def _ratio(end_to_end: float) -> SpeedRatio:
    return SpeedRatio(network=end_to_end, end_to_end=end_to_end)


def _result(b64_bf16: float, ratio: float, b1_ms: float, train: float) -> CheckResult:
    runs = [
        InferenceRun(batch_size=1, precision="bf16", ours=_timing(1e3 / b1_ms, b1_ms),
                     torchvision=_timing(100.0, 10.0), speed_ratio=_ratio(2.0), peak_memory_mib=900.0),
        InferenceRun(batch_size=1, precision="fp32", ours=_timing(1e3 / (2 * b1_ms), 2 * b1_ms),
                     torchvision=_timing(50.0, 20.0), speed_ratio=_ratio(1.0), peak_memory_mib=900.0),
        InferenceRun(batch_size=64, precision="bf16", ours=_timing(b64_bf16, 64e3 / b64_bf16),
                     torchvision=_timing(b64_bf16 / ratio, 64e3 * ratio / b64_bf16),
                     speed_ratio=_ratio(ratio), peak_memory_mib=9000.0),
        InferenceRun(batch_size=64, precision="fp16", error="CUDA out of memory"),
    ]  # fmt: skip
    return CheckResult(
        environment=Environment(
            device="cuda", device_type="cuda", device_name="NVIDIA H100 80GB HBM3", capability=[9, 0],
            native_bf16=True, torch="2", torchvision="0", cuda="13", cudnn=9, python="3", cpu_threads=16,
            quick=False, date_utc="2026-12-03 10:00",
        ),
        sizes=CheckSizes([1, 64], ["bf16"], 10, 50, 32, 30, 8),
        tests=GpuTests(status="passed", command="python -m pytest -m gpu tests/gpu", passed=6,
                           failed=0, skipped=0, seconds=20.0, tests=[]),
        inference=InferenceSection(image="i", ours="o", torchvision="t", warmup=10, iters=50, runs=runs),
        training=TrainingSection(images_per_s=train, batch_size=32, amp="bf16", grad_scaler=False,
                                 loader_workers=8, data="d", input_size=512, steps=30, warmup_steps=5,
                                 step_p50_ms=60.0, step_p95_ms=70.0, losses_finite=True, last_loss=9.0,
                                 runtime={}, peak_memory_mib=20000.0),
        memory=MemorySection(inference_peak_mib=9000.0, training_peak_mib=20000.0, kind="k"),
        targets=TargetsSection(applies=False, reason="not yet computed"),
        seconds=300.0,
        ok=True,
    )  # fmt: skip


def _targets_of(result: CheckResult) -> TargetsSection:
    return _targets(result.environment, result.inference, result.training)


def test_targets_met_and_missed_on_an_h100() -> None:
    good = _targets_of(_result(b64_bf16=2500.0, ratio=1.6, b1_ms=3.0, train=600.0))
    assert good.applies and good.met is not None and all(good.met.values())
    assert good.measured is not None
    assert good.measured["batch1_latency_ms"] == 3.0  # the fastest batch-1 precision
    bad = _targets_of(_result(b64_bf16=1500.0, ratio=1.2, b1_ms=5.0, train=400.0))
    assert bad.met is not None and not any(bad.met.values())
    assert bad.measured is not None and bad.measured["end_to_end_bf16_batch64_vs_torchvision"] == 1.2


def test_targets_do_not_apply_to_other_devices() -> None:
    result = _result(2500.0, 1.6, 3.0, 600.0)
    rtx = replace(result.environment, device_name="NVIDIA GeForce RTX 2080 Ti")
    result = replace(result, environment=rtx)
    assert _targets_of(result).applies is False


def test_markdown_lists_errors_and_targets() -> None:
    result = _result(2500.0, 1.6, 3.0, 600.0)
    result = replace(result, targets=_targets_of(result))
    text = format_markdown(result)
    assert "| 64 | fp16 | error: CUDA out of memory |" in text
    assert "| 64 | bf16 | ours | 2500.0 |" in text
    assert "| batch1_latency_ms | 4.0 | 3.00 | True |" in text
    assert "compute capability 9.0" in text and "**bf16**" in text
