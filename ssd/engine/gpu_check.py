"""One prepared device check: correctness tests, inference and training speed, memory.

`run_check(options)` runs, in one process and in this order:

1. tests: the `gpu`-marked tests (`tests/gpu`: device vs CPU agreement of priors, matcher, loss,
   decode + NMS; a mixed-precision training step stays finite; resume on the device), through
   pytest in a subprocess with `SSD_CHECK_DEVICE` set to the checked device;
2. inference: end to end (uint8 images -> resize + normalise -> network -> decode + NMS ->
   detections) and network-only images/s and p50/p95 latency at each batch size and precision,
   ours (default runtime settings: channels_last) interleaved with torchvision's SSD512 (as it
   ships: NCHW) in the same process (`ssd.engine.benchmark.benchmark`), with the peak memory;
3. training: images/s of full training steps (loader with augmentation, host-to-device copy,
   forward and loss under the resolved mixed precision, backward, optimizer step) at the
   training batch size on synthetic images, with the peak memory.

`write_report` writes `<output_dir>/<device name>.md` and `.json`. With `quick` everything runs at
tiny sizes (a width-1/8 network; torchvision's SSD pipeline over that same small backbone) so the
check itself can run on a CPU in CI.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from ssd.config import Config, config_from_dict, config_to_dict, replace
from ssd.engine.benchmark import BenchmarkReport, SpeedRatio, benchmark, device_name, synchronizer
from ssd.engine.torchvision_baseline import build_torchvision_ssd512, small_torchvision_ssd
from ssd.inference.runtime import DeviceCaps, resolve_train_runtime
from ssd.inference.settings import InferenceSettings
from ssd.modeling.build import build_model

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO_ROOT / "tests" / "gpu"

# What the check is held against on an H100/H200-class GPU.
TARGETS = {
    "end_to_end_bf16_batch64_images_per_s": 2000.0,
    "end_to_end_bf16_batch64_vs_torchvision": 1.5,
    "batch1_latency_ms": 4.0,
    "train_amp_batch32_images_per_s": 500.0,
}
_TARGET_GPUS = ("H100", "H200")

# Quick training: the smallest input with the SSD512 layout of source maps (34/17/9/5/3/2/1).
_QUICK_TRAIN_PRIORS = {
    "image_size": 272,
    "feature_maps": [34, 17, 9, 5, 3, 2, 1],
    "steps": [8, 16, 30, 54, 91, 136, 272],
    "min_sizes": [19, 41, 82, 122, 163, 204, 245],
    "max_sizes": [41, 82, 122, 163, 204, 245, 286],
}


@dataclass(frozen=True)
class CheckSizes:
    """The resolved sizes of a check: inference batch sizes and precisions, warm-up and timed
    iterations, the training batch size and iterations, loader workers."""

    batch_sizes: list[int]
    precisions: list[str]
    warmup: int
    iters: int
    train_batch_size: int
    train_iters: int
    num_workers: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CheckOptions:
    """What to run. `None` sizes take the full (GPU) or quick defaults."""

    device: str = "cuda"
    quick: bool = False
    batch_sizes: Sequence[int] | None = None
    precisions: Sequence[str] | None = None
    warmup: int | None = None
    iters: int | None = None
    train_batch_size: int | None = None
    train_iters: int | None = None
    num_workers: int | None = None
    run_tests: bool = True
    tests_dir: Path = field(default_factory=lambda: TESTS_DIR)
    tests_timeout_s: float = 420.0

    def resolved(self) -> CheckSizes:
        cpu = torch.device(self.device).type == "cpu"
        q = self.quick
        return CheckSizes(
            batch_sizes=list(self.batch_sizes or ((1, 2) if q else (1, 64))),
            precisions=list(self.precisions or (("fp32",) if q and cpu else ("fp32", "fp16", "bf16"))),
            warmup=self.warmup if self.warmup is not None else (1 if q else 10),
            iters=self.iters if self.iters is not None else (3 if q else 50),
            train_batch_size=self.train_batch_size or (2 if q else 32),
            train_iters=self.train_iters or (3 if q else 30),
            num_workers=(
                self.num_workers
                if self.num_workers is not None
                else (0 if q else min(8, os.cpu_count() or 1))
            ),
        )


def _without_none(obj: Any, *keep: str) -> dict[str, Any]:
    """A dataclass's fields in order, as JSON, leaving out the ones that are None (except `keep`)."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is None and f.name not in keep:
            continue
        out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
    return out


