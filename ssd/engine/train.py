"""The training loop, top to bottom: build -> (resume) -> iterate -> evaluate/checkpoint -> finish.

Everything a run needs to continue exactly is in its checkpoint: model, optimizer, scheduler, AMP
scaler, iteration, RNG states and the resolved config. The data order and augmentation of
iteration i depend only on (seed, i) (see `ssd.data.loader.TrainBatchSampler`), so a resumed run
sees the same batches as an uninterrupted one.

Data-parallel (torchrun, one process per device; see `ssd.engine.distributed`): every process
runs `train`; `train.batch_size` is per process and the global batch is `batch_size *
world_size`. The loss is normalised by the global counts (`_global_loss`), so the averaged
gradient equals the single-process gradient of the global batch. Rank 0 alone writes
config.yaml, checkpoints, TensorBoard and metrics.jsonl and runs evaluation; the skip and stop
decisions are all-reduced, so the processes never diverge.

Reading order: `train` (device, run folder, process group) -> `_train`, the loop itself, on one
screen -> `_Trainer`, whose methods are the pieces of an iteration (`step`: forward, loss,
backward, AMP, gradient clipping and the skip of a non-finite step; `log_step`;
`checkpoint_and_evaluate`; `stop_if_signalled`) and of a run (`resume`, `save`, `finish`) ->
`_RunLog` (TensorBoard and metrics.jsonl) and the building blocks above them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn

from ssd.config import Config, ConfigError, config_from_dict, config_to_dict, save_config
from ssd.data.loader import build_train_loader, checked
from ssd.engine.distributed import DistContext, setup_distributed
from ssd.engine.evaluate import Evaluation
from ssd.engine.prior_check import PriorCheck
from ssd.inference.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ssd.inference.runtime import DeviceCaps, apply_cudnn_benchmark, resolve_train_runtime
from ssd.losses import LossOutput, MultiBoxLoss, PriorAids
from ssd.modeling.build import build_model, export_learned_priors
from ssd.modeling.ssd import SSD
from ssd.structures import Batch, Detections, HeadOutputs, Targets

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, dict[str, float]], None]
# evaluate_fn(model, cfg, device) -> an Evaluation, or JSON metrics with "mAP" (and "per_class_ap")
EvaluateFn = Callable[[SSD, Config, torch.device], Evaluation | Mapping[str, Any]]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite losses in a row)."""


class RunFolderError(ConfigError):
    """The run folder already holds a run: continue it (--resume), choose a new folder, or
    replace it (--overwrite)."""


# what a run writes into its folder; --overwrite removes exactly these
RUN_FILES = (
    "config.yaml", "last.pt", "best.pt", "metrics.jsonl", "report.md", "results.json",
    "confusion_matrix.png", "pr_curves.png", "prior_check.json", "priors.yaml", "learned_priors.yaml",
    "learned_priors.png",
)  # fmt: skip
RUN_DIRS = ("tb",)


