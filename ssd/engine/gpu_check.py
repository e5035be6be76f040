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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from ssd.config import Config, config_from_dict, config_to_dict, replace
from ssd.engine.benchmark import BenchmarkReport, benchmark, device_name, synchronizer
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


def run_tests(dev: torch.device, tests_dir: Path, timeout_s: float) -> dict[str, Any]:
    """The `gpu`-marked tests under `tests_dir` via pytest (subprocess, `SSD_CHECK_DEVICE`=dev).
    Returns counts and per-test outcomes from pytest's JUnit XML."""
    if not tests_dir.is_dir():
        return {"status": "not run", "reason": f"{tests_dir} not found (run from a source checkout)"}
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
            return {"status": "failed", "reason": f"pytest did not finish within {timeout_s:.0f} s"}
        seconds = time.perf_counter() - start
        tests = _junit_cases(xml) if xml.is_file() else []
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "skipped")}
    ok = proc.returncode == 0 and counts["failed"] == 0 and counts["passed"] > 0
    return {
        "status": "passed" if ok else "failed",
        "command": f"python -m pytest -m gpu {tests_dir}",
        "returncode": proc.returncode,
        "seconds": seconds,
        **counts,
        "tests": tests,
        "output_tail": (proc.stdout + proc.stderr)[-3000:] if not ok else "",
    }


def _junit_cases(path: Path) -> list[dict[str, Any]]:
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        message = ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", (child.get("message") or "")[:300]
            elif child.tag == "skipped":
                outcome, message = "skipped", (child.get("message") or "")[:300]
        cases.append(
            {"name": case.get("name", ""), "seconds": float(case.get("time", 0)), "outcome": outcome,
             "message": message}
        )  # fmt: skip
    return cases


# --------------------------------------------------------------------------- 2. inference


def _timing_row(res: BenchmarkReport) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for part, t in (("network", res.network), ("end_to_end", res.end_to_end)):
        row[part] = {
            "images_per_s": t.images_per_s,
            "p50_ms": t.median_ms,
            "p95_ms": _percentile(t.times_ms, 95),
            "min_ms": t.min_ms,
        }
    row["detections_per_image"] = res.end_to_end.detections_per_image
    row["channels_last"] = res.channels_last
    return row


def run_inference(
    cfg: Config, dev: torch.device, sizes: CheckSizes, quick: bool, progress: Callable[[str], None]
) -> dict[str, Any]:
    settings = InferenceSettings.from_config(cfg)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if quick:
        tv = small_torchvision_ssd(cfg, settings)
        tv_desc = "torchvision SSD (transform, head, default boxes, post-processing) over our small backbone"
    else:
        tv = build_torchvision_ssd512(cfg.num_classes, settings)
        tv_desc = "torchvision SSD512-VGG16 (highres extractor in the SSD512 layout), untrained"
    runs = []
    for bs in sizes.batch_sizes:
        for precision in sizes.precisions:
            progress(f"inference batch {bs} {precision}")
            _peak_reset(dev)
            entry: dict[str, Any] = {"batch_size": bs, "precision": precision}
            try:
                res = benchmark(
                    model, model.priors(), settings, batch_size=bs, precision=precision, device=dev,
                    warmup=sizes.warmup, iters=sizes.iters, channels_last=settings.channels_last,
                    orig_size=(480, 640), torchvision_model=tv, torchvision_channels_last=False,
                    flops=False,
                )  # fmt: skip
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                entry["error"] = str(exc).splitlines()[0][:300]
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                runs.append(entry)
                continue
            entry["ours"] = _timing_row(res)
            assert res.torchvision is not None and res.speed_ratio is not None
            entry["torchvision"] = _timing_row(res.torchvision)
            entry["speed_ratio"] = res.speed_ratio.to_dict()
            entry["peak_memory_mib"] = _peak_mib(dev)
            runs.append(entry)
    model.cpu()
    tv.cpu()
    width = f"width {cfg.model.width_mult}" if cfg.model.width_mult != 1 else "full width"
    size = cfg.priors.image_size
    return {
        "image": "uint8 RGB 480x640 (HxW), resident on the device",
        "ours": f"ssd512 {width}, {size}x{size}, channels_last={cfg.inference.channels_last}, eager",
        "torchvision": tv_desc + ", NCHW, eager",
        "warmup": sizes.warmup,
        "iters": sizes.iters,
        "runs": runs,
    }


# --------------------------------------------------------------------------- 3. training


