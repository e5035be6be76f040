"""ONNX export: the network and the batch-1 detector graph match PyTorch under onnxruntime."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from ssd.cli.export import main as export_main
from ssd.config import Config, config_from_dict, config_to_dict, replace
from ssd.engine.benchmark import random_images
from ssd.inference.checkpoint import CheckpointError, load_model, save_checkpoint
from ssd.inference.detector import preprocess
from ssd.inference.export import DetectionsModule, export_onnx, verify_onnx
from ssd.inference.settings import InferenceSettings
from ssd.modeling.build import build_model
from ssd.modeling.ssd import SSD
from ssd.postprocess import postprocess
from tests.engine.test_benchmark import TINY, TINY_PRIORS


@pytest.fixture(scope="module")
def tiny() -> tuple[Config, SSD]:
    torch.manual_seed(0)
    cfg = config_from_dict(TINY)
    return cfg, build_model(cfg).eval()


def _inputs(cfg: Config, n: int, seed: int = 1) -> torch.Tensor:
    s = InferenceSettings.from_config(cfg)
    x, _ = preprocess(random_images(n, 90, 120, seed=seed), s.image_size, s.mean, s.std, torch.device("cpu"))
    return x


def test_network_export_matches_pytorch_with_dynamic_batch(tiny: tuple[Config, SSD], tmp_path: Path) -> None:
    import onnxruntime as ort

    cfg, model = tiny
    settings = InferenceSettings.from_config(cfg)
    path = export_onnx(model, tmp_path / "net.onnx", settings)  # traced at batch 1
    x = _inputs(cfg, 3)
    report = verify_onnx(path, model, x, settings)
    assert report.ok, report
    assert report.max_abs_diff < 1e-3
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    assert out[0].shape == (3, TINY_PRIORS, cfg.num_classes) and out[1].shape == (3, TINY_PRIORS, 4)


def test_verify_detects_a_different_model(tiny: tuple[Config, SSD], tmp_path: Path) -> None:
    cfg, model = tiny
    settings = InferenceSettings.from_config(cfg)
    path = export_onnx(model, tmp_path / "net.onnx", settings)
    torch.manual_seed(123)
    other = build_model(cfg).eval()
    assert not verify_onnx(path, other, _inputs(cfg, 1), settings).ok


def test_detections_module_equals_reference_postprocess(tiny: tuple[Config, SSD]) -> None:
    cfg, model = tiny
    settings = InferenceSettings.from_config(cfg)
    x = _inputs(cfg, 1)
    with torch.no_grad():
        boxes, scores, labels = DetectionsModule(model, settings)(x)
        # orig size (1, 1): postprocess's pixel boxes are then input-relative boxes
        ref = postprocess(model(x), model.priors(), torch.tensor([[1.0, 1.0]]))[0]
    assert len(scores) == len(ref) > 0
    torch.testing.assert_close(boxes, ref.boxes)
    torch.testing.assert_close(scores, ref.scores)
    assert torch.equal(labels, ref.labels)


def test_export_with_nms_matches_pytorch(tiny: tuple[Config, SSD], tmp_path: Path) -> None:
    cfg, model = tiny
    settings = InferenceSettings.from_config(cfg)
    path = export_onnx(model, tmp_path / "det.onnx", settings, with_nms=True)
    report = verify_onnx(path, model, _inputs(cfg, 2), settings, with_nms=True)
    assert report.ok, report
    assert report.per_image is not None
    assert [r.detections_onnx for r in report.per_image] == [r.detections_torch for r in report.per_image]
    assert all(r.detections_onnx > 0 for r in report.per_image)


def test_export_with_nms_and_no_detections(tiny: tuple[Config, SSD], tmp_path: Path) -> None:
    cfg, model = tiny
    settings = dataclasses.replace(InferenceSettings.from_config(cfg), score_threshold=0.999)
    path = export_onnx(model, tmp_path / "none.onnx", settings, with_nms=True)
    report = verify_onnx(path, model, _inputs(cfg, 1), settings, with_nms=True)
    assert report.ok, report
    assert report.per_image is not None and report.per_image[0].detections_onnx == 0


def test_load_model_uses_checkpoint_config_and_weights(tiny: tuple[Config, SSD], tmp_path: Path) -> None:
    cfg, model = tiny
    ckpt = save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg)}, tmp_path / "m.pt")
    cfg2, model2 = load_model(ckpt)
    assert cfg2 == cfg
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), k
    # an explicit config overrides the stored one; a model that does not fit is a CheckpointError
    other = tmp_path / "other.yaml"
    other.write_text(json.dumps({"model": {"width_mult": 0.25}, "priors": TINY["priors"]}))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(ckpt, config=other)
    cfg3, _ = load_model(ckpt, overrides=["postprocess.score_threshold=0.5"])
    assert cfg3 == replace(cfg, **{"postprocess.score_threshold": 0.5})


def test_export_cli_checkpoint_json(
    tiny: tuple[Config, SSD], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, model = tiny
    ckpt = save_checkpoint({"model": model.state_dict(), "config": config_to_dict(cfg)}, tmp_path / "m.pt")
    out = tmp_path / "m.onnx"
    rc = export_main(
        ["--checkpoint", str(ckpt), "--onnx", str(out), "--with-nms", "--num-samples", "1", "--json",
         "--output-dir", str(tmp_path / "rep")]
    )  # fmt: skip
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["with_nms"] and report["batch"] == "fixed 1" and report["image_size"] == 320
    assert report["verification"]["ok"] and report["verification"]["max_abs_diff"] < 1e-3
    assert out.is_file() and (tmp_path / "rep" / "export_report.json").is_file()


def test_export_cli_config_only_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(json.dumps(TINY))  # JSON is YAML
    assert (
        export_main(["--config", str(cfg_path), "--onnx", str(tmp_path / "a.onnx"), "--num-samples", "1"])
        == 0
    )
    assert "max abs diff" in capsys.readouterr().out
    assert export_main(["--config", str(tmp_path / "missing.yaml"), "--onnx", str(tmp_path / "b.onnx")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert export_main(["--checkpoint", str(tmp_path / "nope.pt"), "--onnx", str(tmp_path / "c.onnx")]) == 2
    assert "nope.pt" in capsys.readouterr().err
