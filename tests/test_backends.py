"""Inference backends: eager PyTorch, ONNX Runtime and OpenVINO give the same detections through
`Detector` and run in the benchmark (tiny model; the ONNX runtimes are the optional `deploy`
extra and their tests skip without them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ssd import Detector
from ssd.config import Config, config_from_dict
from ssd.engine.benchmark import random_images
from ssd.inference.backends import BACKENDS, BackendError, backend_available, build_network
from ssd.inference.checkpoint import save_checkpoint
from ssd.modeling.build import build_model
from ssd.structures import Detections
from tests.engine.test_benchmark import TINY


@pytest.fixture
def tiny_cfg() -> Config:
    return config_from_dict(TINY)


@pytest.fixture
def tiny_checkpoint(tiny_cfg: Config, tmp_path: Path) -> Path:
    torch.manual_seed(3)
    model = build_model(tiny_cfg)
    path = tmp_path / "tiny.pt"
    save_checkpoint({"model": model.state_dict()}, path)
    return path


def _images() -> list[torch.Tensor]:
    return random_images(2, 90, 120, seed=5) + random_images(1, 60, 50, seed=6)


def _assert_same_detections(ref: list[Detections], got: list[Detections]) -> None:
    """Same number of detections per image; every detection has a counterpart of the same class
    with a box within 0.05 px and a score within 1e-4 (near-equal scores may swap order)."""
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        assert len(r) == len(g) and len(r) > 0
        rb, rs, rl = r.boxes.numpy(), r.scores.numpy(), r.labels.numpy()
        for box, score, label in zip(g.boxes.numpy(), g.scores.numpy(), g.labels.numpy()):
            same = rl == label
            assert same.any()
            err = np.abs(rb[same] - box).max(axis=1) + 100 * np.abs(rs[same] - score)
            j = int(err.argmin())
            assert np.abs(rb[same][j] - box).max() < 0.05
            assert abs(float(rs[same][j]) - float(score)) < 1e-4


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_backend_detections_match_eager(
    backend: str, tiny_cfg: Config, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    pytest.importorskip(backend)
    images = _images()
    eager = Detector(tiny_cfg, tiny_checkpoint, backend="eager")
    assert eager.precision == "fp32"  # auto on a CPU
    ref = eager(images)
    onnx = tmp_path / "net.onnx"
    other = Detector(tiny_cfg, tiny_checkpoint, backend=backend, onnx_path=onnx)
    assert onnx.is_file()  # the exported network is what the runtime runs
    _assert_same_detections(ref, other(images))
    # the raw network outputs agree too
    x = torch.randn(2, 3, 320, 320)
    with torch.inference_mode():
        a = eager.network(x)
        b = other.network(x)
    for ta, tb in zip(a, b):
        assert ta.shape == tb.shape
        torch.testing.assert_close(tb, ta, atol=2e-4, rtol=1e-3)


def test_eager_channels_last_and_plain_agree(tiny_cfg: Config, tiny_checkpoint: Path) -> None:
    images = _images()
    nhwc = Detector(tiny_cfg, tiny_checkpoint)
    assert nhwc.model.backbone.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    plain_cfg = config_from_dict({**TINY, "inference": {"channels_last": False}})
    nchw = Detector(plain_cfg, tiny_checkpoint)
    assert nchw.model.backbone.features[0].weight.is_contiguous()
    _assert_same_detections(nchw(images), nhwc(images))


def test_eager_bf16_runs_and_postprocess_is_fp32(tiny_cfg: Config, tiny_checkpoint: Path) -> None:
    det = Detector(tiny_cfg, tiny_checkpoint, precision="bf16")
    out = det(_images())
    assert all(d.boxes.dtype == torch.float32 and d.scores.dtype == torch.float32 for d in out)
    logits, deltas = det.network(torch.randn(1, 3, 320, 320))
    assert logits.dtype == deltas.dtype == torch.float32


def test_unknown_backend_and_fp16_onnx_are_refused(tiny_cfg: Config) -> None:
    model = build_model(tiny_cfg).eval()
    with pytest.raises(ValueError, match="tensorrt"):
        build_network("tensorrt", model, 320)
    with pytest.raises(ValueError, match="tensorrt"):
        backend_available("tensorrt")
    with pytest.raises(BackendError, match="fp32"):
        build_network("onnxruntime", model, 320, precision="fp16")
    assert backend_available("eager") and set(BACKENDS) == {"eager", "onnxruntime", "openvino"}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_benchmark_cli_backend_vs_eager_reports_speed_ratio(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip(backend)
    from ssd.cli.benchmark import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(json.dumps(TINY))
    threads = torch.get_num_threads()
    try:
        rc = main(
            ["--config", str(cfg), "--device", "cpu", "--warmup", "0", "--iters", "2", "--threads", "1",
             "--orig-size", "48x64", "--backend", backend, "--onnx", str(tmp_path / "n.onnx"), "--json"]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["backend"] == backend and summary["end_to_end_fps"] > 0
    assert summary["end_to_end"]["detections_per_image"] > 0
    assert backend in summary["includes"]["end_to_end"]


def test_benchmark_cli_refuses_backend_on_fp16(tmp_path: Path) -> None:
    from ssd.cli.benchmark import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(json.dumps(TINY))
    args = ["--config", str(cfg), "--device", "cpu", "--backend", "onnxruntime", "--precision", "fp16"]
    assert main(args) == 2