def run_training(
    cfg: Config, dev: torch.device, sizes: CheckSizes, data_root: Path, quick: bool
) -> dict[str, Any]:
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
    return {
        "batch_size": bs,
        "amp": rt.amp,
        "grad_scaler": rt.grad_scaler,
        "runtime": rt.to_dict(),
        "loader_workers": sizes.num_workers,
        "data": f"{n_img} synthetic {img_size[0]}x{img_size[1]} images, training augmentation",
        "input_size": tcfg.priors.image_size,
        "dataset_prepare_s": prepare_s,
        "warmup_steps": warm,
        "steps": iters,
        "images_per_s": bs * iters / total,
        "step_p50_ms": 1e3 * float(np.median(step_times)),
        "step_p95_ms": 1e3 * _percentile(step_times, 95),
        "losses_finite": all(np.isfinite(losses)),
        "last_loss": losses[-1],
        "peak_memory_mib": _peak_mib(dev),
    }


# --------------------------------------------------------------------------- the check


def _targets(result: dict[str, Any]) -> dict[str, Any]:
    """Measured figures against `TARGETS` (H100/H200 class GPUs only)."""
    name = result["environment"]["device_name"]
    if result["environment"]["device_type"] != "cuda" or not any(g in name for g in _TARGET_GPUS):
        return {"applies": False, "reason": f"targets are set for H100/H200 GPUs, not {name}"}
    runs = [r for r in result["inference"]["runs"] if "error" not in r]

    def find(bs: int, precision: str | None = None) -> list[dict[str, Any]]:
        return [r for r in runs if r["batch_size"] == bs and precision in (None, r["precision"])]

    out: dict[str, Any] = {"applies": True, "targets": TARGETS, "measured": {}}
    b64 = find(64, "bf16")
    if b64:
        out["measured"]["end_to_end_bf16_batch64_images_per_s"] = b64[0]["ours"]["end_to_end"]["images_per_s"]
        out["measured"]["end_to_end_bf16_batch64_vs_torchvision"] = b64[0]["speed_ratio"]["end_to_end"]
    b1 = find(1)
    if b1:
        out["measured"]["batch1_latency_ms"] = min(r["ours"]["end_to_end"]["p50_ms"] for r in b1)
    train = result.get("training", {})
    if "images_per_s" in train:
        out["measured"]["train_amp_batch32_images_per_s"] = train["images_per_s"]
    met = {}
    for key, target in TARGETS.items():
        value = out["measured"].get(key)
        met[key] = None if value is None else (value <= target if key.endswith("_ms") else value >= target)
    out["met"] = met
    return out


