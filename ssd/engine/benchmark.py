"""Inference speed: the network alone and end to end, on CPU or CUDA, plus torchvision's SSD512.

Two timed loops share the same seeded uint8 images:

- network: forward of the pre-normalised float batch [B, 3, S, S] already on the device;
- end to end: uint8 images [3, H, W] -> resize + normalise on the device (`ssd.inference.detector.preprocess`)
  -> network -> `ssd.postprocess.postprocess` (softmax, decode, score filter, per-class top-k, one
  batched NMS, per-image cap, rescale to original pixels) -> per-image `Detections`.

Every call ends with a device synchronisation, so each timing is the full latency of one batch.
The timed callables (ours, and torchvision's when compared) run round-robin, so that all of them
see the same share of a shared machine's background load. FLOPs are counted once with
`torch.utils.flop_counter.FlopCounterMode` (a multiply-add is 2 FLOPs) on a meta-device copy of
the network, so counting costs no real compute.

torchvision's SSD512 (`ssd.engine.torchvision_baseline.build_torchvision_ssd512`) is timed the
same way, in the same process (`benchmark(..., torchvision_model=...)`, `benchmark_torchvision`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ssd.engine.torchvision_baseline import torchvision_default_boxes
from ssd.inference.detector import preprocess
from ssd.inference.settings import InferenceSettings
from ssd.modeling.ssd import TensorOutputs
from ssd.structures import Detections, HeadOutputs

log = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s by device-name substring; first match wins.
# Vendor data sheets: H100 SXM5 989.4, H100 PCIe 756, H200 (same GH100 die and clocks as H100
# SXM) 989.4, A100 312.
PEAK_BF16_DENSE_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
)

# --------------------------------------------------------------------------- helpers


def random_images(
    num: int, height: int, width: int, seed: int = 0, device: str | torch.device = "cpu"
) -> list[Tensor]:
    """`num` seeded uint8 RGB images [3, height, width]: smooth colour gradients plus noise, so
    that resizing and the network see natural-ish, non-constant input."""
    if num <= 0 or height <= 0 or width <= 0:
        raise ValueError(
            f"random_images: num, height and width must be positive, got {num}, {height}, {width}"
        )
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height)[:, None]
    xs = torch.linspace(0, 1, width)[None, :]
    images = []
    for _ in range(num):
        coef = torch.rand(3, 3, generator=g)
        base = coef[:, 0, None, None] * ys + coef[:, 1, None, None] * xs + 0.5 * coef[:, 2, None, None]
        noise = torch.rand(3, height, width, generator=g) * 0.3
        img = ((base / 2 + noise).clamp(0, 1) * 255).round().to(torch.uint8)
        images.append(img.to(device))
    return images


def device_name(device: torch.device) -> str:
    """GPU name from CUDA, CPU model name from /proc/cpuinfo (or `platform`) otherwise."""
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def peak_bf16_tflops(name: str) -> float | None:
    """Dense bf16 peak TFLOP/s of a GPU by its name (`PEAK_BF16_DENSE_TFLOPS`), None if unknown."""
    for key, peak in PEAK_BF16_DENSE_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast for "bf16"/"fp16", a no-op for "fp32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for `device` (CUDA synchronisation; nothing to wait for elsewhere)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def count_flops(model: nn.Module, image_size: int) -> int:
    """FLOPs of one forward of one [1, 3, S, S] image (2 per multiply-add), counted by
    `FlopCounterMode` on a meta-device copy of `model` (no real compute, no weights touched)."""
    meta = copy.deepcopy(model).to("meta")
    x = torch.empty(1, 3, image_size, image_size, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(x)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class TimingSummary:
    """Per-iteration batch latencies summarised: median / mean / p90 / min / max in ms,
    `images_per_s` (from the median) and `images_per_s_mean` (from the mean), every time in ms;
    `detections_per_image` (mean) for an end-to-end timing."""

    iters: int
    median_ms: float
    mean_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    images_per_s: float
    images_per_s_mean: float
    times_ms: list[float]
    detections_per_image: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.detections_per_image is None:
            del out["detections_per_image"]
        return out


def summarize_times(times_s: Sequence[float], batch_size: int) -> TimingSummary:
    """Per-iteration batch latencies (seconds) -> median / mean / p90 / min in ms and images/s
    (`images_per_s` from the median, `images_per_s_mean` from the mean)."""
    if not times_s:
        raise ValueError("no timed iterations")
    t = np.asarray(times_s, dtype=np.float64) * 1e3
    median = float(np.median(t))
    mean = float(t.mean())
    return TimingSummary(
        iters=len(times_s),
        median_ms=median,
        mean_ms=mean,
        p90_ms=float(np.percentile(t, 90)),
        min_ms=float(t.min()),
        max_ms=float(t.max()),
        images_per_s=batch_size / (median / 1e3),
        images_per_s_mean=batch_size / (mean / 1e3),
        times_ms=[float(v) for v in t],
    )


def time_interleaved(
    fns: Sequence[Callable[[], Any]], warmup: int, iters: int, sync: Callable[[], None]
) -> tuple[list[list[float]], list[Any]]:
    """Time several functions round-robin: `warmup` untimed rounds, then `iters` timed rounds;
    every call is followed by `sync()` and timed on its own. Interleaving gives every function the
    same share of whatever else the machine is doing (a shared CPU drifts by 2-3x within a minute).
    Returns per function its wall times (seconds) and its last result."""
    if warmup < 0 or iters <= 0:
        raise ValueError(f"need warmup >= 0 and iters > 0, got warmup={warmup}, iters={iters}")
    results: list[Any] = [None] * len(fns)
    for _ in range(warmup):
        for i, fn in enumerate(fns):
            results[i] = fn()
    sync()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(iters):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            results[i] = fn()
            sync()
            times[i].append(time.perf_counter() - start)
    return times, results


@contextlib.contextmanager
def _cudnn_benchmark(device: torch.device) -> Iterator[None]:
    """cuDNN autotuning on for CUDA runs (input shapes are fixed per run), restored after."""
    previous = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def _check_device(device: torch.device) -> None:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but CUDA is not available")


def _source_text(orig_size: tuple[int, int], on_host: bool, device: torch.device) -> str:
    where = (
        "copied from pinned host memory inside the timed region"
        if on_host and device.type == "cuda"
        else "resident on the device"
    )
    return f"uint8 RGB images {orig_size[0]}x{orig_size[1]} (HxW) {where}"


def _input_images(
    batch_size: int, orig_size: tuple[int, int], seed: int, images_on_host: bool, dev: torch.device
) -> list[Tensor]:
    host = random_images(batch_size, orig_size[0], orig_size[1], seed)
    if images_on_host and dev.type == "cuda":
        return [im.pin_memory() for im in host]
    return [im.to(dev) for im in host]


@dataclass(frozen=True)
class _Run:
    """The settings of one timed run, shared by every model it times (see `benchmark`)."""

    batch_size: int
    precision: str
    dev: torch.device
    channels_last: bool
    compile: bool
    compile_mode: str
    orig_size: tuple[int, int]
    images_on_host: bool
    seed: int
    flops: bool
    warmup: int
    iters: int

    @classmethod
    def checked(
        cls,
        batch_size: int,
        precision: str,
        device: str | torch.device,
        channels_last: bool,
        compile: bool,
        compile_mode: str,
        orig_size: tuple[int, int],
        images_on_host: bool,
        seed: int,
        flops: bool,
        warmup: int,
        iters: int,
    ) -> _Run:
        """The run after checking its device and counts; with `compile`, dynamo starts afresh."""
        dev = torch.device(device)
        _check_device(dev)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if warmup < 0 or iters <= 0:
            raise ValueError(f"need warmup >= 0 and iters > 0, got warmup={warmup}, iters={iters}")
        if compile:
            # fresh caches per run: every run compiles the same forward code object, and a sweep's
            # batch sizes x precisions would otherwise exceed dynamo's recompile limit (-> eager)
            torch._dynamo.reset()
        return cls(
            batch_size, precision, dev, channels_last, compile, compile_mode, orig_size, images_on_host,
            seed, flops, warmup, iters,
        )  # fmt: skip


@dataclass(frozen=True)
class SpeedRatio:
    """ours / theirs images per second (from median latencies): > 1 means we are faster."""

    network: float
    end_to_end: float

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _ModelInfo:
    """The static part of a model's report (see `BenchmarkReport`)."""

    model: str
    backend: str | None
    compile_mode: str | None
    image_size: int
    num_priors: int
    settings: InferenceSettings | None
    flops_per_image: int | None
    includes: dict[str, str]