@dataclass(frozen=True)
class GpuTest:
    """One gpu-marked test: its name, seconds, outcome (passed / failed / skipped) and message."""

    name: str
    seconds: float
    outcome: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GpuTests:
    """The gpu-marked tests: `status` (passed / failed / not run) and, when pytest was not run or
    did not finish, the `reason`; otherwise the command, its return code, seconds, counts, the
    tests and the tail of pytest's output (on failure)."""

    status: str
    reason: str | None = None
    command: str | None = None
    returncode: int | None = None
    seconds: float | None = None
    passed: int | None = None
    failed: int | None = None
    skipped: int | None = None
    tests: list[GpuTest] | None = None
    output_tail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = _without_none(self)
        if self.tests is not None:
            out["tests"] = [t.to_dict() for t in self.tests]
        return out


@dataclass(frozen=True)
class Timing:
    """Images/s and batch latency (p50, p95, min ms) of one part of the pipeline."""

    images_per_s: float
    p50_ms: float
    p95_ms: float
    min_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelTiming:
    """One model's network and end-to-end timing at one batch size and precision."""

    network: Timing
    end_to_end: Timing
    detections_per_image: float | None
    channels_last: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "network": self.network.to_dict(),
            "end_to_end": self.end_to_end.to_dict(),
            "detections_per_image": self.detections_per_image,
            "channels_last": self.channels_last,
        }


@dataclass(frozen=True)
class InferenceRun:
    """One batch size and precision: ours and torchvision's timing, their ratio and the peak
    memory, or the `error` that stopped it."""

    batch_size: int
    precision: str
    error: str | None = None
    ours: ModelTiming | None = None
    torchvision: ModelTiming | None = None
    speed_ratio: SpeedRatio | None = None
    peak_memory_mib: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none(self)


@dataclass(frozen=True)
class InferenceSection:
    """What was timed (input, both models, iterations) and the runs."""

    image: str
    ours: str
    torchvision: str
    warmup: int
    iters: int
    runs: list[InferenceRun]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["runs"] = [r.to_dict() for r in self.runs]
        return out


@dataclass(frozen=True)
class TrainingSection:
    """Images/s and step latency of full training steps with the runtime they ran under, or the
    `error` that stopped them (then the other fields are None)."""

    error: str | None = None
    batch_size: int | None = None
    amp: str | None = None
    grad_scaler: bool | None = None
    runtime: dict[str, Any] | None = None
    loader_workers: int | None = None
    data: str | None = None
    input_size: int | None = None
    dataset_prepare_s: float | None = None
    warmup_steps: int | None = None
    steps: int | None = None
    images_per_s: float | None = None
    step_p50_ms: float | None = None
    step_p95_ms: float | None = None
    losses_finite: bool | None = None
    last_loss: float | None = None
    peak_memory_mib: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none(self)


@dataclass(frozen=True)
class MemorySection:
    """Peak memory of inference (largest run) and training, how it was measured (`kind`), and the
    device's total memory (CUDA)."""

    inference_peak_mib: float | None
    training_peak_mib: float | None
    kind: str
    device_total_mib: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none(self, "inference_peak_mib", "training_peak_mib")


@dataclass(frozen=True)
class TargetsSection:
    """The measured figures against `TARGETS` and whether each is met (None: not measured), or
    why the targets do not apply."""

    applies: bool
    reason: str | None = None
    targets: dict[str, float] | None = None
    measured: dict[str, float] | None = None
    met: dict[str, bool | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _without_none(self)


@dataclass(frozen=True)
class Environment:
    """The device, the library versions and the date of a check."""

    device: str
    device_type: str
    device_name: str
    capability: list[int] | None
    native_bf16: bool
    torch: str
    torchvision: str
    cuda: str | None
    cudnn: int | None
    python: str
    cpu_threads: int
    quick: bool
    date_utc: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckResult:
    """A whole check (`run_check`); `to_dict()` is the JSON report."""

    environment: Environment
    sizes: CheckSizes
    tests: GpuTests
    inference: InferenceSection
    training: TrainingSection
    memory: MemorySection
    targets: TargetsSection
    seconds: float
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment.to_dict(),
            "sizes": self.sizes.to_dict(),
            "tests": self.tests.to_dict(),
            "inference": self.inference.to_dict(),
            "training": self.training.to_dict(),
            "memory": self.memory.to_dict(),
            "targets": self.targets.to_dict(),
            "seconds": self.seconds,
            "ok": self.ok,
        }


