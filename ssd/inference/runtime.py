"""Device-dependent speed settings, resolved in one place.

The config says what the user wants (`train.amp: auto`, `inference.precision: auto`, ...); the
resolvers here turn that into what runs on a given device:

- mixed precision: on a CUDA device `auto` means bf16 where the GPU computes it natively (compute
  capability >= 8.0: A100, H100, RTX 30xx/40xx) and fp16 with gradient scaling otherwise (e.g.
  a 2080 Ti, capability 7.5); on a CPU `auto` means fp32 (CPUs without AVX-512-BF16/AMX run bf16
  convolutions far slower than fp32). `none`/`fp32` turns it off; `bf16`/`fp16` force a type.
- cuDNN autotuning (`train.cudnn_benchmark`), pinned host memory with non-blocking copies
  (`data.pin_memory`) and persistent loader workers (`data.persistent_workers`) apply on CUDA.

Decode and NMS always compute in fp32 (`ssd.postprocess.postprocess` casts its inputs).
The resolvers take a `DeviceCaps` (not a live device), so every decision is testable on a CPU.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from ssd.config import Config

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
PRECISION_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
_SETTINGS = ("auto", "none", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class DeviceCaps:
    """What the resolvers need to know about a device: its type ("cpu", "cuda", ...), whether
    it computes bf16 natively, and for CUDA its name and compute capability."""

    type: str
    bf16: bool = False
    name: str = ""
    capability: tuple[int, int] | None = None

    @classmethod
    def of(cls, device: str | torch.device) -> DeviceCaps:
        """The capabilities of a live device (CUDA is queried only for a CUDA device)."""
        dev = torch.device(device)
        if dev.type != "cuda":
            return cls(type=dev.type)
        major, minor = torch.cuda.get_device_capability(dev)
        return cls(
            type="cuda",
            bf16=major >= 8,  # native bf16 tensor cores from Ampere on
            name=str(torch.cuda.get_device_name(dev)),
            capability=(major, minor),
        )


def resolve_precision(setting: str, caps: DeviceCaps) -> Precision:
    """The compute precision of a network forward for a precision setting on a device.

    `auto`: CUDA with native bf16 -> "bf16", other CUDA -> "fp16", anything else -> "fp32".
    `none` / `fp32` -> "fp32"; `bf16` / `fp16` are kept as asked."""
    if setting not in _SETTINGS:
        raise ValueError(f"precision setting must be one of {list(_SETTINGS)}, got {setting!r}")
    if setting == "auto":
        if caps.type != "cuda":
            return "fp32"
        return "bf16" if caps.bf16 else "fp16"
    if setting in ("none", "fp32"):
        return "fp32"
    return "bf16" if setting == "bf16" else "fp16"


def autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """`torch.autocast` for "bf16"/"fp16", a no-op for "fp32"."""
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"precision must be one of {list(PRECISION_DTYPES)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=PRECISION_DTYPES[precision])


@dataclass(frozen=True)
class TrainRuntime:
    """Resolved speed settings of a training run (logged and stored in its checkpoints)."""

    amp: Precision
    grad_scaler: bool
    cudnn_benchmark: bool
    pin_memory: bool
    non_blocking: bool
    persistent_workers: bool

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager[Any]:
        return autocast(device_type, self.amp)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_train_runtime(cfg: Config, caps: DeviceCaps) -> TrainRuntime:
    """The training settings of `cfg` on a device with `caps`.

    Mixed precision applies on CUDA only (a CPU run trains in fp32 whatever `train.amp` says);
    fp16 comes with a gradient scaler, bf16 needs none. cuDNN autotuning and pinned memory apply
    on CUDA; persistent workers whenever the loader has workers."""
    cuda = caps.type == "cuda"
    amp: Precision = resolve_precision(cfg.train.amp, caps) if cuda else "fp32"
    pin = cuda and cfg.data.pin_memory
    return TrainRuntime(
        amp=amp,
        grad_scaler=amp == "fp16",
        cudnn_benchmark=cuda and cfg.train.cudnn_benchmark,
        pin_memory=pin,
        non_blocking=pin,
        persistent_workers=cfg.data.persistent_workers and cfg.data.num_workers > 0,
    )


def apply_cudnn_benchmark(enabled: bool) -> None:
    """Set cuDNN autotuning (only meaningful on CUDA; harmless elsewhere)."""
    torch.backends.cudnn.benchmark = enabled
