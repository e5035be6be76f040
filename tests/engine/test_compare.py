"""The experiment end to end on a tiny synthetic set: every variant fitted, trained with one
schedule and two seeds, evaluated, compared with a paired bootstrap, benchmarked and reported; a
second run resumes per (variant, seed) without training again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssd import load_config
from ssd.config import config_from_dict
from ssd.data.labelme import TIANCHI_CLASSES
from ssd.data.loader import build_records
from ssd.engine.compare import CompareReport, compare, variant_config
from ssd.priors.fit import BoxSet, records_to_boxes
from ssd.priors.generator import PriorSet
from tests.conftest import TINY_PRIORS, synthetic_data

REPORT_KEYS = (
    "map", "map_sd", "maps", "per_class_ap", "fps", "num_priors", "boxes_per_cell", "mean_iou_grid",
    "recall", "recall_expected",
)  # fmt: skip
# kmeans and learned-from-original run in the demo; here learned@kmeans exercises both paths
ALL = ("original", "chi", "coverage", "learned@kmeans")
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[CompareReport, Path]:
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
    return compare(cfg, out, ALL, bench_iters=2, seeds=SEEDS, bootstrap=1000), out


def _train_boxes(out: Path) -> BoxSet:
    cfg = load_config(out / "original" / "seed0" / "config.yaml")
    return records_to_boxes(build_records(cfg, "train"), cfg.priors.image_size)


def test_report_holds_every_variant_with_the_specified_keys(report: tuple[CompareReport, Path]) -> None:
    rep, out = report
    assert list(rep.variants) == list(ALL)
    on_disk = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for name, entry in on_disk["variants"].items():
        for key in REPORT_KEYS:
            assert key in entry, (name, key)
        assert len(entry["maps"]) == len(SEEDS) and entry["map"] == pytest.approx(sum(entry["maps"]) / 2)
        assert entry["map_sd"] == pytest.approx(abs(entry["maps"][0] - entry["maps"][1]) / 2**0.5)
        if name != "original":
            lo, hi = entry["delta_ci"]
            assert lo <= hi and entry["verdict"] in ("better", "worse", "no detectable difference")
            ref = on_disk["variants"]["original"]["map"]
            assert entry["delta_map"] == pytest.approx(entry["map"] - ref)
        for s in SEEDS:
            assert (out / name / f"seed{s}" / "val_detections.pt").is_file()
        assert set(entry["per_class_ap"]) == set(TIANCHI_CLASSES)
        assert 0.0 <= entry["map"] <= 1.0 and 0.0 <= entry["map_untrained"] <= 1.0
        assert entry["fps"] > 0 and 0.0 <= entry["recall"] <= 1.0 and 0.0 <= entry["recall_expected"] <= 1.0
    base = on_disk["variants"]["original"]["num_priors"]
    assert on_disk["variants"]["coverage"]["num_priors"] <= base  # within the original budget
    assert on_disk["variants"]["chi"]["boxes_per_cell"] == 33
    base_cfg = load_config(out / "original" / "seed0" / "config.yaml")
    km, _ = variant_config("kmeans", base_cfg, _train_boxes(out))
    km_priors = PriorSet.from_config(km.priors).num_priors
    assert on_disk["variants"]["learned@kmeans"]["num_priors"] == km_priors
    assert on_disk["variants"]["learned@kmeans"]["fit_info"]["initial_shapes"] == "kmeans"
    assert on_disk["base"]["seeds"] == list(SEEDS) and on_disk["base"]["bootstrap"]["resamples"] == 1000
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "mAP untrained (%)" in md and all(f"| {n} |" in md for n in ALL)
    assert "95% interval" in md and "paired bootstrap" in md
    assert list(out.glob("*.png"))


def test_a_second_run_resumes_without_training(report: tuple[CompareReport, Path]) -> None:
    rep, out = report
    stamps = {(n, s): (out / n / f"seed{s}" / "last.pt").stat().st_mtime_ns for n in ALL for s in SEEDS}
    cfg_path = out / "original" / "seed0" / "config.yaml"
    again = compare(load_config(cfg_path), out, ["original", "chi"], bench_iters=0, seeds=SEEDS)
    for n in ("original", "chi"):
        for s in SEEDS:
            assert (out / n / f"seed{s}" / "last.pt").stat().st_mtime_ns == stamps[(n, s)]
        assert again.variants[n].maps == pytest.approx(rep.variants[n].maps)
    # the same resamples: the interval is reproduced exactly
    assert again.variants["chi"].delta_ci == pytest.approx(rep.variants["chi"].delta_ci)


def test_the_seeds_give_the_same_data_order_across_variants(report: tuple[CompareReport, Path]) -> None:
    """Every (variant, seed) run is saved with its seed and otherwise the same data and schedule,
    so the batches of a seed (a function of (seed, iteration)) are the same for every variant."""
    _, out = report
    from itertools import islice

    from ssd.data.loader import TrainBatchSampler

    orders = {}
    for n in ("original", "chi", "learned@kmeans"):
        for s in SEEDS:
            cfg = load_config(out / n / f"seed{s}" / "config.yaml")
            assert cfg.seed == s
            ref = load_config(out / "original" / "seed0" / "config.yaml")
            assert (cfg.data, cfg.train) == (ref.data, ref.train)
            sampler = TrainBatchSampler(9, cfg.train.batch_size, cfg.seed)
            orders[(n, s)] = list(islice(iter(sampler), 3))
    assert orders[("original", 0)] == orders[("chi", 0)] == orders[("learned@kmeans", 0)]
    assert orders[("original", 0)] != orders[("original", 1)]


def test_unknown_variants_and_seeds_are_rejected(tmp_path: Path) -> None:
    from ssd.config import ConfigError
    from ssd.engine.compare import parse_variant

    assert parse_variant("learned") == ("learned", "original")
    assert parse_variant("learned@chi") == ("learned", "chi")
    for bad in ("paper", "learned@learned", "chi@kmeans"):
        with pytest.raises(ConfigError, match="--variants"):
            parse_variant(bad)


def test_a_run_made_with_another_config_is_not_reused(report: tuple[CompareReport, Path]) -> None:
    _, out = report
    from ssd.config import ConfigError, replace

    changed = replace(load_config(out / "original" / "seed0" / "config.yaml"), **{"train.lr": 0.001})
    with pytest.raises(ConfigError, match="another config"):
        compare(changed, out, ["original"], bench_iters=0, seeds=SEEDS)