def report_stem(name: str) -> str:
    """A file name for a device name: 'NVIDIA H100 80GB HBM3' -> 'NVIDIA-H100-80GB-HBM3'."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return stem or "device"


def _percentile(times_ms: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(times_ms, dtype=np.float64), q))


def _peak_reset(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_mib(dev: torch.device) -> float:
    """Peak device memory since the last reset (CUDA), or the process's peak resident set (CPU)."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --------------------------------------------------------------------------- 1. tests


def run_tests(dev: torch.device, tests_dir: Path, timeout_s: float) -> GpuTests:
    """The `gpu`-marked tests under `tests_dir` via pytest (subprocess, `SSD_CHECK_DEVICE`=dev).
    Returns counts and per-test outcomes from pytest's JUnit XML."""
    if not tests_dir.is_dir():
        return GpuTests("not run", reason=f"{tests_dir} not found (run from a source checkout)")
    with tempfile.TemporaryDirectory(prefix="ssd-gpu-check-") as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [
            sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
            f"--junitxml={xml}", str(tests_dir),
        ]  # fmt: skip
        env = {**os.environ, "SSD_CHECK_DEVICE": str(dev)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            return GpuTests("failed", reason=f"pytest did not finish within {timeout_s:.0f} s")
        seconds = time.perf_counter() - start
        tests = _junit_cases(xml) if xml.is_file() else []
    passed, failed, skipped = (sum(t.outcome == k for t in tests) for k in ("passed", "failed", "skipped"))
    ok = proc.returncode == 0 and failed == 0 and passed > 0
    return GpuTests(
        status="passed" if ok else "failed",
        command=f"python -m pytest -m gpu {tests_dir}",
        returncode=proc.returncode,
        seconds=seconds,
        passed=passed,
        failed=failed,
        skipped=skipped,
        tests=tests,
        output_tail=(proc.stdout + proc.stderr)[-3000:] if not ok else "",
    )


def _junit_cases(path: Path) -> list[GpuTest]:
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        message = ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", (child.get("message") or "")[:300]
            elif child.tag == "skipped":
                outcome, message = "skipped", (child.get("message") or "")[:300]
        cases.append(GpuTest(case.get("name", ""), float(case.get("time", 0)), outcome, message))
    return cases


# --------------------------------------------------------------------------- 2. inference


def _timing_row(res: BenchmarkReport) -> ModelTiming:
    network, e2e = (
        Timing(t.images_per_s, t.median_ms, _percentile(t.times_ms, 95), t.min_ms)
        for t in (res.network, res.end_to_end)
    )
    return ModelTiming(network, e2e, res.end_to_end.detections_per_image, res.channels_last)


def run_inference(
    cfg: Config, dev: torch.device, sizes: CheckSizes, quick: bool, progress: Callable[[str], None]
) -> InferenceSection:
    settings = InferenceSettings.from_config(cfg)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if quick:
        tv = small_torchvision_ssd(cfg, settings)
        tv_desc = "torchvision SSD (transform, head, default boxes, post-processing) over our small backbone"
    else:
        tv = build_torchvision_ssd512(cfg.num_classes, settings)
        tv_desc = "torchvision SSD512-VGG16 (highres extractor in the SSD512 layout), untrained"
    runs: list[InferenceRun] = []
    for bs in sizes.batch_sizes:
        for precision in sizes.precisions:
            progress(f"inference batch {bs} {precision}")
            _peak_reset(dev)
            try:
                res = benchmark(
                    model, model.priors(), settings, batch_size=bs, precision=precision, device=dev,
                    warmup=sizes.warmup, iters=sizes.iters, channels_last=settings.channels_last,
                    orig_size=(480, 640), torchvision_model=tv, torchvision_channels_last=False,
                    flops=False,
                )  # fmt: skip
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                runs.append(InferenceRun(bs, precision, error=str(exc).splitlines()[0][:300]))
                continue
            assert res.torchvision is not None and res.speed_ratio is not None
            runs.append(
                InferenceRun(
                    bs, precision, ours=_timing_row(res), torchvision=_timing_row(res.torchvision),
                    speed_ratio=res.speed_ratio, peak_memory_mib=_peak_mib(dev),
                )
            )  # fmt: skip
    model.cpu()
    tv.cpu()
    width = f"width {cfg.model.width_mult}" if cfg.model.width_mult != 1 else "full width"
    size = cfg.priors.image_size
    return InferenceSection(
        image="uint8 RGB 480x640 (HxW), resident on the device",
        ours=f"ssd512 {width}, {size}x{size}, channels_last={cfg.inference.channels_last}, eager",
        torchvision=tv_desc + ", NCHW, eager",
        warmup=sizes.warmup,
        iters=sizes.iters,
        runs=runs,
    )


# --------------------------------------------------------------------------- 3. training


def run_training(
    cfg: Config, dev: torch.device, sizes: CheckSizes, data_root: Path, quick: bool
) -> TrainingSection:
    """Images/s of full training steps, loader included, at the resolved mixed precision."""
    from ssd.data.loader import build_train_loader
    from ssd.engine.train import build_optimizer
    from ssd.inference.runtime import apply_cudnn_benchmark
    from ssd.losses import MultiBoxLoss

    bs = sizes.train_batch_size
    n_img = max(4 * bs, 8) if quick else 256
    img_size = [320, 240] if quick else [800, 600]
    from ssd.data.labelme import TIANCHI_CLASSES

    tcfg = config_from_dict(
        {
            **config_to_dict(cfg),
            "data": {
                "format": "synthetic", "root": str(data_root), "classes": list(TIANCHI_CLASSES),
                "num_workers": sizes.num_workers, "synthetic_num_images": n_img,
                "synthetic_size": img_size, "synthetic_val_fraction": 0.25,
            },
            "train": {**config_to_dict(cfg)["train"], "batch_size": bs, "warmup_iters": 0},
            **({"priors": _QUICK_TRAIN_PRIORS} if quick else {}),
        }
    )  # fmt: skip
    rt = resolve_train_runtime(tcfg, DeviceCaps.of(dev))
    if dev.type == "cuda":
        apply_cudnn_benchmark(rt.cudnn_benchmark)
    t0 = time.perf_counter()
    loader = build_train_loader(tcfg)
    prepare_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model = build_model(tcfg).to(dev).train()
    if tcfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, tcfg)
    scaler = torch.amp.GradScaler(dev.type, enabled=rt.grad_scaler)
    crit = MultiBoxLoss(tcfg.matcher.iou_threshold, tcfg.loss.neg_pos_ratio, tcfg.priors.variances)
    sync = synchronizer(dev)
    batches = iter(loader)
    warm, iters = (1, sizes.train_iters) if quick else (5, sizes.train_iters)
    losses: list[float] = []
    _peak_reset(dev)
    step_times: list[float] = []
    start = 0.0
    for i in range(warm + iters):
        if i == warm:
            sync()
            start = time.perf_counter()
        t = time.perf_counter()
        batch = next(batches)
        images = batch.images.to(dev, non_blocking=rt.non_blocking)
        if tcfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = batch.targets.to(dev)
        with rt.autocast(dev.type):
            out = model(images)
        loss = crit(out, targets, model.priors()).total
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))  # synchronises
        if i >= warm:
            step_times.append(time.perf_counter() - t)
    sync()
    total = time.perf_counter() - start
    model.cpu()
    del loader, batches
    return TrainingSection(
        batch_size=bs,
        amp=rt.amp,
        grad_scaler=rt.grad_scaler,
        runtime=rt.to_dict(),
        loader_workers=sizes.num_workers,
        data=f"{n_img} synthetic {img_size[0]}x{img_size[1]} images, training augmentation",
        input_size=tcfg.priors.image_size,
        dataset_prepare_s=prepare_s,
        warmup_steps=warm,
        steps=iters,
        images_per_s=bs * iters / total,
        step_p50_ms=1e3 * float(np.median(step_times)),
        step_p95_ms=1e3 * _percentile(step_times, 95),
        losses_finite=all(np.isfinite(losses)),
        last_loss=losses[-1],
        peak_memory_mib=_peak_mib(dev),
    )


