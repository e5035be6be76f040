"""Evaluation scores exactly the images it read and reports the ones it skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ssd
from ssd.config import Config, config_from_dict
from ssd.data.loader import build_records, ensure_synthetic
from ssd.data.records import DatasetError
from ssd.engine.evaluate import evaluate_model
from tests.conftest import TINY_PRIORS, synthetic_data


def _cfg(root: Path, **data: object) -> Config:
    return config_from_dict(
        {
            "data": synthetic_data(12, (160, 120), root=str(root), **data),
            "model": {"batch_norm": True, "width_mult": 0.125},
            "priors": TINY_PRIORS,
            "eval": {"batch_size": 2},
        }
    )


def _break_two_val_images(cfg: Config) -> tuple[Path, Path, Path]:
    """(header unreadable, truncated pixels, intact) val images."""
    root = Path(cfg.data.root)
    ensure_synthetic(cfg)
    junk, cut, good = (root / line for line in (root / "val.txt").read_text().split())
    junk.write_bytes(b"this is no image")
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return junk, cut, good


@pytest.mark.parametrize("workers", [0, 2])
def test_scores_exactly_the_images_read_and_lists_the_skipped(tmp_path: Path, workers: int) -> None:
    cfg = _cfg(tmp_path / "data", skip_invalid=True, num_workers=workers)
    junk, cut, good = _break_two_val_images(cfg)
    root = Path(cfg.data.root)
    model = ssd.build_model(cfg)
    torch.manual_seed(0)
    out = evaluate_model(model, cfg, "val", torch.device("cpu"))
    assert out.num_images == 1 and out.num_skipped == 2
    skipped = {e.image_id: e for e in out.skipped}
    assert set(skipped) == {junk.relative_to(root).as_posix(), cut.relative_to(root).as_posix()}
    assert {e.file for e in skipped.values()} == {str(junk), str(cut)}
    assert all(e.kind == "unreadable_image" and e.problem for e in skipped.values())
    # the ground truth scored is the intact image's alone
    (rec,) = [r for r in build_records(cfg, "val") if r.image_path == good]
    assert sum(out.result.num_gt.values()) + sum(out.result.num_difficult.values()) == rec.num_boxes


def test_without_skip_invalid_an_undecodable_image_is_a_dataset_error(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "data", num_workers=2)
    _, cut, _ = _break_two_val_images(cfg)
    (Path(cfg.data.root) / "val.txt").write_text(cut.relative_to(cfg.data.root).as_posix() + "\n")
    with pytest.raises(DatasetError, match="cannot decode image") as info:
        evaluate_model(ssd.build_model(cfg), cfg, "val", torch.device("cpu"))
    assert info.value.path == str(cut) and "\n" not in str(info.value)
