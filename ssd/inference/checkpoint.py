"""Checkpoints: written to a temporary file and renamed (atomic), validated on load.

A checkpoint holds plain types only (tensors, numbers, strings, lists, dicts, None), so it is
read with `torch.load(weights_only=True)`: a crafted file cannot run code. Besides the weights it
carries the resolved config as a plain dict ("config") and the class names ("class_names"), so
a model can be rebuilt from the checkpoint alone (`config_for_checkpoint`). `load_model` is the
one way a checkpoint becomes a model.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ssd.config import Config, ConfigError, config_from_dict, load_config
from ssd.modeling.build import build_model
from ssd.modeling.ssd import SSD

FORMAT_KEY = "ssd512_checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or not ours; the message names the file."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """The checkpoint's weights do not fit the configured model (another class count, width,
    prior layout ...); the message names the file and, when known, the differing config keys."""


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
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt/unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: checkpoint holds objects other than plain types (tensors, numbers, strings, "
                f"lists, dicts); refusing to load it: {first}"
            ) from exc
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or corrupt?): {first}") from exc
    if not isinstance(state, dict) or state.get(FORMAT_KEY) is None:
        raise CheckpointError(f"{path}: not an ssd512 checkpoint (no '{FORMAT_KEY}' marker)")
    if state[FORMAT_KEY] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state[FORMAT_KEY]} is newer than {FORMAT_VERSION}")
    if "model" not in state:
        raise CheckpointError(f"{path}: checkpoint has no 'model' entry")
    return state


def config_for_checkpoint(
    state: dict[str, Any] | None,
    checkpoint: str | Path | None,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> Config:
    """The config to build a checkpoint's model with: the `config` file when given (it overrides
    the checkpoint's), else the resolved config stored in the checkpoint; `overrides`
    (`key.path=value`) apply last. Without a checkpoint: `config` or the defaults. Raises
    CheckpointError when neither a config file nor a stored config exists."""
    if config is not None:
        return load_config(config, overrides)
    if state is None:
        return config_from_dict({}, overrides)
    stored = state.get("config")
    if not isinstance(stored, dict):
        raise CheckpointError(
            f"{checkpoint}: the checkpoint does not carry its config (written by an older version); "
            "pass --config with the run's config.yaml"
        )
    try:
        return config_from_dict(stored, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{checkpoint} (stored config): {exc}") from exc


def model_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to infer with: the EMA weights when the run kept them (`train.ema`), else the
    trained ones."""
    ema = state.get("ema")
    if isinstance(ema, dict) and isinstance(ema.get("model"), dict):
        averaged: dict[str, torch.Tensor] = ema["model"]
        return averaged
    weights = state["model"]
    assert isinstance(weights, dict)
    return weights


def describe_mismatch(state: dict[str, Any], cfg: Config) -> str:
    """The config keys that give the model its shape (classes, width, priors, batch norm) and
    differ between the checkpoint's stored config and `cfg`, as a short text; "" when unknown."""
    stored = state.get("config")
    if not isinstance(stored, dict):
        return ""
    try:
        saved = config_from_dict(stored)
    except ConfigError:
        return ""
    parts = []
    if saved.num_classes != cfg.num_classes:
        parts.append(
            f"{len(saved.data.classes)} classes in the checkpoint, {len(cfg.data.classes)} in the config "
            "(data.classes)"
        )
    elif saved.data.classes != cfg.data.classes:
        parts.append("data.classes named differently")
    for key in ("width_mult", "batch_norm"):
        a, b = getattr(saved.model, key), getattr(cfg.model, key)
        if a != b:
            parts.append(f"model.{key} {a} in the checkpoint, {b} in the config")
    for key in ("image_size", "feature_maps", "min_sizes", "max_sizes", "aspect_ratios", "shapes"):
        if getattr(saved.priors, key) != getattr(cfg.priors, key):
            parts.append(f"priors.{key} differs")
    return "; ".join(parts)


def load_model_state(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, hint: str = ""
) -> None:
    """Strict state-dict load with a one-line error (`CheckpointMismatchError`, a ValueError)
    that names the checkpoint, `hint` (e.g. `describe_mismatch`: the config keys that differ) and
    the first mismatching keys or shapes."""
    prefix = f"{source}: checkpoint does not fit the configured model" + (f" ({hint})" if hint else "")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # size mismatches raise even with strict=False: keep the first one
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        detail = lines[0] if lines else str(exc).splitlines()[0]
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise CheckpointMismatchError(f"{prefix}: {detail}{more}") from exc
    problems = []
    if result.missing_keys:
        problems.append(f"missing {result.missing_keys[:5]}")
    if result.unexpected_keys:
        problems.append(f"unexpected {result.unexpected_keys[:5]}")
    if problems:
        raise CheckpointMismatchError(f"{prefix}: {'; '.join(problems)}")


def load_model(
    checkpoint: str | Path | None = None,
    cfg: Config | None = None,
    *,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    ema: bool = True,
) -> tuple[Config, SSD]:
    """The config and the eval-mode model (CPU, priors frozen) of a checkpoint and/or config.

    The config is `cfg` when given, else the `config` file (it overrides the checkpoint's), else
    the config stored in the checkpoint (a checkpoint without one is an error asking for
    `--config`), else the defaults; `overrides` (`key.path=value`) apply to the last two. The
    weights are the inference weights of the checkpoint (`model_weights`: the EMA weights when
    the run kept them; `ema=False` takes the trained ones); without a checkpoint they are random.
    Raises ConfigError / CheckpointError naming the file; weights that do not fit the configured
    model raise CheckpointMismatchError (naming the config keys that differ)."""
    state = load_checkpoint(checkpoint) if checkpoint is not None else None
    if cfg is None:
        cfg = config_for_checkpoint(state, checkpoint, config, overrides)
    model = build_model(cfg)
    if state is not None:
        weights = model_weights(state) if ema else state["model"]
        load_model_state(model, weights, str(checkpoint), describe_mismatch(state, cfg))
    model.priors.freeze()
    return cfg, model.eval()