def check_run_folder(out: Path, resume: bool | str | Path, overwrite: bool) -> None:
    """Refuse to start a new run in a folder that holds one (its checkpoints and metrics would be
    overwritten or mixed); with `overwrite` remove that run's files (only those, see RUN_FILES)."""
    if resume or not out.exists():
        return
    found = [n for n in RUN_FILES if (out / n).exists()] + [n for n in RUN_DIRS if (out / n).is_dir()]
    if not found:
        return
    if not overwrite:
        raise RunFolderError(
            f"{out}: already holds a run ({', '.join(found[:4])}); continue it with --resume, "
            "choose a new --output-dir, or replace it with --overwrite"
        )
    import shutil

    for name in found:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    log.warning("%s: --overwrite: removed the previous run's %s", out, ", ".join(found))


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was written before this was raised."""

    def __init__(self, checkpoint: Path, iteration: int) -> None:
        super().__init__(f"interrupted at iteration {iteration}; checkpoint written to {checkpoint}")
        self.checkpoint = checkpoint
        self.iteration = iteration


@dataclass
class TrainResult:
    output_dir: Path
    iteration: int
    last_checkpoint: Path
    best_checkpoint: Path | None
    best_map: float | None
    final_metrics: dict[str, Any] | None
    skipped_steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    learned_config: Path | None = None
    # training samples replaced because their image could not be read (data.skip_invalid), by
    # image id: how many times each was skipped in this process's run
    skipped_images: dict[str, int] = field(default_factory=dict)
    report: RunReport | None = None  # the final model's report (also report.md / results.json)
    prior_check: PriorCheck | None = None  # the prior check at the start (also prior_check.json)
    config: Config | None = None  # the config trained with (auto_priors: with the fitted priors)


# --------------------------------------------------------------------------- building blocks


def lr_factor(it: int, cfg: Config) -> float:
    """Learning-rate multiplier at iteration `it`: linear warm-up from `warmup_factor`, then
    multistep decay by `gamma` at each milestone or cosine decay to zero at `max_iters`."""
    t = cfg.train
    if t.schedule == "multistep":
        factor = t.gamma ** sum(it >= m for m in t.milestones)
    else:
        span = max(t.max_iters - t.warmup_iters, 1)
        progress = min(max(it - t.warmup_iters, 0) / span, 1.0)
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    if it < t.warmup_iters:
        alpha = it / t.warmup_iters
        factor *= t.warmup_factor * (1 - alpha) + alpha
    return factor


def build_optimizer(model: SSD, cfg: Config) -> torch.optim.Optimizer:
    """SGD with momentum (`train.optimizer: sgd`, SSD's recipe) or AdamW (`adamw`, betas
    (momentum, 0.999): converges in far fewer iterations from scratch, what a short CPU schedule
    needs); learnable prior shapes get their own group (lr multiplier, no decay); biases and
    normalisation parameters are not decayed."""
    decay, no_decay, shapes = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("priors."):
            shapes.append(p)
        elif p.ndim <= 1:
            no_decay.append(p)
        else:
            decay.append(p)
    t = cfg.train
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": t.weight_decay, "lr_mult": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
    ]
    if shapes:
        groups.append({"params": shapes, "weight_decay": 0.0, "lr_mult": cfg.priors.learn.lr_mult})
    for g in groups:
        g["lr"] = t.lr * g["lr_mult"]
    fused = torch.cuda.is_available() and next(model.parameters()).is_cuda
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, betas=(t.momentum, 0.999), fused=fused or None)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, fused=fused or None)


def build_ema(model: SSD, cfg: Config) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of `model`'s parameters and buffers (BN statistics), as
    mmdetection's EMAHook and ultralytics' ModelEMA keep: after each optimizer step
    ema = d * ema + (1 - d) * weights with d = ema_decay * (1 - exp(-updates / ema_ramp)), so
    the early, fast-moving weights are not averaged in for long. Evaluation, best.pt selection,
    the final report and inference (`ssd.inference.checkpoint.model_weights`) use the EMA weights."""
    decay, ramp = cfg.train.ema_decay, cfg.train.ema_ramp

    def ema_update(
        averaged: torch.Tensor, current: torch.Tensor, updates: torch.Tensor | int
    ) -> torch.Tensor:
        d = decay * (1.0 - math.exp(-float(updates) / ramp))
        return averaged * d + current * (1.0 - d)

    return torch.optim.swa_utils.AveragedModel(model, avg_fn=ema_update, use_buffers=True)


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    for g in optimizer.param_groups:
        g["lr"] = base_lr * factor * g.get("lr_mult", 1.0)
    return base_lr * factor


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _SignalGuard:
    """Turns SIGINT/SIGTERM into a flag checked between steps (so a checkpoint can be written)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def __enter__(self) -> _SignalGuard:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# --------------------------------------------------------------------------- the loop


def train(
    cfg: Config,
    output_dir: str | Path,
    device: str | torch.device = "cpu",
    resume: bool | str | Path = False,
    progress: ProgressFn | None = None,
    evaluate_fn: EvaluateFn | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train `cfg` into `output_dir` (config.yaml, last.pt, best.pt, metrics.jsonl, tb/).

    A folder that already holds a run is refused (`RunFolderError`) unless `resume` (continue it)
    or `overwrite` (its run files are removed first). `device`: see `ssd.inference.device` (an
    unavailable device raises `DeviceError` before anything is created).

    `resume=True` continues from `output_dir/last.pt` (a path selects another checkpoint); the
    checkpoint's config must equal `cfg` except for `train.max_iters`. `evaluate_fn(model, cfg,
    device)` returns an `Evaluation` or JSON metrics with "mAP" (defaults to
    `ssd.engine.evaluate.evaluate_model` on the val split); `TrainResult.final_metrics` holds the
    last one in its JSON form (the "eval" row of metrics.jsonl). `progress(iteration, scalars)`
    is called every step (the CLI's tqdm bar).

    Under torchrun (or with a default process group already initialised) this trains data
    parallel; every process calls `train` with the same arguments and gets the same iteration,
    history (all-reduced losses), best mAP and final metrics. On CUDA each process uses
    `cuda:LOCAL_RANK`.
    """
    from ssd.inference.device import resolve_device

    dev = resolve_device(device)
    out = Path(output_dir)
    # the main process alone looks at the folder (under torchrun, or in a process group that the
    # caller initialised); the others would find the files it writes meanwhile
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if (torch.distributed.get_rank() if initialised else int(os.environ.get("RANK", "0"))) == 0:
        check_run_folder(out, resume, overwrite)
    ctx = setup_distributed(dev)
    try:
        return _train(cfg, out, ctx, resume, progress, evaluate_fn)
    finally:
        ctx.close()