# entries left out of `BenchmarkReport.to_dict` when None (torchvision's report has no backend
# and no settings; only a comparison has the last three)
_OPTIONAL = ("backend", "settings", "torchvision", "speed_ratio", "same_number_of_priors")


@dataclass(frozen=True)
class BenchmarkReport:
    """What `benchmark` / `benchmark_torchvision` measured: the model ("ours" or "torchvision"),
    its `backend` (ours), `compile_mode`, `image_size`, `num_priors`, pipeline `settings` (ours),
    FLOPs per image, what each timing `includes`, the run settings, the `network` and
    `end_to_end` timings and their images/s (`network_fps`, `end_to_end_fps`), achieved TFLOP/s
    and share of the GPU's dense bf16 peak (None when unknown or on CPU), versions; with a
    comparison also `torchvision` (its report), `speed_ratio` and `same_number_of_priors`."""

    model: str
    backend: str | None
    compile_mode: str | None
    image_size: int
    num_priors: int
    settings: InferenceSettings | None
    flops_per_image: int | None
    includes: dict[str, str]
    device: str
    device_name: str
    batch_size: int
    precision: str
    channels_last: bool
    compile: bool
    compile_s: float | None
    warmup: int
    iters: int
    orig_size: tuple[int, int]
    images_on_host: bool
    network: TimingSummary
    end_to_end: TimingSummary
    network_fps: float
    end_to_end_fps: float
    network_tflops: float | None
    end_to_end_tflops: float | None
    peak_bf16_tflops: float | None
    peak_share: float | None
    end_to_end_peak_share: float | None
    num_threads: int
    torch_version: str
    torchvision_version: str
    torchvision: BenchmarkReport | None = None
    speed_ratio: SpeedRatio | None = None
    same_number_of_priors: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (`benchmark.json`)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in _OPTIONAL:
                continue
            if isinstance(value, (TimingSummary, BenchmarkReport, SpeedRatio)):
                value = value.to_dict()
            elif isinstance(value, InferenceSettings):
                value = _pipeline_dict(value)
            elif f.name == "orig_size":
                value = list(value)
            out[f.name] = value
        return out


