"""Daily use: train -> evaluate / predict / benchmark / export from the checkpoint alone, device
errors before anything is created, run-folder protection, report files, safe checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import ssd
from ssd.cli import benchmark as benchmark_tool
from ssd.cli import evaluate as evaluate_tool
from ssd.cli import export as export_tool
from ssd.cli import predict as predict_tool
from ssd.cli import train as train_tool
from ssd.config import config_to_dict
from ssd.inference.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tests.conftest import TINY_PRIORS, synthetic_data


def tiny_config(tmp: Path, **train: Any) -> Path:
    """A 272-input, width-1/8 model on 8 synthetic images; 4 iterations, evaluated at the end."""
    cfg = {
        "data": synthetic_data(8, (320, 240), root=str(tmp / "data")),
        "model": {"batch_norm": True, "width_mult": 0.125},
        "priors": TINY_PRIORS,
        "train": {"batch_size": 2, "max_iters": 4, "lr": 0.01, "warmup_iters": 1, "milestones": [3],
                  "log_every": 1, "eval_every": 4, "checkpoint_every": 2, **train},
        "eval": {"batch_size": 2},
    }  # fmt: skip
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The smoke config trained through the CLI (4 iterations, evaluated at the end); its --json
    summary."""
    tmp = tmp_path_factory.mktemp("daily")
    run = tmp / "run"
    import contextlib
    import io

    from tests.conftest import REPO

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = train_tool.main(["--config", str(REPO / "configs" / "smoke.yaml"), "--output-dir", str(run),
                              "--set", f"data.root={tmp / 'data'}", "--set", "train.max_iters=4",
                              "--set", "train.eval_every=4", "--set", "train.checkpoint_every=2",
                              "--device", "cpu", "--quiet", "--json"])  # fmt: skip
    assert rc == 0
    return run, json.loads(out.getvalue())


def test_train_reports_per_class_ap_map_and_fps(trained: tuple[Path, dict[str, Any]]) -> None:
    run, summary = trained
    report = summary["report"]
    assert set(report["per_class_ap"]) == set(report["num_gt"]) and sum(report["num_gt"].values()) > 0
    assert report["speed"]["end_to_end_fps"] > 0 and report["speed"]["batch_size"] == 1
    assert report["speed"]["precision"] == "fp32" and report["speed"]["device"] == "cpu"
    assert json.loads((run / "results.json").read_text())["mAP"] == report["mAP"]
    text = (run / "report.md").read_text()
    assert "| **mAP** |" in text and "FPS (end to end" in text and "## Confusion matrix" in text
    assert (run / "confusion_matrix.png").stat().st_size > 1000
    state = load_checkpoint(run / "last.pt")
    assert state["class_names"] == list(ssd.load_config(run / "config.yaml").data.classes)
    assert state["config"] == config_to_dict(ssd.load_config(run / "config.yaml"))