def _train(
    cfg: Config,
    out: Path,
    ctx: DistContext,
    resume: bool | str | Path,
    progress: ProgressFn | None,
    evaluate_fn: EvaluateFn | None,
) -> TrainResult:
    """The loop: one `_Trainer.step` per iteration, then its logging, checkpoint and evaluation;
    a signal stops it between steps with a checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    cfg, prior_check = _prepare_config(cfg, out, ctx, resume)
    torch.manual_seed(cfg.seed)  # model initialisation; data randomness has its own generators
    if ctx.distributed:
        log.info(
            "data-parallel: rank %d of %d on %s, %d images per process, global batch %d",
            ctx.rank, ctx.world_size, ctx.device, cfg.train.batch_size, cfg.train.batch_size * ctx.world_size,
        )  # fmt: skip
    trainer = _Trainer(cfg, out, ctx)
    if resume:  # every process loads the same checkpoint
        trainer.resume(trainer.last_path if resume is True else Path(resume))
    elif ctx.is_main:
        save_config(cfg, out / "config.yaml")
    trainer.wrap()
    run_log = _RunLog(out, ctx.is_main)
    try:
        evaluate = evaluate_fn if evaluate_fn is not None else _default_evaluate(trainer, run_log)
        batches = _train_batches(cfg, ctx, trainer.iteration)
        trainer.start_clock()
        with _SignalGuard() as guard:
            while trainer.iteration < cfg.train.max_iters:
                trainer.stop_if_signalled(guard)
                batch = next(batches)
                trainer.note_skipped_images(batch)
                scalars = trainer.step(batch, run_log)
                trainer.iteration += 1
                if scalars is None:  # non-finite loss: the step was skipped
                    continue
                trainer.log_step(scalars, run_log, progress)
                trainer.checkpoint_and_evaluate(evaluate, run_log)
    finally:
        run_log.close()
    learned_config, report = trainer.finish()
    return TrainResult(
        output_dir=out,
        iteration=trainer.iteration,
        last_checkpoint=trainer.last_path,
        best_checkpoint=trainer.best_path if trainer.best_path.exists() else None,
        best_map=trainer.best_map,
        final_metrics=trainer.final_metrics,
        skipped_steps=trainer.skipped_steps,
        history=trainer.history,
        learned_config=learned_config,
        skipped_images=trainer.skipped_images,
        report=report,
        prior_check=prior_check,
        config=cfg,
    )


def _prepare_config(
    cfg: Config, out: Path, ctx: DistContext, resume: bool | str | Path
) -> tuple[Config, PriorCheck | None]:
    """The config to train with and the prior check of a new run: `train.auto_priors` fits the
    priors at the start of a new run (a resumed run reuses the ones in its checkpoint)."""
    if resume and cfg.train.auto_priors is not None:
        return _resumed_auto_priors(cfg, out / "last.pt" if resume is True else Path(resume)), None
    if not resume and (cfg.train.prior_check or cfg.train.auto_priors is not None):
        from ssd.engine.prior_check import check_priors

        with ctx.main_first():  # rank 0 may generate the synthetic dataset; the others then read it
            return check_priors(cfg, out if ctx.is_main else None)
    return cfg, None


def _train_batches(cfg: Config, ctx: DistContext, start: int) -> Iterator[Batch]:
    """This process's training batches from iteration `start` on (none when the run is done)."""
    with ctx.main_first():  # rank 0 may generate the synthetic dataset; the others then read it
        loader = (
            build_train_loader(cfg, start, ctx.rank, ctx.world_size) if start < cfg.train.max_iters else None
        )
    return checked(loader) if loader is not None else iter(())


class _RunLog:
    """Where a run's figures go: TensorBoard (`writer`) and metrics.jsonl (one JSON row per
    logged step or evaluation); rank 0 only, the other processes write nowhere."""

    def __init__(self, out: Path, is_main: bool) -> None:
        self.writer: Any = _summary_writer(out / "tb") if is_main else _NullWriter()
        self._metrics = (out / "metrics.jsonl" if is_main else Path(os.devnull)).open("a", encoding="utf-8")

    def row(self, row: dict[str, Any]) -> None:
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()

    def close(self) -> None:
        self.writer.close()
        self._metrics.close()