@dataclass
class _Prepared:
    """One model ready to time: its two timed callables, how to undo the preparation, how to
    count detections in an end-to-end result, the static part of its report and its run."""

    run_network: Callable[[], Any]
    run_end_to_end: Callable[[], Any]
    restore: Callable[[], None]
    count_detections: Callable[[Any], float]
    info: _ModelInfo
    run: _Run


def _prepare_ours(
    model: nn.Module,
    priors: Tensor,
    settings: InferenceSettings,
    run: _Run,
    backend: str = "eager",
    onnx_path: str | None = None,
) -> _Prepared:
    precision, dev, channels_last, compile = run.precision, run.dev, run.channels_last, run.compile
    compile_mode, orig_size, images_on_host = run.compile_mode, run.orig_size, run.images_on_host
    autocast = autocast_context(dev, precision)  # validates precision
    size = settings.image_size
    flops_per_image = count_flops(model, size) if run.flops else None  # before the move: copies on CPU
    model.eval().to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net: Callable[[Tensor], tuple[Tensor, Tensor]] = TensorOutputs(model)
    if backend != "eager":  # ONNX Runtime / OpenVINO on the exported network (CPU, fp32)
        from ssd.inference.backends import build_network

        if compile or precision != "fp32" or dev.type != "cpu":
            raise ValueError(f"backend {backend!r} runs on the CPU in fp32 without torch.compile")
        net = build_network(backend, model, size, onnx_path=onnx_path)
    if compile:
        net = torch.compile(net, mode=compile_mode)
    priors = priors.detach().to(dev, torch.float32)
    images = _input_images(run.batch_size, orig_size, run.seed, images_on_host, dev)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x, _ = preprocess(images, size, settings.mean, settings.std, dev)
    x = x.contiguous(memory_format=memory_format)

    def run_network() -> tuple[Tensor, Tensor]:
        with autocast:
            return net(x)

    def run_end_to_end() -> list[Detections]:
        batch, sizes = preprocess(images, size, settings.mean, settings.std, dev)
        batch = batch.contiguous(memory_format=memory_format)
        with autocast:
            logits, deltas = net(batch)
        return settings.postprocess(HeadOutputs(logits, deltas), priors, sizes)

    def restore() -> None:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)

    mode = f"torch.compile(mode={compile_mode!r})" if compile else backend
    if backend == "eager" and channels_last:
        mode += ", channels_last"
    amp = "fp32" if precision == "fp32" else f"autocast {precision}"
    info = _ModelInfo(
        model="ours",
        backend=backend,
        compile_mode=compile_mode if compile else None,
        image_size=size,
        num_priors=int(priors.shape[0]),
        settings=settings,
        flops_per_image=flops_per_image,
        includes={
            "network": (
                f"network forward only ({mode}, {amp}) on a pre-normalised float [B,3,{size},{size}] "
                "batch already on the device; device synchronised after every iteration"
            ),
            "end_to_end": (
                f"{_source_text(orig_size, images_on_host, dev)} -> resize to {size}x{size} (antialiased) "
                f"+ normalise on the device -> network ({mode}, {amp}) -> softmax, decode, score filter, "
                "per-class top-k, one batched NMS, per-image cap, rescale to original pixels -> "
                "per-image Detections; device synchronised after every iteration"
            ),
        },
    )
    return _Prepared(
        run_network, run_end_to_end, restore, lambda dets: float(np.mean([len(d) for d in dets])), info, run
    )


