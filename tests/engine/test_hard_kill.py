"""A hard kill (SIGKILL: no signal handler, no `finally`) of `ssd-train` loses at most one
checkpoint interval, and `--resume` then redoes the lost iterations exactly (the same losses as
before the kill) and finishes the run.

Two kills, each of its own process (both started together): one from outside at an arbitrary
point of training, one from inside while a checkpoint is half written (the temporary file is cut
short and never renamed, so the previous checkpoint must still be valid). Every process runs on
one thread, so a resumed run is bit-for-bit comparable with the killed one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ssd.config import load_config
from ssd.data.loader import ensure_synthetic
from ssd.inference.checkpoint import load_checkpoint
from tests.conftest import REPO, TINY_PRIORS, synthetic_data

CHECKPOINT_EVERY = 2
MAX_ITERS = 5
CONFIG = {
    "data": synthetic_data(8, (160, 120)),
    "model": {"batch_norm": True, "width_mult": 0.125},
    "priors": TINY_PRIORS,
    "train": {
        "batch_size": 2,
        "max_iters": MAX_ITERS,
        "lr": 0.01,
        "warmup_iters": 2,
        "milestones": [3],
        "log_every": 1,
        "eval_every": 1000,
        "checkpoint_every": CHECKPOINT_EVERY,
    },
    "eval": {"batch_size": 2},
}

# Runs ssd-train, but the second checkpoint write dies half way (SIGKILL to itself).
DIE_WHILE_SAVING = """
import io, os, signal, sys
import torch
real_save = torch.save
calls = []
def save_then_die(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) < 2:
        return real_save(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = save_then_die
from ssd.cli.train import main
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def train_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ssd.cli.train", "--config", str(config), "--output-dir", str(out),
            "--device", "cpu", "--quiet", *extra]  # fmt: skip


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as f:
        return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]


def losses(run: Path) -> list[tuple[int, float]]:
    """(iteration, loss) of every line of metrics.jsonl, in order."""
    out = []
    path = run / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
            if "loss" in row:
                out.append((int(row["iteration"]), float(row["loss"])))
    return out


@pytest.fixture(scope="module")
def victims(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[Path, subprocess.Popen[bytes]]]]:
    """Both victims, started together: name -> (run folder, process). The config file and the
    logs are in the parent folder of the run folders."""
    tmp = tmp_path_factory.mktemp("hard_kill")
    config = tmp / "config.yaml"
    values = {**CONFIG, "data": {**CONFIG["data"], "root": str(tmp / "data")}}  # type: ignore[dict-item]
    config.write_text(yaml.safe_dump(values))
    ensure_synthetic(load_config(config))  # generated once, before the processes share it
    driver = tmp / "die_while_saving.py"
    driver.write_text(DIE_WHILE_SAVING)
    procs = {
        "outside": (tmp / "outside", start(train_cmd(config, tmp / "outside"), tmp / "outside.log")),
        "saving": (
            tmp / "saving",
            start([sys.executable, str(driver), *train_cmd(config, tmp / "saving")[3:]], tmp / "saving.log"),
        ),
    }
    yield procs
    for _, proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def resume_and_compare(run: Path, saved: int) -> None:
    """Resume `run` from its checkpoint at iteration `saved`: the redone iterations give the
    losses logged before the kill, the rows logged past the checkpoint before the kill are
    dropped (every iteration is logged once), and the run reaches MAX_ITERS."""
    before = losses(run)
    config = run.parent / "config.yaml"
    proc = start(train_cmd(config, run, "--resume"), run.parent / f"{run.name}_resume.log")
    finish(proc, run.parent / f"{run.name}_resume.log")
    rows = losses(run)
    assert [it for it, _ in rows] == list(range(1, MAX_ITERS + 1))
    assert rows[:saved] == before[:saved]
    lost = {it: loss for it, loss in before if it > saved}
    assert lost and all(dict(rows)[it] == loss for it, loss in lost.items())  # bit-exact redo
    assert load_checkpoint(run / "last.pt")["iteration"] == MAX_ITERS


def test_sigkill_during_training_then_resume(
    victims: dict[str, tuple[Path, subprocess.Popen[bytes]]],
) -> None:
    run, victim = victims["outside"]
    kill_after = CHECKPOINT_EVERY + 1  # past the first checkpoint, in the middle of an interval
    deadline = time.monotonic() + 300
    while max((it for it, _ in losses(run)), default=0) < kill_after:
        assert victim.poll() is None, (
            f"the run ended before the kill:\n{(run.parent / 'outside.log').read_text()}"
        )
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    reached = max(it for it, _ in losses(run))
    saved = int(load_checkpoint(run / "last.pt")["iteration"])
    assert saved % CHECKPOINT_EVERY == 0 and 0 <= reached - saved <= CHECKPOINT_EVERY  # <= one interval lost
    if reached > saved:
        resume_and_compare(run, saved)
    else:  # killed right after a checkpoint: nothing to redo, resume must still finish
        finish(
            start(train_cmd(run.parent / "config.yaml", run, "--resume"), run.parent / "r.log"),
            run.parent / "r.log",
        )


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(
    victims: dict[str, tuple[Path, subprocess.Popen[bytes]]],
) -> None:
    run, victim = victims["saving"]
    assert victim.wait(timeout=300) == -signal.SIGKILL, (run.parent / "saving.log").read_text()[-3000:]
    # the half-written temporary file was never renamed over last.pt, which is still the first one
    partial = [p for p in run.iterdir() if p.name.startswith(".last.pt.")]
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < (run / "last.pt").stat().st_size
    assert load_checkpoint(run / "last.pt")["iteration"] == CHECKPOINT_EVERY
    assert max(it for it, _ in losses(run)) == 2 * CHECKPOINT_EVERY  # killed while saving this one
    resume_and_compare(run, CHECKPOINT_EVERY)
