"""tools/bench_matcher.py end to end on the small smoke priors."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO
from tools.bench_matcher import main


def test_prints_memory_and_time_per_batch(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--config", str(REPO / "configs" / "smoke.yaml"), "--batch-size", "3", "--crowded-boxes", "40"]
    assert main([*argv, "--iters", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    normal, crowded = out["normal"], out["crowded"]
    assert normal["images"] == crowded["images"] == 3
    assert crowded["max_boxes_per_image"] == 40 and normal["max_boxes_per_image"] <= 10
    # the same images, image 0 (1..10 boxes in the normal batch) holding 40 in the crowded one
    assert crowded["boxes"] - 40 < normal["boxes"] <= crowded["boxes"] - 40 + 10
    assert normal["priors"] == crowded["priors"] > 0
    assert normal["peak_added_bytes"] >= 0 and crowded["median_s"] > 0
    assert main([*argv, "--iters", "-1"]) == 2