def _prepare_torchvision(model: Any, run: _Run) -> _Prepared:
    precision, dev, channels_last, compile = run.precision, run.dev, run.channels_last, run.compile
    compile_mode, orig_size, images_on_host = run.compile_mode, run.orig_size, run.images_on_host
    autocast = autocast_context(dev, precision)
    model.eval()
    size = int(model.transform.fixed_size[0])
    num_priors = int(torchvision_default_boxes(model, size).shape[0])
    flops_per_image = None
    if run.flops:  # backbone + head, on meta copies
        meta_backbone = copy.deepcopy(model.backbone).to("meta")
        meta_head = copy.deepcopy(model.head).to("meta")
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            feats = meta_backbone(torch.empty(1, 3, size, size, device="meta"))
            meta_head(list(feats.values()))
        flops_per_image = int(counter.get_total_flops())
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    backbone, head = model.backbone, model.head
    if compile:
        model.backbone = torch.compile(backbone, mode=compile_mode)
        model.head = torch.compile(head, mode=compile_mode)
    images = _input_images(run.batch_size, orig_size, run.seed, images_on_host, dev)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        floats = [im.to(dev).float().div(255.0) for im in images]
        x = model.transform(floats)[0].tensors.contiguous(memory_format=memory_format)

    def run_network() -> dict[str, Tensor]:
        with autocast:
            out: dict[str, Tensor] = model.head(list(model.backbone(x).values()))
            return out

    def run_end_to_end() -> list[dict[str, Tensor]]:
        batch = [im.to(dev, non_blocking=True).float().div_(255.0) for im in images]
        with autocast:
            dets: list[dict[str, Tensor]] = model(batch)
            return dets

    def restore() -> None:
        model.backbone, model.head = backbone, head
        if channels_last:
            model.to(memory_format=torch.contiguous_format)

    mode = f"backbone+head torch.compile(mode={compile_mode!r})" if compile else "eager"
    amp = "fp32" if precision == "fp32" else f"autocast {precision}"
    info = _ModelInfo(
        model="torchvision",
        backend=None,
        compile_mode=compile_mode if compile else None,
        image_size=size,
        num_priors=num_priors,
        settings=None,
        flops_per_image=flops_per_image,
        includes={
            "network": (
                f"torchvision SSD backbone + head ({mode}, {amp}) on a normalised float "
                f"[B,3,{size},{size}] batch already on the device; device synchronised"
            ),
            "end_to_end": (
                f"{_source_text(orig_size, images_on_host, dev)} -> float [0,1] -> torchvision SSD eval "
                f"forward ({mode}, {amp}): GeneralizedRCNNTransform (normalise + bilinear resize), "
                "backbone, head, default-box generation, per-image per-class score filter + top-k, "
                "batched NMS, rescale; device synchronised"
            ),
        },
    )
    return _Prepared(
        run_network,
        run_end_to_end,
        restore,
        lambda dets: float(np.mean([len(d["scores"]) for d in dets])),
        info,
        run,
    )