def test_tensorboard_gets_pr_curves_and_drawn_detections(trained: tuple[Path, dict[str, Any]]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = trained
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()["images"]
    assert "eval/pr_curves" in tags
    drawn = [t for t in tags if t.startswith("eval/detections/")]
    assert 1 <= len(drawn) <= 4
    assert events.Images(drawn[0])[-1].step == 4 and events.Images(drawn[0])[-1].width == 320


def test_evaluate_from_the_checkpoint_alone_gives_the_training_figures(
    trained: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, summary = trained
    argv = ["--checkpoint", str(run / "last.pt"), "--device", "cpu", "--quiet"]
    assert evaluate_tool.main([*argv, "--json", "--output-dir", str(tmp_path / "ev")]) == 0
    out = json.loads(capsys.readouterr().out)
    final = summary["final_metrics"]
    assert out["mAP"] == final["mAP"] and out["per_class_ap"] == final["per_class_ap"]
    assert out["num_detections"] == final["num_detections"] and out["num_gt"] == final["num_gt"]
    assert out["confusion_matrix"] == final["confusion_matrix"]
    assert out["speed"]["end_to_end_fps"] > 0
    for name in ("report.md", "results.json", "confusion_matrix.png", "pr_curves.png"):
        assert (tmp_path / "ev" / name).exists()
    assert evaluate_tool.main(argv) == 0  # the plain table: per-class AP, GT, mAP and FPS
    text = capsys.readouterr().out
    assert "| GT |" in text and "**mAP**" in text and "images/s on cpu" in text and "batch 1, fp32" in text


def test_predict_save_json_is_read_by_evaluate_predictions(
    trained: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ssd.data.loader import build_records
    from ssd.evaluation.coco import gt_to_coco
    from ssd.evaluation.voc import GroundTruth

    run, _ = trained
    cfg = ssd.load_config(run / "config.yaml")
    records = build_records(cfg, "val")
    gt = gt_to_coco([GroundTruth.from_record(r) for r in records], cfg.data.classes,
                    [r.image_path.stem for r in records], [(r.height, r.width) for r in records])  # fmt: skip
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    preds = tmp_path / "preds.json"
    images = [str(r.image_path) for r in records]
    argv = ["--checkpoint", str(run / "last.pt"), *images, "--device", "cpu", "--quiet",
            "--output-dir", str(tmp_path / "drawn"), "--save-json", str(preds)]  # fmt: skip
    assert predict_tool.main(argv) == 0
    rows = json.loads(preds.read_text())
    assert rows and {"image_id", "category_id", "bbox", "score"} <= set(rows[0])
    capsys.readouterr()
    assert evaluate_tool.main(["--annotations", str(gt_path), "--predictions", str(preds), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_images"] == len(records) and sum(out["num_detections"].values()) == len(rows)
    # with --annotations the ids are those of the ground-truth file
    assert predict_tool.main(["--checkpoint", str(run / "last.pt"), images[0], "--device", "cpu",
                              "--output-dir", str(tmp_path / "d2"), "--save-json", str(tmp_path / "p2.json"),
                              "--annotations", str(gt_path)]) == 0  # fmt: skip
    ids = {r["image_id"] for r in json.loads((tmp_path / "p2.json").read_text())}
    assert ids <= {records[0].image_path.stem}


def test_benchmark_and_export_take_the_checkpoint_alone(
    trained: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = trained
    ckpt = str(run / "last.pt")
    assert benchmark_tool.main(["--checkpoint", ckpt, "--device", "cpu", "--iters", "1", "--warmup", "0",
                                "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["image_size"] == 320  # the smoke config's input
    assert export_tool.main(["--checkpoint", ckpt, "--onnx", str(tmp_path / "m.onnx"), "--no-verify"]) == 0


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("tool", ["train", "evaluate", "predict", "benchmark", "export"])
def test_unavailable_device_is_one_line_exit_2_before_anything_is_created(
    tool: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = tiny_config(tmp_path)
    out = tmp_path / "out"
    ckpt = tmp_path / "m.pt"
    cfg = ssd.load_config(config)
    save_checkpoint({"model": ssd.build_model(cfg).state_dict(), "config": config_to_dict(cfg)}, ckpt)
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (40, 30)).save(image)
    argv = {
        "train": (train_tool.main, ["--config", str(config), "--output-dir", str(out)]),
        "evaluate": (evaluate_tool.main, ["--checkpoint", str(ckpt), "--output-dir", str(out)]),
        "predict": (predict_tool.main, ["--checkpoint", str(ckpt), str(image), "--output-dir", str(out)]),
        "benchmark": (benchmark_tool.main, ["--checkpoint", str(ckpt), "--output-dir", str(out)]),
        "export": (export_tool.main, ["--checkpoint", str(ckpt), "--onnx", str(out / "m.onnx")]),
    }[tool]
    assert argv[0]([*argv[1], "--device", "cuda"]) == 2
    assert "--device cuda" in _one_line_error(capsys)
    assert not out.exists() and not (tmp_path / "data").exists()
    assert argv[0]([*argv[1], "--device", "gpu0"]) == 2
    assert "not a device name" in _one_line_error(capsys)


def test_device_auto_picks_cuda_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    from ssd.inference.device import DeviceError, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceError, match="2 CUDA device"):
        resolve_device("cuda:2")


def test_checkpoint_of_another_model_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config(tmp_path)
    cfg = ssd.load_config(config)
    ckpt = tmp_path / "m.pt"
    save_checkpoint({"model": ssd.build_model(cfg).state_dict(), "config": config_to_dict(cfg)}, ckpt)
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (40, 30)).save(image)
    three = "data.classes=[a,b,c]"
    assert evaluate_tool.main(["--checkpoint", str(ckpt), "--set", three, "--device", "cpu"]) == 2
    err = _one_line_error(capsys)
    assert str(ckpt) in err and "10 classes in the checkpoint, 3 in the config" in err
    assert predict_tool.main(["--checkpoint", str(ckpt), str(image), "--set", three, "--device", "cpu",
                              "--output-dir", str(tmp_path / "p")]) == 2  # fmt: skip
    assert "3 in the config" in _one_line_error(capsys)
    wide = "model.width_mult=0.25"
    assert evaluate_tool.main(["--checkpoint", str(ckpt), "--set", wide, "--device", "cpu"]) == 2
    assert "model.width_mult 0.125 in the checkpoint, 0.25 in the config" in _one_line_error(capsys)


def test_old_checkpoint_without_config_asks_for_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = ssd.load_config(tiny_config(tmp_path))
    ckpt = tmp_path / "old.pt"
    save_checkpoint({"model": ssd.build_model(cfg).state_dict()}, ckpt)
    assert evaluate_tool.main(["--checkpoint", str(ckpt), "--device", "cpu"]) == 2
    assert "pass --config" in _one_line_error(capsys)
    with pytest.raises(CheckpointError, match="pass --config"):
        ssd.Detector(None, ckpt)
    det = ssd.Detector(cfg, ckpt)  # with a config it works
    assert det.class_names == cfg.data.classes


def test_checkpoint_with_code_objects_is_refused(tmp_path: Path) -> None:
    """weights_only=True: a pickle that would construct arbitrary objects is not loaded."""
    path = tmp_path / "evil.pt"
    torch.save({"ssd512_checkpoint": 1, "model": {}, "payload": Path("/x")}, path)
    with pytest.raises(CheckpointError, match="plain types"):
        load_checkpoint(path)


def test_train_refuses_an_existing_run_folder_unless_resume_or_overwrite(
    trained: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = trained
    copy = tmp_path / "run"
    import shutil

    shutil.copytree(run, copy)
    before = (copy / "metrics.jsonl").read_text()
    config = str(copy / "config.yaml")
    assert train_tool.main(["--config", config, "--output-dir", str(copy), "--device", "cpu", "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert "--resume" in err and "--overwrite" in err and "new --output-dir" in err
    assert (copy / "metrics.jsonl").read_text() == before  # nothing touched
    argv = ["--config", config, "--output-dir", str(copy), "--device", "cpu", "--quiet",
            "--overwrite", "--set", "train.max_iters=2", "--set", "train.eval_every=2"]  # fmt: skip
    assert train_tool.main(argv) == 0
    rows = [json.loads(x) for x in (copy / "metrics.jsonl").read_text().splitlines()]
    assert max(r["iteration"] for r in rows) == 2  # a fresh log, not appended
    assert load_checkpoint(copy / "last.pt")["iteration"] == 2


def test_non_utf8_config_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("data:\n  classes: [r\u00e9sidu]\n".encode("latin-1"))
    with pytest.raises(ssd.config.ConfigError, match=r"latin1\.yaml: not UTF-8"):
        ssd.load_config(path)
    assert train_tool.main(["--config", str(path), "--output-dir", str(tmp_path / "r")]) == 2
    assert "latin1.yaml: not UTF-8" in _one_line_error(capsys)


def test_bench_prior_check_times_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tools import bench_prior_check

    boxes = [{"image_id": 1, "bbox": [0, 100, 2560, 55]}, {"image_id": 1, "bbox": [10, 10, 40, 40]}]
    gt = {"images": [{"id": 1, "width": 2560, "height": 1920}], "annotations": boxes}
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(gt))
    assert bench_prior_check.main(["--annotations", str(path), "--boxes", "10", "--repeat", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["boxes"] == 10 and out["distinct_boxes"] == 2 and out["num_priors"] == 24564
    assert 0.0 <= out["recall"] <= 0.5  # the full-width band has no SSD512 prior at IoU 0.5
