"""The training loop on CPU: loss falls, exact resume, faults survived, learned priors exported."""

from __future__ import annotations

import json
import math
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import ssd
from ssd.config import Config, config_from_dict, replace
from ssd.data.labelme import TIANCHI_CLASSES
from ssd.data.loader import ensure_synthetic
from ssd.data.records import DatasetError
from ssd.engine.train import (
    TrainingError,
    TrainingInterrupted,
    build_optimizer,
    lr_factor,
    train,
    truncate_metrics,
)
from ssd.inference.checkpoint import CheckpointError, load_checkpoint
from ssd.losses import MultiBoxLoss
from tests.conftest import TINY_PRIORS, synthetic_data

CLASSES = list(TIANCHI_CLASSES)


def tiny_cfg(root: Path, **train: Any) -> Config:
    """A 272-input (the smallest SSD512-shaped input), width-1/8 model on 8 synthetic images."""
    return config_from_dict(
        {
            "data": synthetic_data(8, (320, 240), root=str(root)),
            "model": {"batch_norm": True, "width_mult": 0.125},
            "priors": TINY_PRIORS,
            "train": {
                "batch_size": 2,
                "max_iters": 6,
                "lr": 0.01,
                "warmup_iters": 2,
                "milestones": [4],
                "log_every": 2,
                "eval_every": 1000,
                "checkpoint_every": 3,
                **train,
            },
            "eval": {"batch_size": 2},
        }
    )


def _losses(history: list[dict[str, float]]) -> list[float]:
    return [h["loss"] for h in history]


def _no_eval(model: Any, cfg: Config, device: torch.device) -> dict[str, Any]:
    return {"mAP": 0.0, "per_class_ap": {}}


def test_lr_schedule_warmup_multistep_and_cosine(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, warmup_iters=10, warmup_factor=0.1, milestones=[20, 30], max_iters=40)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(5, cfg) == pytest.approx(0.55)
    assert lr_factor(10, cfg) == 1.0 and lr_factor(19, cfg) == 1.0
    assert lr_factor(20, cfg) == pytest.approx(0.1) and lr_factor(35, cfg) == pytest.approx(0.01)
    cos = tiny_cfg(tmp_path, warmup_iters=0, schedule="cosine", max_iters=40)
    assert lr_factor(0, cos) == 1.0 and lr_factor(20, cos) == pytest.approx(0.5)
    assert lr_factor(40, cos) == pytest.approx(0.0, abs=1e-12)


def test_loss_falls_and_evaluation_gives_per_class_ap(tmp_path: Path) -> None:
    # Few positives per batch (the original priors fit the synthetic bands badly) make single-step
    # losses noisy: compare the means of the first and last six steps.
    cfg = tiny_cfg(tmp_path / "data", max_iters=24, lr=0.01, grad_clip=5.0, eval_every=24, milestones=[20])
    result = train(cfg, tmp_path / "run")
    losses = _losses(result.history)
    assert len(losses) == 24 and all(x == x for x in losses)
    assert sum(losses[-6:]) / 6 < 0.75 * sum(losses[:6]) / 6
    assert result.final_metrics is not None
    assert set(result.final_metrics["per_class_ap"]) == set(CLASSES)
    assert 0.0 <= result.final_metrics["mAP"] <= 1.0
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.jsonl"):
        assert (tmp_path / "run" / name).exists()
    assert ssd.load_config(tmp_path / "run" / "config.yaml") == cfg
    assert any((tmp_path / "run" / "tb").iterdir())