def _time(
    prepared: Sequence[_Prepared], run: _Run
) -> tuple[list[tuple[list[float], list[float], Any]], float | None]:
    """Time every prepared model's network and end-to-end callables, all interleaved. Returns
    per model (network times, end-to-end times, last end-to-end result) and the duration of the
    first (compiling) round when `compile`."""
    sync = synchronizer(run.dev)
    fns = [f for p in prepared for f in (p.run_network, p.run_end_to_end)]
    compile_s = None
    try:
        with torch.inference_mode(), _cudnn_benchmark(run.dev):
            if run.compile:
                start = time.perf_counter()
                for fn in fns:
                    fn()
                sync()
                compile_s = time.perf_counter() - start
            times, results = time_interleaved(fns, run.warmup, run.iters, sync)
    finally:
        for p in prepared:
            p.restore()
    out = [(times[2 * i], times[2 * i + 1], results[2 * i + 1]) for i in range(len(prepared))]
    return out, compile_s


def _report(
    prepared: _Prepared,
    net_times: list[float],
    e2e_times: list[float],
    detections: Any,
    compile_s: float | None,
) -> BenchmarkReport:
    run, info = prepared.run, prepared.info
    dev, batch_size = run.dev, run.batch_size
    network = summarize_times(net_times, batch_size)
    end_to_end = dataclasses.replace(
        summarize_times(e2e_times, batch_size), detections_per_image=prepared.count_detections(detections)
    )
    name = device_name(dev)
    flops_per_image = info.flops_per_image
    net_tflops = e2e_tflops = None
    if flops_per_image is not None:
        net_tflops = flops_per_image * network.images_per_s / 1e12
        e2e_tflops = flops_per_image * end_to_end.images_per_s / 1e12
    peak = peak_bf16_tflops(name) if dev.type == "cuda" else None
    return BenchmarkReport(
        **{f.name: getattr(info, f.name) for f in dataclasses.fields(info)},
        device=str(dev),
        device_name=name,
        batch_size=batch_size,
        precision=run.precision,
        channels_last=run.channels_last,
        compile=run.compile,
        compile_s=compile_s,
        warmup=run.warmup,
        iters=run.iters,
        orig_size=run.orig_size,
        images_on_host=bool(run.images_on_host and dev.type == "cuda"),
        network=network,
        end_to_end=end_to_end,
        network_fps=network.images_per_s,
        end_to_end_fps=end_to_end.images_per_s,
        network_tflops=net_tflops,
        end_to_end_tflops=e2e_tflops,
        peak_bf16_tflops=peak,
        peak_share=None if peak is None or net_tflops is None else net_tflops / peak,
        end_to_end_peak_share=None if peak is None or e2e_tflops is None else e2e_tflops / peak,
        num_threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        torchvision_version=torchvision.__version__,
    )


# --------------------------------------------------------------------------- ours


