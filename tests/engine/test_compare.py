"""The experiment end to end on a tiny synthetic set: every variant fitted, trained with one
schedule, evaluated, benchmarked and reported; a second run resumes without training again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssd.config import config_from_dict
from ssd.data.labelme import TIANCHI_CLASSES
from ssd.engine.compare import VARIANTS, compare
from tests.conftest import TINY_PRIORS, synthetic_data

REPORT_KEYS = (
    "map", "per_class_ap", "fps", "num_priors", "boxes_per_cell", "mean_iou_grid",
    "recall", "recall_expected",
)  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("compare")
    cfg = config_from_dict(
        {
            "data": synthetic_data(12, (320, 240), root=str(root / "data")),
            "model": {"batch_norm": True, "width_mult": 0.125},
            "priors": {**TINY_PRIORS, "learn": {"warmup_iters": 2}},
            "train": {
                "batch_size": 2,
                "max_iters": 3,
                "optimizer": "adamw",
                "lr": 0.002,
                "warmup_iters": 1,
                "log_every": 1,
                "eval_every": 3,
                "checkpoint_every": 3,
            },
            "eval": {"batch_size": 2},
        }
    )
    out = root / "report"
    return compare(cfg, out, VARIANTS, bench_iters=2), out


def test_report_holds_every_variant_with_the_specified_keys(report: tuple[dict, Path]) -> None:
    rep, out = report
    assert list(rep["variants"]) == list(VARIANTS)
    on_disk = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for name, entry in on_disk["variants"].items():
        for key in REPORT_KEYS:
            assert key in entry, (name, key)
        assert set(entry["per_class_ap"]) == set(TIANCHI_CLASSES)
        assert 0.0 <= entry["map"] <= 1.0 and 0.0 <= entry["map_untrained"] <= 1.0
        assert entry["fps"] > 0 and 0.0 <= entry["recall"] <= 1.0 and 0.0 <= entry["recall_expected"] <= 1.0
    base = on_disk["variants"]["original"]["num_priors"]
    assert on_disk["variants"]["coverage"]["num_priors"] <= base  # within the original budget
    assert on_disk["variants"]["learned"]["num_priors"] == base
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "mAP untrained (%)" in md and all(f"| {n} |" in md for n in VARIANTS)
    assert list(out.glob("*.png"))


def test_a_second_run_resumes_without_training(report: tuple[dict, Path]) -> None:
    rep, out = report
    stamps = {n: (out / n / "last.pt").stat().st_mtime_ns for n in VARIANTS}
    cfg_path = out / "original" / "config.yaml"
    from ssd import load_config

    again = compare(load_config(cfg_path), out, ["original"], bench_iters=2)
    assert (out / "original" / "last.pt").stat().st_mtime_ns == stamps["original"]
    assert again["variants"]["original"]["map"] == pytest.approx(rep["variants"]["original"]["map"])
