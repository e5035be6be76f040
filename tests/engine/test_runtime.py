"""The device-dependent speed settings: which precision, scaler, autotuning and loader options a
config resolves to, given device capability flags (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from ssd.config import Config, ConfigError, config_from_dict, config_to_dict, replace
from ssd.inference.runtime import (
    DeviceCaps,
    autocast,
    resolve_precision,
    resolve_train_runtime,
)
from ssd.inference.settings import InferenceSettings

CPU = DeviceCaps("cpu")
TURING = DeviceCaps("cuda", bf16=False, name="NVIDIA GeForce RTX 2080 Ti", capability=(7, 5))
HOPPER = DeviceCaps("cuda", bf16=True, name="NVIDIA H100 80GB HBM3", capability=(9, 0))


@pytest.mark.parametrize(
    ("setting", "caps", "expected"),
    [
        ("auto", CPU, "fp32"),
        ("auto", TURING, "fp16"),
        ("auto", HOPPER, "bf16"),
        ("none", HOPPER, "fp32"),
        ("fp32", TURING, "fp32"),
        ("bf16", TURING, "bf16"),
        ("fp16", HOPPER, "fp16"),
        ("bf16", CPU, "bf16"),
    ],
)
def test_resolve_precision(setting: str, caps: DeviceCaps, expected: str) -> None:
    assert resolve_precision(setting, caps) == expected


def test_resolve_precision_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="fp8"):
        resolve_precision("fp8", CPU)


def test_defaults_on_a_2080ti_are_fp16_with_scaler_autotuning_and_pinned_memory() -> None:
    rt = resolve_train_runtime(Config(), TURING)
    assert rt.amp == "fp16" and rt.grad_scaler
    assert rt.cudnn_benchmark and rt.pin_memory and rt.non_blocking and rt.persistent_workers


def test_defaults_on_hopper_are_bf16_without_scaler() -> None:
    rt = resolve_train_runtime(Config(), HOPPER)
    assert rt.amp == "bf16" and not rt.grad_scaler and rt.cudnn_benchmark


def test_cpu_training_is_fp32_without_cuda_options_whatever_amp_says() -> None:
    for amp in ("auto", "bf16", "fp16"):
        rt = resolve_train_runtime(replace(Config(), **{"train.amp": amp}), CPU)
        assert rt.amp == "fp32" and not rt.grad_scaler
        assert not (rt.cudnn_benchmark or rt.pin_memory or rt.non_blocking)


def test_every_choice_can_be_turned_off() -> None:
    cfg = config_from_dict(
        {
            "train": {"amp": "none", "cudnn_benchmark": False},
            "data": {"pin_memory": False, "persistent_workers": False},
            "inference": {"precision": "fp32", "channels_last": False},
        }
    )
    rt = resolve_train_runtime(cfg, HOPPER)
    assert (rt.amp, rt.grad_scaler, rt.cudnn_benchmark, rt.pin_memory, rt.non_blocking) == (
        "fp32", False, False, False, False,
    )  # fmt: skip
    assert not rt.persistent_workers
    settings = InferenceSettings.from_config(cfg)
    assert settings.precision_on(HOPPER) == "fp32"
    assert not settings.channels_last_on(HOPPER)


def test_no_persistent_workers_without_workers() -> None:
    rt = resolve_train_runtime(replace(Config(), **{"data.num_workers": 0}), HOPPER)
    assert not rt.persistent_workers


def test_inference_precision_follows_config_and_override() -> None:
    settings = InferenceSettings.from_config(Config())
    assert settings.precision_on(TURING) == "fp16"
    assert settings.precision_on(HOPPER) == "bf16"
    assert settings.precision_on(CPU) == "fp32"
    assert settings.precision_on(HOPPER, override="fp32") == "fp32"
    assert settings.channels_last_on(CPU) and settings.channels_last_on(HOPPER)


def test_settings_are_in_the_saved_config_and_checked() -> None:
    plain = config_to_dict(Config())
    assert plain["train"]["amp"] == "auto" and plain["train"]["cudnn_benchmark"] is True
    assert plain["data"]["pin_memory"] is True and plain["data"]["persistent_workers"] is True
    assert plain["inference"] == {"precision": "auto", "channels_last": True}
    with pytest.raises(ConfigError, match=r"inference\.precision"):
        config_from_dict({"inference": {"precision": "int4"}})
    with pytest.raises(ConfigError, match=r"train\.amp"):
        config_from_dict({"train": {"amp": "fp64"}})


def test_device_caps_of_cpu() -> None:
    assert DeviceCaps.of("cpu") == CPU


def test_autocast_context() -> None:
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.rand(1, 3, 8, 8)
    with autocast("cpu", "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert conv(x).dtype == torch.float32
    with pytest.raises(ValueError, match="int8"):
        autocast("cpu", "int8")
