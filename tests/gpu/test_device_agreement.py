"""Device checks run by `ssd-gpu-check` (marker `gpu`, opt-in: `pytest -m gpu`).

They compare the computation on the checked device with the CPU: priors, matching, the MultiBox
loss, decode + NMS; an automatic-mixed-precision training step stays finite; a run resumes on the
device. The device is `SSD_CHECK_DEVICE` (default `cuda`; `ssd-gpu-check --device cpu` sets `cpu`,
which runs the same code on the CPU twice); without CUDA the CUDA checks skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import ssd
from ssd.config import Config, config_from_dict, replace
from ssd.engine.train import build_optimizer, train
from ssd.inference.checkpoint import load_checkpoint
from ssd.inference.runtime import DeviceCaps, resolve_train_runtime
from ssd.losses import MultiBoxLoss
from ssd.postprocess import postprocess
from ssd.priors.matcher import match
from ssd.structures import HeadOutputs, Targets
from tests.conftest import TINY_PRIORS, synthetic_data

pytestmark = pytest.mark.gpu


@pytest.fixture
def device() -> torch.device:
    dev = torch.device(os.environ.get("SSD_CHECK_DEVICE", "cuda"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return dev


def _cfg() -> Config:
    return replace(Config(), **{"model.width_mult": 0.125})


def _targets(num_images: int, seed: int) -> Targets:
    g = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for i in range(num_images):
        n = 1 + i % 4
        xy = torch.rand(n, 2, generator=g) * 0.7
        wh = 0.02 + torch.rand(n, 2, generator=g) * 0.28
        boxes.append(torch.cat([xy, xy + wh], dim=1))
        labels.append(torch.randint(1, 21, (n,), generator=g))
    return Targets(boxes, labels)


def test_priors_agree(device: torch.device) -> None:
    model = ssd.build_model(_cfg())
    cpu = model.priors().detach()
    dev = model.to(device).priors().detach()
    assert dev.device.type == device.type and dev.shape == cpu.shape == (24564, 4)
    torch.testing.assert_close(dev.cpu(), cpu, atol=1e-6, rtol=0)


def test_matcher_agrees(device: torch.device) -> None:
    priors = ssd.build_model(_cfg()).priors().detach()
    t = _targets(6, seed=1)
    a = match(t.boxes, t.labels, priors, 0.5)
    b = match([x.to(device) for x in t.boxes], [x.to(device) for x in t.labels], priors.to(device), 0.5)
    assert torch.equal(a.labels, b.labels.cpu())
    torch.testing.assert_close(b.boxes.cpu(), a.boxes, atol=1e-6, rtol=0)


def test_loss_agrees(device: torch.device) -> None:
    priors = ssd.build_model(_cfg()).priors().detach()
    g = torch.Generator().manual_seed(2)
    out = HeadOutputs(
        torch.randn(6, priors.shape[0], 21, generator=g), torch.randn(6, priors.shape[0], 4, generator=g)
    )
    t = _targets(6, seed=2)
    crit = MultiBoxLoss()
    a = crit(out, t, priors)
    b = crit(
        HeadOutputs(out.cls_logits.to(device), out.box_deltas.to(device)), t.to(device), priors.to(device)
    )
    assert int(a.num_pos) == int(b.num_pos) > 0
    torch.testing.assert_close(b.loc.cpu(), a.loc, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.cls.cpu(), a.cls, atol=1e-4, rtol=1e-4)


def test_decode_and_nms_agree(device: torch.device) -> None:
    priors = ssd.build_model(_cfg()).priors().detach()
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, priors.shape[0], 21, generator=g) * 4  # decisive scores: no ties at the cut
    deltas = torch.randn(3, priors.shape[0], 4, generator=g)
    sizes = torch.tensor([[480.0, 640.0], [200.0, 300.0], [512.0, 512.0]])
    a = postprocess(HeadOutputs(logits, deltas), priors, sizes)
    b = postprocess(HeadOutputs(logits.to(device), deltas.to(device)), priors.to(device), sizes.to(device))
    for da, db in zip(a, b):
        assert len(da) == len(db) > 0
        assert torch.equal(da.labels, db.labels.cpu())
        torch.testing.assert_close(db.boxes.cpu(), da.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(db.scores.cpu(), da.scores, atol=1e-5, rtol=0)


def test_amp_training_step_is_finite(device: torch.device) -> None:
    cfg = config_from_dict({"model": {"width_mult": 0.125}, "priors": TINY_PRIORS})
    rt = resolve_train_runtime(cfg, DeviceCaps.of(device))
    if device.type == "cuda":
        assert rt.amp in ("bf16", "fp16")  # mixed precision is on by default on CUDA
    torch.manual_seed(0)
    model = ssd.build_model(cfg).to(device).train()
    opt = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=rt.grad_scaler)
    crit = MultiBoxLoss()
    x = torch.randn(2, 3, 272, 272, device=device)
    t = _targets(2, seed=4).to(device)
    for _ in range(2):
        with rt.autocast(device.type):
            out = model(x)
        loss = crit(out, t, model.priors()).total
        assert torch.isfinite(loss)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_on_device(device: torch.device, tmp_path: Path) -> None:
    cfg = config_from_dict(
        {
            "data": synthetic_data(4, (160, 120), root=str(tmp_path / "data")),
            "model": {"width_mult": 0.125},
            "priors": TINY_PRIORS,
            "train": {"batch_size": 2, "max_iters": 3, "lr": 0.01, "warmup_iters": 1, "eval_every": 1000,
                      "checkpoint_every": 1, "log_every": 1},
        }
    )  # fmt: skip

    def no_eval(*_: object) -> dict[str, float]:
        return {"mAP": 0.0}

    full = train(cfg, tmp_path / "full", device=device, evaluate_fn=no_eval)
    train(replace(cfg, **{"train.max_iters": 2}), tmp_path / "part", device=device, evaluate_fn=no_eval)
    rest = train(cfg, tmp_path / "part", device=device, resume=True, evaluate_fn=no_eval)
    assert rest.iteration == 3
    a = load_checkpoint(full.last_checkpoint)["model"]
    b = load_checkpoint(rest.last_checkpoint)["model"]
    # cuDNN autotuning may pick different kernels per run: equal up to float rounding
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-3)
    losses_full = [h["loss"] for h in full.history][2:]
    losses_rest = [h["loss"] for h in rest.history]
    assert losses_rest == pytest.approx(losses_full, rel=1e-3, abs=1e-4)