# --------------------------------------------------------------------------- the check


def _targets(env: Environment, inference: InferenceSection, training: TrainingSection) -> TargetsSection:
    """Measured figures against `TARGETS` (H100/H200 class GPUs only)."""
    name = env.device_name
    if env.device_type != "cuda" or not any(g in name for g in _TARGET_GPUS):
        return TargetsSection(False, reason=f"targets are set for H100/H200 GPUs, not {name}")
    runs = [r for r in inference.runs if r.error is None]

    def find(bs: int, precision: str | None = None) -> list[InferenceRun]:
        return [r for r in runs if r.batch_size == bs and precision in (None, r.precision)]

    measured: dict[str, float] = {}
    b64 = find(64, "bf16")
    if b64:
        assert b64[0].ours is not None and b64[0].speed_ratio is not None
        measured["end_to_end_bf16_batch64_images_per_s"] = b64[0].ours.end_to_end.images_per_s
        measured["end_to_end_bf16_batch64_vs_torchvision"] = b64[0].speed_ratio.end_to_end
    b1 = [r.ours for r in find(1) if r.ours is not None]
    if b1:
        measured["batch1_latency_ms"] = min(t.end_to_end.p50_ms for t in b1)
    if training.images_per_s is not None:
        measured["train_amp_batch32_images_per_s"] = training.images_per_s
    met: dict[str, bool | None] = {}
    for key, target in TARGETS.items():
        value = measured.get(key)
        met[key] = None if value is None else (value <= target if key.endswith("_ms") else value >= target)
    return TargetsSection(True, targets=TARGETS, measured=measured, met=met)