def _default_evaluate(trainer: _Trainer, run_log: _RunLog) -> EvaluateFn:
    """mAP on the val split (`ssd.engine.evaluate`), with PR curves and detections in TensorBoard."""
    from ssd.engine.evaluate import predict_split, score

    def evaluate_fn(m: SSD, c: Config, d: torch.device) -> Evaluation:
        detections = predict_split(m, c, "val", d)
        evaluation = score(c, "val", detections)
        _log_eval_visuals(run_log.writer, c, evaluation.result, detections.detections, trainer.iteration)
        return evaluation

    return evaluate_fn


class _Trainer:
    """A run's model, optimizer and counters, and the pieces of an iteration: `step` (forward,
    loss, backward with AMP and gradient clipping; a non-finite loss skips it), `log_step`,
    `checkpoint_and_evaluate`, `stop_if_signalled`; `resume` and `save` read and write the
    checkpoint, `finish` exports learned priors and writes the final report."""

    def __init__(self, cfg: Config, out: Path, ctx: DistContext) -> None:
        dev = ctx.device
        self.cfg, self.out, self.ctx, self.dev = cfg, out, ctx, dev
        model = build_model(cfg).to(dev)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = build_optimizer(model, cfg)
        self.runtime = resolve_train_runtime(cfg, DeviceCaps.of(dev))  # amp, cuDNN autotuning, pinned memory
        log.info("runtime on %s: %s", dev, self.runtime.to_dict())
        if dev.type == "cuda":
            apply_cudnn_benchmark(self.runtime.cudnn_benchmark)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.runtime.grad_scaler)
        self.criterion = MultiBoxLoss(
            cfg.matcher.iou_threshold, cfg.loss.neg_pos_ratio, cfg.priors.variances, cfg.loss.loc_weight
        )
        self.aids = PriorAids.from_config(cfg) if cfg.priors.learnable else None
        self.ema = build_ema(model, cfg) if cfg.train.ema else None
        # what evaluation sees
        self.eval_model = model if self.ema is None else typing.cast(SSD, self.ema.module)
        # What the step calls: `model` itself, or DistributedDataParallel(model) (gradient
        # averaging; see `wrap`). `model` stays the plain SSD for priors(), checkpoints,
        # evaluation and prior export.
        self.net: nn.Module = model
        self.last_path = out / "last.pt"
        self.best_path = out / "best.pt"
        self.iteration = 0
        self.best_map: float | None = None
        self.final_metrics: dict[str, Any] | None = None
        self.skipped_steps = 0  # non-finite losses, in all
        self.bad_in_row = 0  # non-finite losses in a row
        self.skipped_images: dict[str, int] = {}
        self.history: list[dict[str, float]] = []
        self._t_last = time.perf_counter()  # sec_per_iter: since the last logged step

    def start_clock(self) -> None:
        self._t_last = time.perf_counter()

    # ----------------------------------------------------------------- checkpoint

    def resume(self, path: Path) -> None:
        """Continue from the training checkpoint `path` (its config must match, see
        `_check_resume_config`); drop the metrics rows logged after it."""
        state = load_checkpoint(path, map_location=self.dev)
        _check_resume_config(state, self.cfg, path, self.ctx.world_size)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.iteration = start = int(state["iteration"])
        self.best_map = state.get("best_map")
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if self.ema is not None:
            if not isinstance(state.get("ema"), dict):
                raise CheckpointError(f"{path}: train.ema is on but the checkpoint has no EMA weights")
            self.ema.module.load_state_dict(state["ema"]["model"])
            self.ema.n_averaged.fill_(int(state["ema"]["updates"]))
        log.info("resumed from %s at iteration %d", path, start)
        if self.ctx.is_main:
            dropped = truncate_metrics(self.out / "metrics.jsonl", start)
            if dropped:
                log.info("metrics.jsonl: dropped %d rows past the checkpoint's iteration %d", dropped, start)

    def wrap(self) -> None:
        """Data parallel: the step calls DistributedDataParallel(model) (after `resume`)."""
        self.net = self.ctx.wrap(self.model, sync_bn=self.cfg.train.sync_bn)

    def save(self, path: Path) -> Path:
        """Write everything the run needs to continue exactly to `path` (rank 0 only)."""
        if not self.ctx.is_main:  # one writer
            return path
        ema = self.ema
        return save_checkpoint(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "iteration": self.iteration,
                "rng": rng_state(),
                "config": config_to_dict(self.cfg),
                "class_names": list(self.cfg.data.classes),
                "best_map": self.best_map,
                "skipped_steps": self.skipped_steps,
                "world_size": self.ctx.world_size,
                "ema": None if ema is None else {
                    "model": ema.module.state_dict(), "updates": int(ema.n_averaged)
                },
                "runtime": self.runtime.to_dict(),
            },
            path,
        )  # fmt: skip

    def stop_if_signalled(self, guard: _SignalGuard) -> None:
        """SIGINT/SIGTERM on any process: all stop at this step with a checkpoint."""
        if self.ctx.any_rank(guard.received is not None):
            path = self.save(self.last_path)
            self.ctx.barrier()  # the checkpoint exists before anyone reports it
            by = guard.received if guard.received is not None else "(another process)"
            log.warning("signal %s: checkpoint written at iteration %d", by, self.iteration)
            raise TrainingInterrupted(path, self.iteration)

    # ----------------------------------------------------------------- the step

    def note_skipped_images(self, batch: Batch) -> None:
        """Count and log the samples the loader replaced (unreadable images, data.skip_invalid)."""
        for err in batch.skipped:
            name = str(getattr(err, "image_id", None) or getattr(err, "path", err))
            self.skipped_images[name] = self.skipped_images.get(name, 0) + 1
            log.warning(
                "iteration %d: %s; replaced by another sample (data.skip_invalid)", self.iteration, err
            )

    def step(self, batch: Batch, run_log: _RunLog) -> dict[str, float] | None:
        """One optimizer step on `batch` at `self.iteration`: the loss terms logged, or None when
        the (global) loss is not finite and the step was skipped."""
        cfg, dev, it, optimizer, scaler = self.cfg, self.dev, self.iteration, self.optimizer, self.scaler
        self.model.train()
        lr = set_lr(optimizer, cfg.train.lr, lr_factor(it, cfg))
        images = batch.images.to(dev, non_blocking=self.runtime.non_blocking)
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = batch.targets.to(dev)
        with self.runtime.autocast(dev.type):
            outputs = self.net(images)
        loss, scalars, finite = self._loss(outputs, targets, lr)
        if not finite:  # the same decision on every process
            self._skip_step(scalars, run_log)
            return None
        self.bad_in_row = 0
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(scaler.scale(loss))  # DDP: gradients averaged over processes here
        if cfg.train.grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        scaler.step(optimizer)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        scaler.update()
        return scalars

    def _loss(
        self, outputs: HeadOutputs, targets: Targets, lr: float
    ) -> tuple[torch.Tensor, dict[str, float], bool]:
        """(the loss to back-propagate, the loss terms to log, whether the loss is finite)."""
        it, aids = self.iteration, self.aids
        priors = self.model.priors()
        if aids is not None:
            result, extra = aids.loss(self.criterion, outputs, targets, priors, it)
        else:
            result, extra = self.criterion(outputs, targets, priors), {}
        if not self.ctx.distributed:
            loss = result.total + sum(extra.values(), torch.zeros((), device=self.dev))
            return loss, _scalars(result, extra, lr), bool(torch.isfinite(loss))
        # this process holds a slice of the global batch: normalise by global counts
        soft_loc = aids is not None and aids.temperature(it) > 0
        return _global_loss(result, extra, targets, priors, soft_loc, self.cfg.loss.loc_weight, lr, self.ctx)

    def _skip_step(self, scalars: dict[str, float], run_log: _RunLog) -> None:
        """A non-finite loss: no update; too many in a row stop the run (`TrainingError`)."""
        it, max_bad = self.iteration, self.cfg.train.max_bad_steps
        self.bad_in_row += 1
        self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        log.warning(
            "iteration %d: non-finite loss (%s); step skipped (%d in a row, %d in all)",
            it, scalars["loss"], self.bad_in_row, self.skipped_steps,
        )  # fmt: skip
        run_log.writer.add_scalar("train/skipped_steps", self.skipped_steps, it)
        if self.bad_in_row >= max_bad:
            raise TrainingError(
                f"{self.bad_in_row} non-finite losses in a row at iteration {it} "
                f"(train.max_bad_steps={max_bad}); lower train.lr, check "
                "the data with ssd-check-dataset, or set train.grad_clip"
            )

    # ----------------------------------------------------------------- after the step

    def log_step(self, scalars: dict[str, float], run_log: _RunLog, progress: ProgressFn | None) -> None:
        """History and progress every step; TensorBoard and metrics.jsonl every `log_every`."""
        it, t = self.iteration, self.cfg.train
        self.history.append({"iteration": it, **scalars})
        if progress is not None:
            progress(it, scalars)
        if it % t.log_every == 0 or it == t.max_iters:
            now = time.perf_counter()
            scalars["sec_per_iter"] = (now - self._t_last) / t.log_every
            self._t_last = now
            for k, v in scalars.items():
                run_log.writer.add_scalar(f"train/{k}", v, it)
            if self.aids is not None:
                self.aids.log_shapes(run_log.writer, self.model, it)
            run_log.row({"iteration": it, **scalars})

    def checkpoint_and_evaluate(self, evaluate_fn: EvaluateFn, run_log: _RunLog) -> None:
        """last.pt every `checkpoint_every`; evaluation (and best.pt) every `eval_every`; both at the end."""
        it, t = self.iteration, self.cfg.train
        do_eval = it % t.eval_every == 0 or it == t.max_iters
        if it % t.checkpoint_every == 0 or it == t.max_iters or do_eval:
            # before evaluating: an evaluation that fails loses nothing of the training
            self.save(self.last_path)
        if do_eval:
            self.evaluate(evaluate_fn, run_log)

    def evaluate(self, evaluate_fn: EvaluateFn, run_log: _RunLog) -> None:
        """Evaluate the model (the EMA weights if on) on rank 0, log it, keep best.pt; the other
        processes receive the result."""
        ctx, it = self.ctx, self.iteration
        if ctx.is_main:
            with torch.random.fork_rng(devices=[]):  # resuming from last.pt sees the same RNG
                evaluation = evaluate_fn(self.eval_model, self.cfg, self.dev)
            metrics = evaluation.to_dict() if isinstance(evaluation, Evaluation) else dict(evaluation)
            self.final_metrics = metrics
            m = float(metrics["mAP"])
            run_log.writer.add_scalar("eval/mAP", m, it)
            for name, ap in metrics.get("per_class_ap", {}).items():
                if ap is not None and ap == ap:  # None/NaN: no ground truth
                    run_log.writer.add_scalar(f"eval/AP/{name}", ap, it)
            run_log.row({"iteration": it, "eval": metrics})
            log.info("iteration %d: mAP %.4f", it, m)
            if self.best_map is None or m > self.best_map:
                self.best_map = m
                self.save(self.best_path)
                self.save(self.last_path)  # last.pt knows the new best mAP
        self.best_map, self.final_metrics = ctx.broadcast((self.best_map, self.final_metrics))  # others wait

    # ----------------------------------------------------------------- the end

    def finish(self) -> tuple[Path | None, RunReport | None]:
        """After the loop: learned priors frozen and exported (learned_priors.yaml, .png), the
        final report; returns (learned prior config, report)."""
        cfg, ctx, out = self.cfg, self.ctx, self.out
        learned_config = None
        learned_cfg = cfg
        if cfg.priors.learnable:
            learned_config = out / "learned_priors.yaml"
            if ctx.is_main:
                learned_cfg = export_learned_priors(self.model, cfg, learned_config)
                self.save(self.last_path)
                log.info("learned priors frozen and written to %s", learned_config)
                plot = _plot_learned_shapes(cfg, learned_cfg, out / "learned_priors.png")
                log.info("initial and learned prior shapes over the training boxes: %s", plot)
        elif not self.last_path.exists():  # resumed at max_iters: nothing ran
            self.save(self.last_path)
        report: RunReport | None = None
        if ctx.is_main and self.final_metrics is not None:
            metrics, it = self.final_metrics, self.iteration
            report = _final_report(self.eval_model, learned_cfg, self.dev, metrics, out, it)
        ctx.barrier()  # rank 0's files are complete before any process returns
        return learned_config, report