def test_resume_reproduces_the_uninterrupted_losses(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path / "data", max_iters=6, checkpoint_every=3)
    full = train(cfg, tmp_path / "full", evaluate_fn=_no_eval)
    first = train(ssd.config.replace(cfg, **{"train.max_iters": 3}), tmp_path / "part", evaluate_fn=_no_eval)
    assert load_checkpoint(first.last_checkpoint)["iteration"] == 3
    rest = train(cfg, tmp_path / "part", resume=True, evaluate_fn=_no_eval)
    assert rest.iteration == 6
    assert _losses(first.history) == _losses(full.history)[:3]
    assert _losses(rest.history) == _losses(full.history)[3:]  # bit-exact continuation
    a = load_checkpoint(full.last_checkpoint)["model"]
    b = load_checkpoint(rest.last_checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_adamw_channels_last_run_resumes_exactly(tmp_path: Path) -> None:
    cfg = tiny_cfg(
        tmp_path / "data", max_iters=4, checkpoint_every=2, optimizer="adamw", lr=0.002, channels_last=True
    )
    model = ssd.build_model(cfg)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    assert [g["weight_decay"] for g in opt.param_groups] == [cfg.train.weight_decay, 0.0]
    full = train(cfg, tmp_path / "full", evaluate_fn=_no_eval)
    first = train(ssd.config.replace(cfg, **{"train.max_iters": 2}), tmp_path / "part", evaluate_fn=_no_eval)
    rest = train(cfg, tmp_path / "part", resume=True, evaluate_fn=_no_eval)
    assert _losses(first.history) + _losses(rest.history) == _losses(full.history)
    assert "exp_avg" in next(iter(load_checkpoint(rest.last_checkpoint)["optimizer"]["state"].values()))
    with pytest.raises(ssd.config.ConfigError, match=r"train\.optimizer"):
        tiny_cfg(tmp_path, optimizer="adam")


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path / "data", max_iters=2)
    train(cfg, tmp_path / "run", evaluate_fn=_no_eval)
    other = ssd.config.replace(cfg, **{"train.lr": 0.5, "train.max_iters": 4})
    with pytest.raises(CheckpointError, match=r"train\.lr"):
        train(other, tmp_path / "run", resume=True, evaluate_fn=_no_eval)


def test_sigterm_writes_a_checkpoint_and_resume_continues_exactly(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path / "data", max_iters=6, checkpoint_every=100)
    full = train(cfg, tmp_path / "full", evaluate_fn=_no_eval)

    def kill_at_4(it: int, scalars: dict[str, float]) -> None:
        if it == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as info:
        train(cfg, tmp_path / "run", progress=kill_at_4, evaluate_fn=_no_eval)
    assert info.value.iteration == 4
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 4
    rest = train(cfg, tmp_path / "run", resume=True, evaluate_fn=_no_eval)
    assert _losses(rest.history) == _losses(full.history)[4:]


