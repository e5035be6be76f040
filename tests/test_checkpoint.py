"""Checkpoints: round trip, validation errors naming the file, atomic writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ssd.inference import checkpoint as ckpt
from ssd.inference.checkpoint import FORMAT_KEY, CheckpointError, load_checkpoint, save_checkpoint


def sample_state(seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {"w": torch.randn(3, 4, generator=g), "b": torch.arange(5)},
        "optimizer": {"lr": 0.01, "momentum": [torch.ones(2)]},
        "iteration": 1234,
        "config": {"train": {"lr": 0.01}},
    }


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert torch.equal(a["model"]["w"], b["model"]["w"]) and torch.equal(a["model"]["b"], b["model"]["b"])
    assert a["iteration"] == b["iteration"] and a["config"] == b["config"]
    assert torch.equal(a["optimizer"]["momentum"][0], b["optimizer"]["momentum"][0])


def test_round_trip(tmp_path: Path) -> None:
    state = sample_state(0)
    path = save_checkpoint(state, tmp_path / "deep" / "dir" / "last.pt")
    assert path == tmp_path / "deep" / "dir" / "last.pt"
    loaded = load_checkpoint(path)
    assert_same_state(loaded, state)
    assert loaded[FORMAT_KEY] == ckpt.FORMAT_VERSION
    assert "model" in state and FORMAT_KEY not in state  # the caller's dict is not modified
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary left


def test_overwrite_replaces(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(sample_state(0), path)
    save_checkpoint(sample_state(1), path)
    assert_same_state(load_checkpoint(path), sample_state(1))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nothing.pt"
    with pytest.raises(CheckpointError, match="not found") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.0])
def test_truncated_file(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(sample_state(0), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_foreign_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(text)
    assert str(text) in str(info.value)
    plain = tmp_path / "state_dict.pt"
    torch.save({"model": {"w": torch.zeros(1)}}, plain)  # a torch file without our marker
    with pytest.raises(CheckpointError, match="not an ssd512 checkpoint") as info:
        load_checkpoint(plain)
    assert str(plain) in str(info.value)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="not an ssd512 checkpoint"):
        load_checkpoint(tensor)


def test_newer_format_and_missing_model(tmp_path: Path) -> None:
    newer = tmp_path / "newer.pt"
    torch.save({FORMAT_KEY: ckpt.FORMAT_VERSION + 1, "model": {}}, newer)
    with pytest.raises(CheckpointError, match="newer") as info:
        load_checkpoint(newer)
    assert str(newer) in str(info.value)
    no_model = tmp_path / "no_model.pt"
    save_checkpoint({"iteration": 3}, no_model)
    with pytest.raises(CheckpointError, match="'model'"):
        load_checkpoint(no_model)


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_interrupted_save_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc_type: type[BaseException]
) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(sample_state(0), path)
    before = path.read_bytes()
    real_save = torch.save

    def crash_midway(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, f, *args, **kwargs)  # a full payload written to the temporary file ...
        f.truncate(100)  # ... then cut short, and the process "dies"
        raise exc_type("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(exc_type):
        save_checkpoint(sample_state(1), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert_same_state(load_checkpoint(path), sample_state(0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # the temporary is removed


def test_interrupted_first_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04partial")
        raise OSError("no space left on device")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError, match="no space"):
        save_checkpoint(sample_state(0), tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_load_model_takes_the_ema_weights_unless_asked_for_the_trained_ones(tmp_path: Path) -> None:
    from ssd.config import config_from_dict, config_to_dict
    from ssd.inference.checkpoint import load_model
    from ssd.modeling.build import build_model
    from tests.conftest import TINY_PRIORS

    cfg = config_from_dict({"model": {"width_mult": 0.125}, "priors": TINY_PRIORS})
    torch.manual_seed(0)
    trained = build_model(cfg).state_dict()
    averaged = {k: v + 1 if v.is_floating_point() else v for k, v in trained.items()}
    path = save_checkpoint(
        {"model": trained, "ema": {"model": averaged}, "config": config_to_dict(cfg)}, tmp_path / "m.pt"
    )
    cfg2, model = load_model(path)
    assert cfg2 == cfg and not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in averaged.items())
    _, plain = load_model(path, cfg, ema=False)
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in trained.items())


def test_inference_settings_come_from_the_config() -> None:
    from ssd.config import config_from_dict
    from ssd.inference.runtime import DeviceCaps
    from ssd.inference.settings import InferenceSettings

    cfg = config_from_dict(
        {
            "postprocess": {"score_threshold": 0.2, "nms_iou": 0.5, "top_k": 30, "max_detections": 7},
            "input": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]},
            "inference": {"precision": "fp16", "channels_last": False},
        }
    )
    s = InferenceSettings.from_config(cfg)
    assert (s.score_threshold, s.nms_iou, s.top_k, s.max_detections) == (0.2, 0.5, 30, 7)
    assert (s.image_size, s.mean, s.std, s.variances) == (512, (0.5,) * 3, (0.2,) * 3, (0.1, 0.2))
    assert s.precision_on(DeviceCaps("cuda", bf16=True)) == "fp16"
    assert s.precision_on(DeviceCaps("cuda", bf16=True), override="auto") == "bf16"
    assert not s.channels_last_on(DeviceCaps("cpu"))