@dataclass(frozen=True)
class RunReport:
    """The end-of-training report of the final model: its last evaluation (`metrics`: mAP,
    per-class AP with GT counts, confusion matrix, in the evaluation's JSON form), its end-to-end
    speed on the training device (batch 1, fp32; None when it could not be measured) and where
    it comes from (`sources`: run, checkpoint, iteration, split). `to_dict()` is results.json."""

    metrics: dict[str, Any]
    speed: dict[str, Any] | None
    sources: dict[str, object]

    def to_dict(self) -> dict[str, Any]:
        return {**self.metrics, "speed": self.speed, "sources": self.sources}


def _final_report(
    model: SSD, cfg: Config, dev: torch.device, metrics: dict[str, Any], out: Path, iteration: int
) -> RunReport:
    """The final model's report (see `RunReport`), logged and written to `out`/report.md and
    results.json."""
    from ssd.engine.evaluate import measure_speed, typical_image_size
    from ssd.evaluation.report import write_run_report

    try:
        size = typical_image_size(cfg, "val")
        speed: dict[str, Any] | None = measure_speed(model, cfg, dev, orig_size=size).to_dict()
    except RuntimeError as exc:  # e.g. out of memory: the metrics still get reported
        log.warning("end-to-end speed not measured: %s", exc)
        speed = None
    sources: dict[str, object] = {
        "run": str(out),
        "checkpoint": str(out / "last.pt"),
        "iteration": iteration,
        "split": "val",
    }
    report = RunReport(metrics, speed, sources)
    title = f"Training run {out.name}: final model, iteration {iteration}, val split"
    write_run_report(report.to_dict(), out, title)
    fps = "n/a" if speed is None else f"{speed['end_to_end_fps']:.2f}"
    log.info("final model (iteration %d): mAP %s, %s FPS end to end; %s", iteration, metrics.get("mAP"), fps,
             out / "report.md")  # fmt: skip
    return report