def test_non_finite_losses_are_skipped_then_abort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = MultiBoxLoss.forward
    calls = {"n": 0}

    def nan_at_second_call(self: MultiBoxLoss, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            out.total = out.total * float("nan")
        return out

    monkeypatch.setattr(MultiBoxLoss, "forward", nan_at_second_call)
    cfg = tiny_cfg(tmp_path / "data", max_iters=4)
    result = train(cfg, tmp_path / "run", evaluate_fn=_no_eval)
    assert result.skipped_steps == 1 and result.iteration == 4
    state = load_checkpoint(result.last_checkpoint)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())

    def always_nan(self: MultiBoxLoss, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        out.total = out.total * float("nan")
        return out

    monkeypatch.setattr(MultiBoxLoss, "forward", always_nan)
    bad = tiny_cfg(tmp_path / "data", max_iters=10, max_bad_steps=3)
    with pytest.raises(TrainingError, match="3 non-finite losses in a row"):
        train(bad, tmp_path / "bad", evaluate_fn=_no_eval)


def test_learnable_run_exports_a_fixed_prior_config(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path / "data", max_iters=4)
    cfg = ssd.config.replace(cfg, **{"priors.learnable": True, "priors.learn.warmup_iters": 2})
    result = train(cfg, tmp_path / "run", evaluate_fn=_no_eval)
    assert result.learned_config is not None
    learned = ssd.load_config(result.learned_config)
    assert learned.priors.shapes is not None and not learned.priors.learnable
    state = load_checkpoint(result.last_checkpoint)
    model = ssd.build_model(learned)
    model.load_state_dict(state["model"])
    assert torch.equal(model.priors(), ssd.generate_priors(learned.priors))
    initial = ssd.generate_priors(tiny_cfg(tmp_path / "data").priors)
    assert not torch.equal(model.priors(), initial)  # the shapes moved
    with Image.open(tmp_path / "run" / "learned_priors.png") as im:  # shapes over the GT density
        assert im.width > 100 and im.height > 100


def _truncate(path: Path, keep: float = 0.5) -> None:
    """Cut an image file short: its header still reads, its pixels do not decode."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _val_images(root: Path) -> list[Path]:
    return [root / line for line in (root / "val.txt").read_text().split()]


@pytest.mark.parametrize("workers", [0, 1])
def test_undecodable_val_image_loses_no_training(tmp_path: Path, workers: int) -> None:
    # the header scan passes; the first evaluation meets the truncated file: a DatasetError
    # naming it (not a worker RuntimeError), and the checkpoint of that iteration exists already
    cfg = tiny_cfg(tmp_path / "data", max_iters=4, eval_every=2, checkpoint_every=100)
    cfg = replace(cfg, **{"data.num_workers": workers})
    ensure_synthetic(cfg)
    bad = _val_images(tmp_path / "data")[1]
    _truncate(bad)
    with pytest.raises(DatasetError, match=re.escape(str(bad))) as info:
        train(cfg, tmp_path / "run")
    assert "\n" not in str(info.value) and "cannot decode image" in str(info.value)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 2


def test_skip_invalid_skips_undecodable_images_in_training_and_evaluation(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path / "data", max_iters=4, eval_every=2)
    cfg = replace(cfg, **{"data.skip_invalid": True, "data.num_workers": 1})
    ensure_synthetic(cfg)
    root = tmp_path / "data"
    bad_val = _val_images(root)[0]
    _truncate(bad_val)
    train_images = [root / line for line in (root / "train.txt").read_text().split()]
    for p in train_images[:3]:
        _truncate(p)
    result = train(cfg, tmp_path / "run")
    assert result.iteration == 4
    # 4 iterations x 2 samples of 6 training images, 3 of them unreadable: some were replaced
    unreadable = {p.relative_to(root).as_posix() for p in train_images[:3]}
    assert result.skipped_images and set(result.skipped_images) <= unreadable
    metrics = result.final_metrics
    assert metrics is not None
    assert metrics["num_skipped"] == 1 and metrics["num_images"] == len(_val_images(root)) - 1
    (entry,) = metrics["skipped_images"]
    assert entry["image_id"] == bad_val.relative_to(root).as_posix() and entry["file"] == str(bad_val)


def test_resume_after_a_hard_kill_keeps_each_metrics_row_once(tmp_path: Path) -> None:
    """A run killed after logging iterations 3-4 but checkpointed at 2: the resumed run logs 3-4
    again, so the rows past the checkpoint are dropped on resume."""
    cfg = tiny_cfg(tmp_path / "data", max_iters=4, log_every=1, checkpoint_every=2)
    early = train(ssd.config.replace(cfg, **{"train.max_iters": 2}), tmp_path / "early", evaluate_fn=_no_eval)
    train(cfg, tmp_path / "run", evaluate_fn=_no_eval)
    (tmp_path / "run" / "last.pt").write_bytes(early.last_checkpoint.read_bytes())  # the kill -9 state
    with (tmp_path / "run" / "metrics.jsonl").open("a") as f:
        f.write('{"iteration": 5, "loss": 1.')  # a torn last line
    train(cfg, tmp_path / "run", resume=True, evaluate_fn=_no_eval)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["iteration"] for r in rows if "loss" in r]
    assert steps == [1, 2, 3, 4]
    assert [r["iteration"] for r in rows if "eval" in r] == [4]


def test_truncate_metrics_keeps_rows_up_to_the_iteration(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1}\n{"iteration": 2, "eval": {}}\n{"iteration": 3}\n', encoding="utf-8")
    assert truncate_metrics(path, 2) == 1
    assert path.read_text().splitlines() == ['{"iteration": 1}', '{"iteration": 2, "eval": {}}']
    assert truncate_metrics(path, 2) == 0 and truncate_metrics(tmp_path / "none.jsonl", 0) == 0


def test_prior_check_warns_with_the_optimize_command(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tiny_cfg(tmp_path / "data", max_iters=1, prior_check_min_recall=0.99)
    with caplog.at_level("WARNING", logger="ssd.engine.prior_check"):
        result = train(cfg, tmp_path / "run", evaluate_fn=_no_eval)
    check = json.loads((tmp_path / "run" / "prior_check.json").read_text())
    assert result.prior_check is not None and result.prior_check.to_dict() == check
    assert check["config"]["recall"] < 0.99
    run_config = tmp_path / "run" / "config.yaml"
    command = f"ssd-priors optimize --config {run_config} --split-name train"
    assert command in caplog.text and command in check["warning"]
    # a threshold the priors meet: no warning
    caplog.clear()
    ok = ssd.config.replace(cfg, **{"train.prior_check_min_recall": 0.0})
    with caplog.at_level("WARNING", logger="ssd.engine.prior_check"):
        train(ok, tmp_path / "run2", evaluate_fn=_no_eval)
    assert "ssd-priors optimize" not in caplog.text


def test_auto_priors_trains_with_fitted_priors_of_higher_recall(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path / "data", max_iters=2, checkpoint_every=1, auto_priors="coverage")
    result = train(cfg, tmp_path / "run", evaluate_fn=_no_eval)
    check = result.prior_check
    assert check is not None and check.fitted is not None and check.config is not None
    assert check.fitted.recall > check.config.recall
    saved = ssd.load_config(tmp_path / "run" / "config.yaml")
    assert saved.priors.shapes is not None and saved.priors == result.config.priors  # type: ignore[union-attr]
    written = ssd.load_config(tmp_path / "run" / "priors.yaml").priors
    assert written.shapes == saved.priors.shapes
    assert torch.equal(ssd.generate_priors(written), ssd.generate_priors(saved.priors))
    model = ssd.build_model(saved)
    model.load_state_dict(load_checkpoint(tmp_path / "run" / "last.pt")["model"])  # trained with them
    # resuming with the original config keeps the fitted priors
    more = ssd.config.replace(cfg, **{"train.max_iters": 3})
    assert train(more, tmp_path / "run", resume=True, evaluate_fn=_no_eval).iteration == 3
    bad = ssd.config.replace(cfg, **{"train.auto_priors": "paper"})
    with pytest.raises(ssd.config.ConfigError, match=r"train\.auto_priors"):
        train(bad, tmp_path / "bad", evaluate_fn=_no_eval)


def test_ema_weights_are_evaluated_saved_and_resumed_exactly(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path / "data", max_iters=4, checkpoint_every=2, ema=True, ema_decay=0.9, ema_ramp=2.0)
    seen: list[dict[str, torch.Tensor]] = []

    def record(model: Any, c: Config, d: torch.device) -> dict[str, Any]:
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"mAP": 0.0, "per_class_ap": {}}

    full = train(cfg, tmp_path / "full", evaluate_fn=record)
    state = load_checkpoint(full.last_checkpoint)
    ema, raw = state["ema"]["model"], state["model"]
    assert state["ema"]["updates"] == 4
    assert any(not torch.equal(ema[k], raw[k]) for k in raw if raw[k].is_floating_point())
    assert all(torch.equal(seen[-1][k], ema[k]) for k in ema)  # evaluation saw the EMA weights
    from ssd.inference.checkpoint import model_weights

    assert model_weights(state) is ema
    det = ssd.Detector(None, full.last_checkpoint)
    assert all(torch.equal(det.model.state_dict()[k], ema[k]) for k in ema)
    part = train(ssd.config.replace(cfg, **{"train.max_iters": 2}), tmp_path / "part", evaluate_fn=_no_eval)
    assert load_checkpoint(part.last_checkpoint)["ema"]["updates"] == 2
    rest = train(cfg, tmp_path / "part", resume=True, evaluate_fn=_no_eval)
    resumed = load_checkpoint(rest.last_checkpoint)["ema"]["model"]
    assert all(torch.equal(resumed[k], ema[k]) for k in ema)


def test_ema_update_formula(tmp_path: Path) -> None:
    from ssd.engine.train import build_ema

    cfg = tiny_cfg(tmp_path / "data", ema=True, ema_decay=0.5, ema_ramp=1.0)
    model = ssd.build_model(cfg)
    ema = build_ema(model, cfg)
    w = next(model.parameters())
    ema.update_parameters(model)  # the first update copies
    before = next(ema.module.parameters()).detach().clone()
    with torch.no_grad():
        w.add_(1.0)
    ema.update_parameters(model)  # update 2: d = 0.5 * (1 - exp(-1))
    d = 0.5 * (1 - math.exp(-1.0))
    assert torch.allclose(next(ema.module.parameters()), before * d + w.detach() * (1 - d))