def run_check(options: CheckOptions, progress: Callable[[str], None] | None = None) -> CheckResult:
    """Run every section (see the module docstring); `to_dict()` of the result is the JSON report."""
    say = progress or (lambda msg: log.info("%s", msg))
    dev = torch.device(options.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but CUDA is not available on this machine")
    sizes = options.resolved()
    cfg = Config()
    if options.quick:
        cfg = replace(cfg, **{"model.width_mult": 0.125})
    caps = DeviceCaps.of(dev)
    started = time.perf_counter()
    env = Environment(
        device=str(dev),
        device_type=dev.type,
        device_name=device_name(dev),
        capability=list(caps.capability) if caps.capability else None,
        native_bf16=caps.bf16,
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if dev.type == "cuda" else None,  # type: ignore[no-untyped-call, unused-ignore]
        python=platform.python_version(),
        cpu_threads=torch.get_num_threads(),
        quick=options.quick,
        date_utc=time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    )
    if options.run_tests:
        say("tests (pytest -m gpu)")
        tests = run_tests(dev, options.tests_dir, options.tests_timeout_s)
    else:
        tests = GpuTests("not run", reason="disabled (--skip-tests)")
    inference = run_inference(cfg, dev, sizes, options.quick, say)
    say(f"training (batch {sizes.train_batch_size})")
    with tempfile.TemporaryDirectory(prefix="ssd-gpu-check-data-") as tmp:
        try:
            training = run_training(cfg, dev, sizes, Path(tmp), options.quick)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            training = TrainingSection(error=str(exc).splitlines()[0][:300])
    memory = MemorySection(
        inference_peak_mib=max(
            (0.0 if r.peak_memory_mib is None else r.peak_memory_mib for r in inference.runs), default=None
        ),
        training_peak_mib=training.peak_memory_mib,
        kind="torch.cuda.max_memory_allocated" if dev.type == "cuda" else "process peak resident set (CPU)",
        device_total_mib=(
            torch.cuda.get_device_properties(dev).total_memory / 2**20 if dev.type == "cuda" else None
        ),
    )
    ok_tests = tests.status in ("passed", "not run")
    ok_inf = all(r.error is None for r in inference.runs)
    ok_train = training.error is None and bool(training.losses_finite)
    return CheckResult(
        environment=env,
        sizes=sizes,
        tests=tests,
        inference=inference,
        training=training,
        memory=memory,
        targets=_targets(env, inference, training),
        seconds=time.perf_counter() - started,
        ok=ok_tests and ok_inf and ok_train,
    )


# --------------------------------------------------------------------------- report


def _f(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def format_markdown(result: CheckResult) -> str:
    env = result.environment
    lines = [
        f"# Device check: {env.device_name}",
        "",
        f"{env.date_utc} UTC, device `{env.device}`"
        + (f" (compute capability {'.'.join(map(str, env.capability))})" if env.capability else "")
        + f", torch {env.torch}, torchvision {env.torchvision}, CUDA {env.cuda}, "
        f"cuDNN {env.cudnn}, {env.cpu_threads} CPU threads"
        + (", **quick mode (tiny sizes)**" if env.quick else "")
        + f". Whole check: {result.seconds:.0f} s. Overall: **{'ok' if result.ok else 'FAILED'}**.",
        "",
        "## Tests",
        "",
    ]
    t = result.tests
    if t.status == "not run":
        lines.append(f"Not run: {t.reason}.")
    else:
        lines.append(
            f"`{t.command or ''}`: **{t.status}** ({t.passed or 0} passed, "
            f"{t.failed or 0} failed, {t.skipped or 0} skipped, {t.seconds or 0:.0f} s)."
        )
        if t.tests:
            lines += ["", "| test | outcome | s |", "|---|---|---|"]
            lines += [f"| {c.name} | {c.outcome} | {c.seconds:.1f} |" for c in t.tests]
        if t.reason:
            lines.append(t.reason)
    inf = result.inference
    lines += [
        "",
        "## Inference",
        "",
        f"Input: {inf.image}. Ours: {inf.ours}. torchvision: {inf.torchvision}. "
        f"Both timed interleaved, {inf.warmup} warm-up + {inf.iters} timed iterations each; "
        "end to end = pre-processing + network + decode + NMS + rescale; latency per batch.",
        "",
        "| batch | precision | model | end-to-end images/s | p50 ms | p95 ms | network images/s | "
        "network p50 ms | ours/torchvision (e2e) | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in inf.runs:
        if r.error is not None or r.ours is None or r.torchvision is None:
            lines.append(f"| {r.batch_size} | {r.precision} | error: {r.error} |||||||")
            continue
        for name, m in (("ours", r.ours), ("torchvision", r.torchvision)):
            ratio = _f(r.speed_ratio.end_to_end if r.speed_ratio else None, ".2f") if name == "ours" else ""
            peak = _f(r.peak_memory_mib, ".0f") if name == "ours" else ""
            lines.append(
                f"| {r.batch_size} | {r.precision} | {name} | {m.end_to_end.images_per_s:.1f} | "
                f"{m.end_to_end.p50_ms:.2f} | {m.end_to_end.p95_ms:.2f} | "
                f"{m.network.images_per_s:.1f} | {m.network.p50_ms:.2f} | {ratio} | {peak} |"
            )
    tr = result.training
    lines += ["", "## Training", ""]
    if tr.error is not None:
        lines.append(f"Error: {tr.error}")
    else:
        lines.append(
            f"Batch {tr.batch_size}, mixed precision **{tr.amp}** "
            f"(gradient scaler: {tr.grad_scaler}), "
            f"{tr.loader_workers} loader workers, {tr.data}, network input "
            f"{tr.input_size}x{tr.input_size}; {tr.steps} timed steps after "
            f"{tr.warmup_steps} warm-up, each: next batch from the loader, copy, forward + loss, "
            f"backward, optimizer step. **{_f(tr.images_per_s)} images/s**, step p50 "
            f"{_f(tr.step_p50_ms)} ms, p95 {_f(tr.step_p95_ms)} ms; losses finite: "
            f"{tr.losses_finite} (last {_f(tr.last_loss, '.3f')}). Runtime: `{tr.runtime}`."
        )
    mem = result.memory
    lines += [
        "",
        "## Memory",
        "",
        f"Peak ({mem.kind}): inference {_f(mem.inference_peak_mib, '.0f')} MiB (largest run, both "
        f"models), training {_f(mem.training_peak_mib, '.0f')} MiB"
        + (f", device total {mem.device_total_mib:.0f} MiB." if mem.device_total_mib is not None else "."),
        "",
        "## Targets",
        "",
    ]
    tg = result.targets
    if not tg.applies or tg.targets is None:
        lines.append(f"Not applicable: {tg.reason}.")
    else:
        measured, met = tg.measured or {}, tg.met or {}
        lines += ["| figure | target | measured | met |", "|---|---|---|---|"]
        for key, target in tg.targets.items():
            lines.append(f"| {key} | {target} | {_f(measured.get(key), '.2f')} | {met.get(key)} |")
    return "\n".join(lines) + "\n"


def write_report(result: CheckResult, output_dir: str | Path) -> tuple[Path, Path]:
    """Write `<output_dir>/<device name>.md` and `.json`; returns both paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = report_stem(result.environment.device_name)
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    md.write_text(format_markdown(result), encoding="utf-8")
    js.write_text(json.dumps(result.to_dict(), indent=2, default=float) + "\n", encoding="utf-8")
    return md, js


__all__ = ["CheckOptions", "CheckResult", "format_markdown", "report_stem", "run_check", "write_report"]
