"""Device selection in one place: `--device auto|cpu|cuda|cuda:N` for every tool.

`resolve_device` is called before anything is created (run folder, data, model), so an
unavailable device is one clear error (`DeviceError`, a ConfigError: exit 2 in the CLIs).
"""

from __future__ import annotations

import re

import torch

from ssd.config import ConfigError

CHOICES = "auto, cpu, cuda or cuda:N"
_PATTERN = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


class DeviceError(ConfigError):
    """The requested device does not exist on this machine or is not a device name."""


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """`auto` (or None): the first CUDA device when one is present, else the CPU. `cpu`, `cuda`
    (the current CUDA device) and `cuda:N` are checked against this machine: a missing CUDA
    driver or index raises DeviceError naming the device."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "auto").strip().lower()
    m = _PATTERN.fullmatch(text)
    if m is None or (m.group(1) != "cuda" and m.group(2) is not None):
        raise DeviceError(f"--device {spec}: not a device name (use {CHOICES})")
    kind, index = m.group(1), m.group(2)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {spec}: CUDA is not available on this machine (use --device cpu or auto)"
        )
    count = torch.cuda.device_count()
    if index is not None and int(index) >= count:
        raise DeviceError(
            f"--device {spec}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
        )
    return torch.device(text)
