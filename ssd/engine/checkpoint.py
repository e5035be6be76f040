"""Checkpoints: written to a temporary file and renamed (atomic), validated on load."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_KEY = "ssd512_checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or not ours; the message names the file."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` (plus the format marker) atomically: a crash mid-write leaves the previous
    file at `path` intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {FORMAT_KEY: FORMAT_VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint written by `save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for truncated/corrupt files
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or corrupt?): {exc}") from exc
    if not isinstance(state, dict) or state.get(FORMAT_KEY) is None:
        raise CheckpointError(f"{path}: not an ssd512 checkpoint (no '{FORMAT_KEY}' marker)")
    if state[FORMAT_KEY] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state[FORMAT_KEY]} is newer than {FORMAT_VERSION}")
    if "model" not in state:
        raise CheckpointError(f"{path}: checkpoint has no 'model' entry")
    return state