def run_check(options: CheckOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every section (see the module docstring) and return the JSON-ready result."""
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
    result: dict[str, Any] = {
        "environment": {
            "device": str(dev),
            "device_type": dev.type,
            "device_name": device_name(dev),
            "capability": list(caps.capability) if caps.capability else None,
            "native_bf16": caps.bf16,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,  # type: ignore[no-untyped-call, unused-ignore]
            "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(),
            "quick": options.quick,
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        },
        "sizes": sizes.to_dict(),
    }
    if options.run_tests:
        say("tests (pytest -m gpu)")
        result["tests"] = run_tests(dev, options.tests_dir, options.tests_timeout_s)
    else:
        result["tests"] = {"status": "not run", "reason": "disabled (--skip-tests)"}
    result["inference"] = run_inference(cfg, dev, sizes, options.quick, say)
    say(f"training (batch {sizes.train_batch_size})")
    with tempfile.TemporaryDirectory(prefix="ssd-gpu-check-data-") as tmp:
        try:
            result["training"] = run_training(cfg, dev, sizes, Path(tmp), options.quick)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            result["training"] = {"error": str(exc).splitlines()[0][:300]}
    result["memory"] = {
        "inference_peak_mib": max(
            (r.get("peak_memory_mib", 0.0) for r in result["inference"]["runs"]), default=None
        ),
        "training_peak_mib": result["training"].get("peak_memory_mib"),
        "kind": (
            "torch.cuda.max_memory_allocated" if dev.type == "cuda" else "process peak resident set (CPU)"
        ),
    }
    if dev.type == "cuda":
        result["memory"]["device_total_mib"] = torch.cuda.get_device_properties(dev).total_memory / 2**20
    result["targets"] = _targets(result)
    result["seconds"] = time.perf_counter() - started
    ok_tests = result["tests"]["status"] in ("passed", "not run")
    ok_inf = all("error" not in r for r in result["inference"]["runs"])
    ok_train = "error" not in result["training"] and bool(result["training"].get("losses_finite"))
    result["ok"] = ok_tests and ok_inf and ok_train
    return result


# --------------------------------------------------------------------------- report


def _f(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def format_markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        f"# Device check: {env['device_name']}",
        "",
        f"{env['date_utc']} UTC, device `{env['device']}`"
        + (f" (compute capability {'.'.join(map(str, env['capability']))})" if env["capability"] else "")
        + f", torch {env['torch']}, torchvision {env['torchvision']}, CUDA {env['cuda']}, "
        f"cuDNN {env['cudnn']}, {env['cpu_threads']} CPU threads"
        + (", **quick mode (tiny sizes)**" if env["quick"] else "")
        + f". Whole check: {result['seconds']:.0f} s. Overall: **{'ok' if result['ok'] else 'FAILED'}**.",
        "",
        "## Tests",
        "",
    ]
    t = result["tests"]
    if t["status"] == "not run":
        lines.append(f"Not run: {t['reason']}.")
    else:
        lines.append(
            f"`{t.get('command', '')}`: **{t['status']}** ({t.get('passed', 0)} passed, "
            f"{t.get('failed', 0)} failed, {t.get('skipped', 0)} skipped, {t.get('seconds', 0):.0f} s)."
        )
        if t.get("tests"):
            lines += ["", "| test | outcome | s |", "|---|---|---|"]
            lines += [f"| {c['name']} | {c['outcome']} | {c['seconds']:.1f} |" for c in t["tests"]]
        if t.get("reason"):
            lines.append(t["reason"])
    inf = result["inference"]
    lines += [
        "",
        "## Inference",
        "",
        f"Input: {inf['image']}. Ours: {inf['ours']}. torchvision: {inf['torchvision']}. "
        f"Both timed interleaved, {inf['warmup']} warm-up + {inf['iters']} timed iterations each; "
        "end to end = pre-processing + network + decode + NMS + rescale; latency per batch.",
        "",
        "| batch | precision | model | end-to-end images/s | p50 ms | p95 ms | network images/s | "
        "network p50 ms | ours/torchvision (e2e) | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in inf["runs"]:
        if "error" in r:
            lines.append(f"| {r['batch_size']} | {r['precision']} | error: {r['error']} |||||||")
            continue
        for name in ("ours", "torchvision"):
            m = r[name]
            ratio = _f(r["speed_ratio"]["end_to_end"], ".2f") if name == "ours" else ""
            peak = _f(r["peak_memory_mib"], ".0f") if name == "ours" else ""
            lines.append(
                f"| {r['batch_size']} | {r['precision']} | {name} | {m['end_to_end']['images_per_s']:.1f} | "
                f"{m['end_to_end']['p50_ms']:.2f} | {m['end_to_end']['p95_ms']:.2f} | "
                f"{m['network']['images_per_s']:.1f} | {m['network']['p50_ms']:.2f} | {ratio} | {peak} |"
            )
    tr = result["training"]
    lines += ["", "## Training", ""]
    if "error" in tr:
        lines.append(f"Error: {tr['error']}")
    else:
        lines.append(
            f"Batch {tr['batch_size']}, mixed precision **{tr['amp']}** "
            f"(gradient scaler: {tr['grad_scaler']}), "
            f"{tr['loader_workers']} loader workers, {tr['data']}, network input "
            f"{tr['input_size']}x{tr['input_size']}; {tr['steps']} timed steps after "
            f"{tr['warmup_steps']} warm-up, each: next batch from the loader, copy, forward + loss, "
            f"backward, optimizer step. **{tr['images_per_s']:.1f} images/s**, step p50 "
            f"{tr['step_p50_ms']:.1f} ms, p95 {tr['step_p95_ms']:.1f} ms; losses finite: "
            f"{tr['losses_finite']} (last {tr['last_loss']:.3f}). Runtime: `{tr['runtime']}`."
        )
    mem = result["memory"]
    lines += [
        "",
        "## Memory",
        "",
        f"Peak ({mem['kind']}): inference {_f(mem['inference_peak_mib'], '.0f')} MiB (largest run, both "
        f"models), training {_f(mem['training_peak_mib'], '.0f')} MiB"
        + (f", device total {mem['device_total_mib']:.0f} MiB." if "device_total_mib" in mem else "."),
        "",
        "## Targets",
        "",
    ]
    tg = result["targets"]
    if not tg["applies"]:
        lines.append(f"Not applicable: {tg['reason']}.")
    else:
        lines += ["| figure | target | measured | met |", "|---|---|---|---|"]
        for key, target in tg["targets"].items():
            measured = _f(tg["measured"].get(key), ".2f")
            lines.append(f"| {key} | {target} | {measured} | {tg['met'].get(key)} |")
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], output_dir: str | Path) -> tuple[Path, Path]:
    """Write `<output_dir>/<device name>.md` and `.json`; returns both paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = report_stem(result["environment"]["device_name"])
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    md.write_text(format_markdown(result), encoding="utf-8")
    js.write_text(json.dumps(result, indent=2, default=float) + "\n", encoding="utf-8")
    return md, js


__all__ = ["CheckOptions", "format_markdown", "report_stem", "run_check", "write_report"]