def benchmark(
    model: nn.Module,
    priors: Tensor,
    settings: InferenceSettings,
    *,
    batch_size: int = 1,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    warmup: int = 5,
    iters: int = 20,
    channels_last: bool = False,
    compile: bool = False,
    compile_mode: str = "default",
    orig_size: tuple[int, int] = (375, 500),
    images_on_host: bool = False,
    seed: int = 0,
    flops: bool = True,
    torchvision_model: Any = None,
    backend: str = "eager",
    onnx_path: str | None = None,
    torchvision_channels_last: bool | None = None,
) -> BenchmarkReport:
    """Time an SSD `model` (forward(images [B, 3, S, S]) -> HeadOutputs) with its `priors`
    [P, 4] cxcywh relative: the network alone and end to end (see the module docstring).

    The model is put in eval mode and moved to `device` (in place); with `channels_last` its
    weights are converted for the run and restored to contiguous afterwards. `precision` "bf16" /
    "fp16" runs the network under autocast (postprocess always computes in fp32). `compile` wraps
    the network in `torch.compile(mode=compile_mode)`; the first (compiling) round happens before
    the warm-up and is reported as `compile_s`. Images are `batch_size` seeded uint8 images of
    `orig_size` (H, W); with `images_on_host` on CUDA they start in pinned host memory and the copy
    is timed. Each timed callable runs `warmup` + `iters` times, round-robin with the others.

    With `torchvision_model` (`ssd.engine.torchvision_baseline.build_torchvision_ssd512`) that
    model is timed on the same images with the same settings, interleaved with ours, and the
    result gains `torchvision` (its report) and `speed_ratio` (ours / torchvision images per
    second); its memory format is `torchvision_channels_last` (None: the same as ours).

    `backend` "onnxruntime" / "openvino" runs our network through `ssd.inference.backends` (CPU, fp32;
    the ONNX graph is exported to `onnx_path` or a temporary file); pre- and post-processing stay
    the same PyTorch code.

    Returns a `BenchmarkReport` (`to_dict()` for JSON): `network` and `end_to_end` timing
    summaries (`summarize_times`), `network_fps`, `end_to_end_fps` (from the median),
    `includes`, FLOPs per image, achieved TFLOP/s, the share of the GPU's dense bf16 peak (None
    when unknown or on CPU), run settings.
    """
    run = _Run.checked(
        batch_size, precision, device, channels_last, compile, compile_mode, orig_size, images_on_host,
        seed, flops, warmup, iters,
    )  # fmt: skip
    tv_cl = channels_last if torchvision_channels_last is None else torchvision_channels_last
    prepared: list[_Prepared] = []
    try:
        mine = _prepare_ours(model, priors, settings, run, backend=backend, onnx_path=onnx_path)
        prepared.append(mine)
        if torchvision_model is not None:
            tv_run = dataclasses.replace(run, channels_last=tv_cl)
            prepared.append(_prepare_torchvision(torchvision_model, tv_run))
    except BaseException:
        for p in prepared:
            p.restore()
        raise
    timings, compile_s = _time(prepared, run)
    reports = [_report(p, *timed, compile_s) for p, timed in zip(prepared, timings)]
    ours = reports[0]
    if torchvision_model is not None:
        theirs = reports[1]
        ours = dataclasses.replace(
            ours,
            torchvision=theirs,
            speed_ratio=speed_ratio(ours, theirs),
            same_number_of_priors=ours.num_priors == theirs.num_priors,
        )
    return ours


def benchmark_torchvision(
    model: Any,
    *,
    batch_size: int = 1,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    warmup: int = 5,
    iters: int = 20,
    channels_last: bool = False,
    compile: bool = False,
    compile_mode: str = "default",
    orig_size: tuple[int, int] = (375, 500),
    images_on_host: bool = False,
    seed: int = 0,
    flops: bool = True,
) -> BenchmarkReport:
    """Time torchvision's SSD (`build_torchvision_ssd512`, or any torchvision `SSD`) alone on the
    images `benchmark` uses (same `seed`, `orig_size`, `batch_size`): the network (backbone +
    head on a normalised batch) and its eval forward end to end (uint8 -> float [0, 1], its
    GeneralizedRCNNTransform, backbone, head, default boxes, per-image per-class postprocess,
    rescale). With `compile`, its backbone and head are compiled (the rest stays eager). To
    compare with ours, prefer `benchmark(..., torchvision_model=...)`, which interleaves both."""
    run = _Run.checked(
        batch_size, precision, device, channels_last, compile, compile_mode, orig_size, images_on_host,
        seed, flops, warmup, iters,
    )  # fmt: skip
    prepared = _prepare_torchvision(model, run)
    [(net_t, e2e_t, dets)], compile_s = _time([prepared], run)
    return _report(prepared, net_t, e2e_t, dets, compile_s)


def _pipeline_dict(settings: InferenceSettings) -> dict[str, Any]:
    """The pre- and postprocess fields of `settings` (the "settings" entry of a report)."""
    keys = ("image_size", "mean", "std", "variances", "score_threshold", "nms_iou", "top_k", "max_detections")
    return {k: getattr(settings, k) for k in keys}


class _Speeds(Protocol):
    @property
    def network_fps(self) -> float: ...

    @property
    def end_to_end_fps(self) -> float: ...


def speed_ratio(ours: _Speeds, theirs: _Speeds) -> SpeedRatio:
    """ours / theirs images-per-second (from median latencies): > 1 means we are faster."""

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else math.inf

    return SpeedRatio(
        network=ratio(ours.network_fps, theirs.network_fps),
        end_to_end=ratio(ours.end_to_end_fps, theirs.end_to_end_fps),
    )
