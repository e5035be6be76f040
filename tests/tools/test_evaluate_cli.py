"""ssd-evaluate end to end on COCO-format files in tmp_path."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssd.cli.evaluate import main
from ssd.evaluation.coco import detections_to_coco, gt_to_coco
from tests.evaluation.test_voc import SQ, SQ2, as_lists, make_det, make_gt, random_case, reference_voc_ap


def write_case(tmp_path: Path, seed: int = 5) -> tuple[Path, Path, dict, list[dict], list[str]]:
    gts, dets, names = random_case(seed)
    ids = [f"img{i}" for i in range(len(gts))]
    gt_json = gt_to_coco(gts, names, ids)
    preds = detections_to_coco(dets, ids)
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    gt_path.write_text(json.dumps(gt_json))
    pred_path.write_text(json.dumps(preds))
    return gt_path, pred_path, gt_json, preds, names


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("metric", ["voc07", "area"])
def test_voc_metrics_agree_with_devkit_oracle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], metric: str
) -> None:
    gt_path, pred_path, _, _, names = write_case(tmp_path)
    out = run_json(
        capsys, ["--annotations", str(gt_path), "--predictions", str(pred_path), "--metric", metric]
    )
    # the oracle runs on the same boxes, read back from the files the CLI read
    gts, dets, _ = random_case(5)
    g, _ = as_lists(gts, dets)
    pred_lists = [{"boxes": [], "scores": [], "labels": []} for _ in gts]
    for p in json.loads(pred_path.read_text()):
        x, y, w, h = p["bbox"]
        d = pred_lists[int(p["image_id"][3:])]
        d["boxes"].append([x, y, x + w, y + h])
        d["scores"].append(p["score"])
        d["labels"].append(p["category_id"])
    ref = reference_voc_ap(g, pred_lists, len(names) + 1, 0.5, metric)
    assert out["metric"] == metric and set(out["per_class_ap"]) == set(names)
    for name, r in zip(names, ref):
        assert abs(out["per_class_ap"][name] - r) < 1e-4, name
    assert out["mAP"] == pytest.approx(sum(ref) / len(ref), abs=1e-9)
    assert out["num_images"] == 25 and out["annotations"] == str(gt_path)


def test_hand_made_difficult_and_duplicates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # class a: a difficult (crowd) box and a duplicate; class b: only a FP; class c: no GT
    gts = [make_gt([SQ, SQ2], [1, 1], [False, True]), make_gt([SQ], [2])]
    dets = [make_det([SQ2, SQ, SQ], [0.9, 0.8, 0.7], [1, 1, 1]), make_det([SQ2], [0.6], [2])]
    (tmp_path / "gt.json").write_text(json.dumps(gt_to_coco(gts, ["a", "b", "c"])))
    (tmp_path / "p.json").write_text(json.dumps(detections_to_coco(dets)))
    argv = ["--annotations", str(tmp_path / "gt.json"), "--predictions", str(tmp_path / "p.json")]
    out = run_json(capsys, argv)  # default metric voc07
    assert out["metric"] == "voc07" and out["iou_threshold"] == 0.5
    assert out["per_class_ap"] == {"a": 1.0, "b": 0.0, "c": None}
    assert out["mAP"] == 0.5 and out["classes_without_gt"] == ["c"]
    assert out["num_gt"] == {"a": 1, "b": 1, "c": 0} and out["num_difficult"]["a"] == 1


def test_coco_metric_equals_pycocotools(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_path, pred_path, _, _, names = write_case(tmp_path, seed=6)
    out_dir = tmp_path / "report"
    args = ["--annotations", str(gt_path), "--predictions", str(pred_path), "--metric", "coco"]
    out = run_json(capsys, [*args, "--output-dir", str(out_dir)])
    with contextlib.redirect_stdout(io.StringIO()):
        # string image ids are not sortable against ints but pycocotools handles all-str ids
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(str(pred_path))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for k, name in enumerate(["AP", "AP50", "AP75", "APs", "APm", "APl"]):
        ref = float(ev.stats[k])
        assert (out[name] is None) if ref < 0 else (out[name] == pytest.approx(ref, abs=1e-12)), name
    assert out["mAP"] == out["AP"]
    assert set(out["per_class_ap50"]) == set(names) and set(out["per_class_ap"]) == set(names)
    assert json.loads((out_dir / "results.json").read_text()) == out
    assert (out_dir / "report.md").read_text().startswith("# Evaluation (coco)")
    assert (out_dir / "pr_curves.png").stat().st_size > 0


def test_output_dir_and_plain_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_path, pred_path, _, _, names = write_case(tmp_path)
    out_dir = tmp_path / "out"
    argv = ["--annotations", str(gt_path), "--predictions", str(pred_path), "--metric", "area"]
    assert main([*argv, "--output-dir", str(out_dir), "--iou", "0.7"]) == 0
    text = capsys.readouterr().out
    assert "metric: area" in text and "| **mAP** |" in text and f"wrote {out_dir / 'report.md'}" in text
    results = json.loads((out_dir / "results.json").read_text())
    assert results["iou_threshold"] == 0.7 and set(results["per_class_ap"]) == set(names)
    assert "| class | AP@0.7 (area) | GT |" in (out_dir / "report.md").read_text()
    assert (out_dir / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_and_malformed_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_path, pred_path, _, preds, _ = write_case(tmp_path)
    missing = tmp_path / "nope.json"
    assert main(["--annotations", str(missing), "--predictions", str(pred_path)]) == 2
    assert str(missing) in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('[{"image_id": ')
    assert main(["--annotations", str(gt_path), "--predictions", str(broken), "--json"]) == 2
    cap = capsys.readouterr()
    assert str(broken) in cap.err and "not valid JSON" in cap.err and cap.out == ""
    bad = copy.deepcopy(preds)
    bad[3]["category_id"] = 99
    bad_path = tmp_path / "bad.json"
    bad_path.write_text(json.dumps(bad))
    for metric in ("voc07", "coco"):
        assert main(["--annotations", str(gt_path), "--predictions", str(bad_path), "--metric", metric]) == 2
        err = capsys.readouterr().err
        assert str(bad_path) in err and "[3].category_id 99" in err


def test_zero_size_ground_truth_box_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a GT box no detection can match would lower the AP silently: refused, naming file and box
    _, pred_path, gt_json, _, _ = write_case(tmp_path)
    for k, (w, h) in enumerate([(0, 5.0), (4.0, 0)]):
        bad = copy.deepcopy(gt_json)
        bad["annotations"][2]["bbox"][2:] = [w, h]
        bad_path = tmp_path / f"zero{k}.json"
        bad_path.write_text(json.dumps(bad))
        for metric in ("voc07", "coco"):
            argv = ["--annotations", str(bad_path), "--predictions", str(pred_path), "--metric", metric]
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert str(bad_path) in err and "annotations[2].bbox has zero width or height" in err
            assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give --annotations and --predictions"),
        (["--annotations", "a.json"], "needs both --annotations and --predictions"),
        (["--annotations", "a.json", "--predictions", "p.json", "--config", "c.yaml"], "not both"),
        (["--annotations", "a.json", "--predictions", "p.json", "--metric", "coco", "--iou", "0.5"], "--iou"),
        (["--annotations", "a.json", "--predictions", "p.json", "--iou", "0"], "--iou must lie"),
        (["--annotations", "a.json", "--predictions", "p.json", "--split", "val"], "checkpoint mode"),
        (["--metric", "map"], "invalid choice"),
        (["--config", "c.yaml"], "checkpoint mode needs --checkpoint"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_checkpoint_mode_resolves_config_and_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint mode takes the config from --config (else the checkpoint), applies
    --set/--metric/--iou, and hands it to the engine; here prediction is a recording stand-in."""
    import ssd
    from ssd.config import config_to_dict
    from ssd.engine import evaluate as engine
    from ssd.inference.checkpoint import save_checkpoint
    from tests.tools.test_daily_use import tiny_config

    calls: list[tuple[Any, ...]] = []

    def fake_predict(model: Any, cfg: Any, split: str, device: Any, progress: Any = None) -> dict[str, Any]:
        calls.append((cfg, split, device))
        return {}

    monkeypatch.setattr(engine, "predict_split", fake_predict)
    cfg = ssd.load_config(tiny_config(tmp_path))
    cfg_path = tmp_path / "c.yaml"
    ssd.config.save_config(cfg, cfg_path)
    ckpt = tmp_path / "m.pt"
    save_checkpoint({"model": ssd.build_model(cfg).state_dict(), "config": config_to_dict(cfg)}, ckpt)
    out_dir = tmp_path / "o"
    argv = ["--config", str(cfg_path), "--checkpoint", str(ckpt), "--set", "seed=4", "--metric", "area",
            "--iou", "0.6", "--split", "train", "--device", "cpu", "--output-dir", str(out_dir),
            "--json", "--no-speed", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    (got, split, device) = calls[0]
    assert got.seed == 4 and got.eval.metric == "area" and math.isclose(got.eval.iou_threshold, 0.6)
    assert (split, str(device)) == ("train", "cpu")
    assert out["mAP"] == 0.0 and out["checkpoint"] == str(ckpt) and out["split"] == "train"
    assert json.loads((out_dir / "results.json").read_text()) == out
    assert "| **mAP** | **0.0000** |" in (out_dir / "report.md").read_text()
    # without --config: the checkpoint's stored config (with --set)
    assert main(["--checkpoint", str(ckpt), "--set", "seed=7", "--no-speed", "--quiet", "--json"]) == 0
    assert calls[-1][0].seed == 7 and calls[-1][0].data == cfg.data
    # a missing checkpoint or a bad config key is a data/usage error
    assert main(["--config", str(cfg_path), "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in capsys.readouterr().err
    assert main(["--checkpoint", str(ckpt), "--set", "nope.x=1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_missing_pycocotools_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gt_path, pred_path, _, _, _ = write_case(tmp_path)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    assert main(["--annotations", str(gt_path), "--predictions", str(pred_path), "--metric", "coco"]) == 2
    assert "pycocotools" in capsys.readouterr().err


def test_checkpoint_mode_lists_the_images_it_could_not_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssd
    from ssd.config import config_to_dict
    from ssd.data.records import DatasetError
    from ssd.engine import evaluate as engine
    from ssd.inference.checkpoint import save_checkpoint
    from tests.tools.test_daily_use import tiny_config

    error = DatasetError("/d/a/cut.png", "cannot decode image: x", kind="unreadable_image")

    def fake_predict(model: Any, cfg: Any, split: str, device: Any, progress: Any = None) -> Any:
        return engine.SplitPredictions({}, [], [error])

    monkeypatch.setattr(engine, "predict_split", fake_predict)
    cfg = ssd.load_config(tiny_config(tmp_path))
    ckpt = tmp_path / "m.pt"
    save_checkpoint({"model": ssd.build_model(cfg).state_dict(), "config": config_to_dict(cfg)}, ckpt)
    assert main(["--checkpoint", str(ckpt), "--no-speed", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "1 image(s) could not be used and were not scored" in err
    assert "/d/a/cut.png: cannot decode image: x" in err
