"""Data-parallel training on CPU with 2 gloo processes.

The oracle: 2 processes x batch 1 must give the same model as 1 process x batch 2 on the same
global stream (SGD; no batch norm, whose statistics are per process without SyncBatchNorm).
One spawn runs several scenarios to keep process start-up cost down; a second test goes through
torchrun and ssd-train.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

import ssd
from ssd.config import Config, ConfigError, save_config
from ssd.data.loader import TrainBatchSampler
from ssd.engine.distributed import DistContext, env_world, setup_distributed
from ssd.engine.train import TrainingInterrupted, train
from ssd.inference.checkpoint import CheckpointError, load_checkpoint
from tests.engine.test_train import _no_eval, tiny_cfg

REPO = Path(__file__).resolve().parents[2]
WORLD = 2


def _cfg(data: Path, learnable: bool = False, **train: Any) -> Config:
    """tiny_cfg without batch norm: 3 iterations at a constant, moderate learning rate (large steps
    amplify float rounding chaotically), logging every step, batch per process 1."""
    base = {"batch_size": 1, "max_iters": 3, "lr": 0.002, "warmup_iters": 0, "log_every": 1}
    cfg = tiny_cfg(data, **{**base, "checkpoint_every": 100, **train})
    # seed 1 and IoU 0.35: the first batch has 1 and 2 boxes, 8 and 19 positives on the two ranks
    # (unequal shards make per-process normalisation visibly wrong)
    changes: dict[str, Any] = {"model.batch_norm": False, "seed": 1, "matcher.iou_threshold": 0.35}
    if learnable:
        # One step, with soft assignment and online clustering active. Not more: matching against
        # moving priors has near-ties that rounding flips, so trajectories part after a few steps.
        changes["train.max_iters"] = 1
        changes.update(
            {"priors.learnable": True, "priors.learn.warmup_iters": 4, "model.wh_batchnorm": False}
        )
    out = ssd.config.replace(cfg, **changes)
    assert isinstance(out, Config)
    return out


def _single(cfg: Config, world: int) -> Config:
    """The single-process equivalent: the global batch in one process."""
    out = ssd.config.replace(cfg, **{"train.batch_size": cfg.train.batch_size * world})
    assert isinstance(out, Config)
    return out


# --------------------------------------------------------------------------- sampler and env


def test_rank_slices_partition_the_single_process_batches() -> None:
    single = TrainBatchSampler(length=7, batch_size=6, seed=5)
    for world in (1, 2, 3, 6):
        ranks = [TrainBatchSampler(7, 6, 5, rank=r, world_size=world) for r in range(world)]
        for i in (0, 1, 4, 9):  # batches straddle epochs (7 images, 6 per batch)
            union = [k for s in ranks for k in s.batch(i)]
            assert union == single.batch(i)
            assert all(len(s.batch(i)) == 6 // world for s in ranks)
    resumed = iter(TrainBatchSampler(7, 6, 5, start_iteration=3, rank=1, world_size=2))
    assert next(resumed) == single.batch(3)[3:]


def test_sampler_rejects_bad_ranks() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        TrainBatchSampler(10, 3, 0, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        TrainBatchSampler(10, 4, 0, rank=2, world_size=2)


def test_env_world_reads_torchrun_variables() -> None:
    assert env_world({}) == (0, 1, 0)
    assert env_world({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(ValueError, match="RANK='x'"):
        env_world({"WORLD_SIZE": "2", "RANK": "x"})
    with pytest.raises(ValueError, match="RANK < WORLD_SIZE"):
        env_world({"WORLD_SIZE": "2", "RANK": "2"})
    ctx = setup_distributed("cpu", env={})
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    assert ctx.any_rank(True) and not ctx.any_rank(False)
    assert ctx.broadcast({"a": 1}) == {"a": 1}
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    assert ctx.wrap(model, sync_bn=True) is model  # a single process: no wrapper, no conversion


def test_sync_bn_on_cpu_is_a_config_error() -> None:
    ctx = DistContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    with pytest.raises(ConfigError, match=r"train\.sync_bn"):
        ctx.wrap(model, sync_bn=True)  # raised before any collective


# --------------------------------------------------------------------------- 2 gloo processes


def _worker(rank: int, world: int, init_file: str, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    root = Path(tmp)
    report: dict[str, Any] = {}
    import ssd.engine.train as engine
    from ssd.losses import MultiBoxLoss

    saves: list[str] = []
    original_save = engine.save_checkpoint

    def counting_save(state: dict[str, Any], path: Any) -> Path:
        saves.append(Path(path).name)
        return original_save(state, path)

    engine.save_checkpoint = counting_save
    try:
        # 1. the plain run (also the reference for the interrupted one below)
        res = train(_cfg(root / "data"), root / "ddp", evaluate_fn=_no_eval)
        report["plain"] = {"iteration": res.iteration, "history": res.history, "saves": list(saves)}

        # 2. learnable priors: the warm-up aids' terms are normalised globally as well
        saves.clear()
        res = train(_cfg(root / "data", learnable=True), root / "ddp_learn", evaluate_fn=_no_eval)
        report["learn"] = {"history": res.history, "saves": list(saves)}

        # 3. a non-finite loss on rank 1 only: both processes skip the step
        if rank == 1:
            original_forward = MultiBoxLoss.forward
            calls = {"n": 0}

            def nan_at_second(self: MultiBoxLoss, *args: Any, **kwargs: Any) -> Any:
                out = original_forward(self, *args, **kwargs)
                calls["n"] += 1
                if calls["n"] == 2:
                    out.total = out.total * float("nan")
                return out

            MultiBoxLoss.forward = nan_at_second  # type: ignore[method-assign]
        res = train(_cfg(root / "data"), root / "ddp_nan", evaluate_fn=_no_eval)
        if rank == 1:
            MultiBoxLoss.forward = original_forward  # type: ignore[method-assign]
        report["nan"] = {"iteration": res.iteration, "skipped": res.skipped_steps, "steps": len(res.history)}

        # 4. SIGTERM reaching rank 1 only: both stop at iteration 2, rank 0 checkpoints; resume
        def kill_rank1_at_2(it: int, scalars: dict[str, float]) -> None:
            if rank == 1 and it == 2:
                os.kill(os.getpid(), signal.SIGTERM)

        saves.clear()
        try:
            train(_cfg(root / "data"), root / "ddp_sig", progress=kill_rank1_at_2, evaluate_fn=_no_eval)
            report["sig"] = {"interrupted": None}
        except TrainingInterrupted as exc:
            report["sig"] = {"interrupted": exc.iteration, "saves": list(saves)}
        res = train(_cfg(root / "data"), root / "ddp_sig", resume=True, evaluate_fn=_no_eval)
        report["sig"]["resumed_iteration"] = res.iteration
        report["sig"]["resumed_history"] = res.history
    finally:
        engine.save_checkpoint = original_save
        (root / f"report{rank}.json").write_text(json.dumps(report))
        dist.destroy_process_group()


def _spawn(fn: Any, args: tuple[Any, ...], timeout: float) -> None:
    """mp.spawn with a deadline: a deadlock between the processes fails the test, not the suite."""
    context = mp.spawn(fn, args=args, nprocs=WORLD, join=False)
    assert context is not None
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):  # raises when a process failed
        if time.monotonic() > deadline:
            for proc in context.processes:
                proc.kill()
            pytest.fail(f"data-parallel processes still running after {timeout} s (deadlock?)")


def _assert_same_models(ddp: dict[str, Tensor], single: dict[str, Tensor], cfg: Config) -> None:
    """Equal up to float rounding (the convolutions of a batch of 1 and of 2 sum in different
    orders): within 1e-3 of each tensor's total update, and allclose elementwise. A normalisation
    error (say a factor 2 on one loss term) is off by tens of percent of the update."""
    torch.manual_seed(cfg.seed)
    init = ssd.build_model(cfg).state_dict()
    assert ddp.keys() == single.keys() == init.keys()
    moved = 0.0
    for k in ddp:
        update = (single[k] - init[k]).norm().item()
        moved = max(moved, update)
        assert (ddp[k] - single[k]).norm().item() <= 1e-3 * update + 1e-7, k
        assert torch.allclose(ddp[k], single[k], rtol=1e-4, atol=1e-5), k
    assert moved > 1e-2  # the runs trained


def _assert_same_history(ddp: list[dict[str, float]], single: list[dict[str, float]]) -> None:
    """The first step's losses agree to float rounding; later ones are computed by models that
    already differ by rounding (amplified by training), so they get more room."""
    assert [h.keys() for h in ddp] == [h.keys() for h in single]
    for step, (h, s) in enumerate(zip(ddp, single)):
        assert h == pytest.approx(s, rel=1e-5 if step == 0 else 1e-4, abs=1e-6)


def test_two_gloo_processes_match_one_process_with_the_global_batch(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg, learn = _cfg(data), _cfg(data, learnable=True)
    ref = train(_single(cfg, WORLD), tmp_path / "single", evaluate_fn=_no_eval)  # also generates data
    ref_learn = train(_single(learn, WORLD), tmp_path / "single_learn", evaluate_fn=_no_eval)
    assert any(h["num_pos"] > 0 for h in ref.history)

    _spawn(_worker, (WORLD, str(tmp_path / "pg_init"), str(tmp_path)), timeout=300)
    reports = [json.loads((tmp_path / f"report{r}.json").read_text()) for r in range(WORLD)]

    # training completes; every process reports the global (all-reduced) losses of the oracle
    for rep in reports:
        assert rep["plain"]["iteration"] == 3
        _assert_same_history(rep["plain"]["history"], ref.history)
        _assert_same_history(rep["learn"]["history"], ref_learn.history)
    assert "loss_cluster" in reports[0]["learn"]["history"][0]  # the aids were active
    # one checkpoint writer
    # rank 0 alone writes: last.pt before evaluating, best.pt after it, last.pt again with the new best mAP
    plain_saves = ["last.pt", "best.pt", "last.pt"]
    assert reports[0]["plain"]["saves"] == plain_saves and reports[1]["plain"]["saves"] == []
    assert reports[1]["learn"]["saves"] == []
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines if "eval" not in x] == [1, 2, 3]
    assert len(list((tmp_path / "ddp" / "tb").iterdir())) == 1

    # the model equals the single-process model on the same global stream
    state = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert state["world_size"] == WORLD
    _assert_same_models(state["model"], load_checkpoint(ref.last_checkpoint)["model"], cfg)
    _assert_same_models(
        load_checkpoint(tmp_path / "ddp_learn" / "last.pt")["model"],
        load_checkpoint(ref_learn.last_checkpoint)["model"],
        learn,
    )
    flat = []
    for path in (tmp_path / "ddp_learn" / "learned_priors.yaml", ref_learn.learned_config):
        shapes = ssd.load_config(path).priors.shapes
        assert shapes is not None
        flat.append([x for level in shapes for wh in level for x in wh])
    assert flat[0] == pytest.approx(flat[1], rel=1e-5)

    # a NaN on one process: the step is skipped everywhere, training goes on in lockstep
    assert [r["nan"] for r in reports] == [{"iteration": 3, "skipped": 1, "steps": 2}] * WORLD

    # SIGTERM on rank 1: both stop at iteration 2, rank 0 alone writes; the resumed run ends
    # bit-identical to the uninterrupted one
    for rank, rep in enumerate(reports):
        assert rep["sig"]["interrupted"] == 2
        assert rep["sig"]["saves"] == (["last.pt"] if rank == 0 else [])
        assert rep["sig"]["resumed_iteration"] == 3
        assert rep["sig"]["resumed_history"] == rep["plain"]["history"][2:]
    a = load_checkpoint(tmp_path / "ddp_sig" / "last.pt")["model"]
    assert all(torch.equal(a[k], state["model"][k]) for k in a)

    # a data-parallel checkpoint does not resume in a single process (the global batch changes)
    with pytest.raises(CheckpointError, match="2 process"):
        train(cfg, tmp_path / "ddp", resume=True, evaluate_fn=_no_eval)


# --------------------------------------------------------------------------- torchrun + CLI


def test_torchrun_cli_trains_with_two_processes(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "data", max_iters=2)
    config_path = tmp_path / "cfg.yaml"
    save_config(cfg, config_path)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
        "-m", "ssd.cli.train", "--config", str(config_path), "--output-dir", str(tmp_path / "run"),
        "--set", "train.eval_every=1000", "--json", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # exactly one JSON document: rank 0 alone prints
    assert summary["iteration"] == 2 and summary["world_size"] == WORLD
    assert summary["global_batch"] == WORLD * cfg.train.batch_size
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["iteration"] == 2 and state["world_size"] == WORLD
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "eval" not in r] == [1, 2]  # one writer
    # rank 0 ran the real evaluation at the end (rank 1 waited for it in a broadcast)
    assert [r["iteration"] for r in records if "eval" in r] == [2]
    assert summary["final_metrics"]["mAP"] == records[-1]["eval"]["mAP"]