def _log_eval_visuals(
    writer: Any, cfg: Config, result: Any, detections: dict[str, Detections], it: int, num_images: int = 4
) -> None:
    """TensorBoard at each evaluation: the per-class PR curves (one figure) and the first
    `num_images` validation images with their ground truth (green) and detections at or above
    `eval.confusion_score` (red, labelled with class and score)."""
    if isinstance(writer, _NullWriter):
        return
    from torchvision.utils import draw_bounding_boxes

    from ssd.data.loader import build_records, load_image
    from ssd.evaluation.report import figure_to_chw, pr_curves_figure

    if hasattr(result, "precision"):
        fig = pr_curves_figure(result.precision, result.recall, result.per_class_ap, f"iteration {it}")
        writer.add_image("eval/pr_curves", figure_to_chw(fig), it)
    names = cfg.data.classes
    for i, record in enumerate(build_records(cfg, "val")[:num_images]):
        det = detections.get(record.image_id)
        if det is None:
            continue
        try:
            image = load_image(record.image_path)
        except ValueError as exc:  # DatasetError: the evaluation itself reports unreadable images
            log.warning("TensorBoard image skipped: %s", exc)
            continue
        gt = torch.as_tensor(record.boxes_px, dtype=torch.float32).reshape(-1, 4)
        image = draw_bounding_boxes(image, gt, colors="lime", width=2)
        keep = det.scores >= cfg.eval.confusion_score
        labels = [f"{names[int(c) - 1]} {float(s):.2f}" for c, s in zip(det.labels[keep], det.scores[keep])]
        image = draw_bounding_boxes(image, det.boxes[keep].float(), labels=labels, colors="red", width=2)
        writer.add_image(f"eval/detections/{i}_{record.image_id}", image, it)


def _global_loss(
    result: LossOutput,
    extra: dict[str, torch.Tensor],
    targets: Targets,
    priors: torch.Tensor,
    soft_loc: bool,
    loc_weight: float,
    lr: float,
    ctx: DistContext,
) -> tuple[torch.Tensor, dict[str, float], bool]:
    """Data-parallel loss: (the loss to back-propagate on this process, the global batch's loss
    terms for logging, whether the global loss is finite).

    The MultiBox loss divides by the number of positives N of its batch; the soft-assignment
    localisation term of the learnable-prior warm-up divides by the number of ground-truth boxes G
    instead, and the online-clustering term by the count of the localisation term in force (G
    during the soft assignment, N after). A process sees only its
    slice, so each term is un-normalised here (S_r = term * max(n_r, 1)), the S_r and counts are
    summed over the W processes in one all-reduce, and the process back-propagates
    W * S_r / max(N, 1): DDP averages gradients over W, which gives the gradient of
    sum_r S_r / max(N, 1), the single-process loss of the global batch. The non-finite count
    travels in the same all-reduce, so every process takes the same skip decision.
    """
    dev = result.total.device
    unknown = set(extra) - {"cluster"}
    if unknown:
        raise NotImplementedError(f"data-parallel normalisation of loss terms {sorted(unknown)}")
    zero = torch.zeros((), device=dev)
    n_pos = result.num_pos.float()
    n_gt = torch.tensor(float(sum(len(b) for b in targets.boxes)), device=dev)
    loc_count = n_gt if soft_loc else n_pos
    s_loc = result.loc * loc_count.clamp_min(1)
    s_cls = result.cls * n_pos.clamp_min(1)
    # the clustering term is normalised like the localisation term in force (G soft, N hard)
    s_cluster = extra["cluster"] * loc_count if "cluster" in extra else zero
    local = result.total + sum(extra.values(), zero)
    bad = (~torch.isfinite(local)).float()
    has_cluster = torch.tensor(float("cluster" in extra), device=dev)
    stats = torch.stack([s_loc, s_cls, s_cluster, n_pos, loc_count, bad, has_cluster]).detach().float()
    g_loc, g_cls, g_cluster, g_pos, g_loc_count, g_bad, g_has_cluster = ctx.all_reduce_sum(stats).tolist()
    pos_norm, loc_norm = max(g_pos, 1.0), max(g_loc_count, 1.0)
    loss = ctx.world_size * (loc_weight * s_loc / loc_norm + s_cls / pos_norm + s_cluster / loc_norm)
    if priors.requires_grad:
        # DDP's reducer waits for a gradient of every parameter; a process whose slice has no
        # ground truth would give the learnable shapes none (a zero-valued term keeps them in).
        loss = loss + priors.sum() * 0.0
    scalars = {
        "loss": loc_weight * g_loc / loc_norm + g_cls / pos_norm + g_cluster / loc_norm,
        "loss_loc": g_loc / loc_norm,
        "loss_cls": g_cls / pos_norm,
        "num_pos": g_pos,
        "lr": lr,
    }
    if g_has_cluster:
        scalars["loss_cluster"] = g_cluster / loc_norm
    if g_bad:  # some process's loss is not finite (its terms may look finite)
        scalars["loss"] = float("nan")
    return loss, scalars, g_bad == 0 and math.isfinite(scalars["loss"])


def _scalars(result: LossOutput, extra: dict[str, torch.Tensor], lr: float) -> dict[str, float]:
    s = {
        "loss": float(result.total.detach()) + sum(float(v.detach()) for v in extra.values()),
        "loss_loc": float(result.loc.detach()),
        "loss_cls": float(result.cls.detach()),
        "num_pos": float(result.num_pos),
        "lr": lr,
    }
    for k, v in extra.items():
        s[f"loss_{k}"] = float(v.detach())
    return s


def _plot_learned_shapes(initial: Config, learned: Config, path: Path) -> Path:
    """The initial and the learned prior shapes over the log w - log h density of the training
    boxes (input pixels): where gradient descent moved the priors (Zhong et al., Fig. 1 style)."""
    from ssd.data.loader import build_records
    from ssd.priors.fit import records_to_boxes
    from ssd.priors.generator import PriorSet
    from ssd.priors.plots import plot_shape_density

    size = initial.priors.image_size
    boxes = records_to_boxes(build_records(initial, "train"), size)
    shapes = {
        "initial": PriorSet.from_config(initial.priors).shapes,
        "learned": PriorSet.from_config(learned.priors).shapes,
    }
    return plot_shape_density(
        boxes.wh_px, shapes, path, image_size=size, title="prior shapes before and after learning"
    )


def _resumed_auto_priors(cfg: Config, path: Path) -> Config:
    """A run with `train.auto_priors` trained with the priors it fitted at its start (stored in
    its checkpoint's config): resume with those, not a new fit."""
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict):
        return cfg
    import dataclasses

    return dataclasses.replace(cfg, priors=config_from_dict(state["config"]).priors)


def truncate_metrics(path: Path, iteration: int) -> int:
    """Drop the rows of a metrics.jsonl written after `iteration` (a run killed after its last
    checkpoint logged steps that the resumed run logs again) and a torn last line; returns how
    many rows were dropped. The file is rewritten atomically."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
            keep = int(row["iteration"]) <= iteration
        except (ValueError, KeyError, TypeError):
            keep = False  # a torn line of a killed run
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


def _check_resume_config(state: dict[str, Any], cfg: Config, path: Path, world_size: int = 1) -> None:
    if "config" not in state or "optimizer" not in state or "iteration" not in state:
        raise CheckpointError(f"{path}: not a training checkpoint (no optimizer/iteration/config)")
    saved_world = int(state.get("world_size", 1))
    if saved_world != world_size:
        # the global batch (train.batch_size x processes) and hence the data stream would change
        raise CheckpointError(
            f"{path}: the run was trained with {saved_world} process(es), this one has {world_size}; "
            "resume with the same number of processes (the global batch is train.batch_size x processes)"
        )
    saved = config_from_dict(state["config"])
    a, b = config_to_dict(saved), config_to_dict(cfg)
    a["train"].pop("max_iters")
    b["train"].pop("max_iters")
    if a != b:
        diffs = sorted(_diff_keys(a, b))
        raise CheckpointError(
            f"{path}: the checkpoint was trained with a different config ({', '.join(diffs[:8])}); "
            "resume with the run's config.yaml"
        )


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [prefix]


class _NullWriter:
    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_scalars(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_image(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _summary_writer(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training alive without it
        log.warning("tensorboard not installed: no TensorBoard logs")
        return _NullWriter()
    return SummaryWriter(str(path))
