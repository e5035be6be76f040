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
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn

from ssd.config import Config, ConfigError, config_from_dict, config_to_dict, save_config
from ssd.data.loader import build_train_loader, checked
from ssd.engine.distributed import DistContext, setup_distributed
from ssd.inference.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ssd.inference.runtime import DeviceCaps, apply_cudnn_benchmark, resolve_train_runtime
from ssd.losses import LossOutput, MultiBoxLoss
from ssd.modeling.build import build_model
from ssd.modeling.ssd import SSD
from ssd.priors.learnable import PriorAids, export_learned_priors
from ssd.structures import Batch, Targets

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, dict[str, float]], None]


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
    report: dict[str, Any] | None = None  # the final model's report (also report.md / results.json)
    prior_check: dict[str, Any] | None = None  # the prior check at the start (also prior_check.json)
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
    evaluate_fn: Callable[[SSD, Config, torch.device], dict[str, Any]] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train `cfg` into `output_dir` (config.yaml, last.pt, best.pt, metrics.jsonl, tb/).

    A folder that already holds a run is refused (`RunFolderError`) unless `resume` (continue it)
    or `overwrite` (its run files are removed first). `device`: see `ssd.inference.device` (an
    unavailable device raises `DeviceError` before anything is created).

    `resume=True` continues from `output_dir/last.pt` (a path selects another checkpoint); the
    checkpoint's config must equal `cfg` except for `train.max_iters`. `evaluate_fn(model, cfg,
    device)` returns metrics with "mAP" (defaults to `ssd.engine.evaluate.evaluate_model` on the
    val split). `progress(iteration, scalars)` is called every step (the CLI's tqdm bar).

    Under torchrun (or with a default process group already initialised) this trains data
    parallel; every process calls `train` with the same arguments and gets the same iteration,
    history (all-reduced losses), best mAP and final metrics. On CUDA each process uses
    `cuda:LOCAL_RANK`.
    """
    from ssd.inference.device import resolve_device

    dev = resolve_device(device)
    out = Path(output_dir)
    if int(os.environ.get("RANK", "0")) == 0:
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
    evaluate_fn: Callable[[SSD, Config, torch.device], dict[str, Any]] | None,
) -> TrainResult:
    out.mkdir(parents=True, exist_ok=True)
    dev = ctx.device
    prior_check: dict[str, Any] | None = None
    if resume and cfg.train.auto_priors is not None:
        cfg = _resumed_auto_priors(cfg, out / "last.pt" if resume is True else Path(resume))
    elif not resume and (cfg.train.prior_check or cfg.train.auto_priors is not None):
        from ssd.engine.prior_check import check_priors

        with ctx.main_first():  # rank 0 may generate the synthetic dataset; the others then read it
            cfg, prior_check = check_priors(cfg, out if ctx.is_main else None)
    torch.manual_seed(cfg.seed)  # model initialisation; data randomness has its own generators
    if ctx.distributed:
        log.info(
            "data-parallel: rank %d of %d on %s, %d images per process, global batch %d",
            ctx.rank, ctx.world_size, dev, cfg.train.batch_size, cfg.train.batch_size * ctx.world_size,
        )  # fmt: skip

    model = build_model(cfg).to(dev)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    runtime = resolve_train_runtime(cfg, DeviceCaps.of(dev))  # amp, cuDNN autotuning, pinned memory
    log.info("runtime on %s: %s", dev, runtime.as_dict())
    if dev.type == "cuda":
        apply_cudnn_benchmark(runtime.cudnn_benchmark)
    scaler = torch.amp.GradScaler(dev.type, enabled=runtime.grad_scaler)
    criterion = MultiBoxLoss(
        cfg.matcher.iou_threshold, cfg.loss.neg_pos_ratio, cfg.priors.variances, cfg.loss.loc_weight
    )
    aids = PriorAids.from_config(cfg) if cfg.priors.learnable else None
    ema = build_ema(model, cfg) if cfg.train.ema else None
    eval_model = model if ema is None else typing.cast(SSD, ema.module)  # what evaluation sees

    start = 0
    best_map: float | None = None
    skipped_total = 0
    last_path = out / "last.pt"
    best_path = out / "best.pt"
    if resume:  # every process loads the same checkpoint
        ckpt_path = last_path if resume is True else Path(resume)
        state = load_checkpoint(ckpt_path, map_location=dev)
        _check_resume_config(state, cfg, ckpt_path, ctx.world_size)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start = int(state["iteration"])
        best_map = state.get("best_map")
        skipped_total = int(state.get("skipped_steps", 0))
        if ema is not None:
            if not isinstance(state.get("ema"), dict):
                raise CheckpointError(f"{ckpt_path}: train.ema is on but the checkpoint has no EMA weights")
            ema.module.load_state_dict(state["ema"]["model"])
            ema.n_averaged.fill_(int(state["ema"]["updates"]))
        log.info("resumed from %s at iteration %d", ckpt_path, start)
        if ctx.is_main:
            dropped = truncate_metrics(out / "metrics.jsonl", start)
            if dropped:
                log.info("metrics.jsonl: dropped %d rows past the checkpoint's iteration %d", dropped, start)
    elif ctx.is_main:
        save_config(cfg, out / "config.yaml")
    # What the step calls: `model` itself, or DistributedDataParallel(model) (gradient averaging).
    # `model` stays the plain SSD for priors(), checkpoints, evaluation and prior export.
    net = ctx.wrap(model, sync_bn=cfg.train.sync_bn)

    writer = _summary_writer(out / "tb") if ctx.is_main else _NullWriter()
    metrics_file = (out / "metrics.jsonl" if ctx.is_main else Path(os.devnull)).open("a", encoding="utf-8")
    history: list[dict[str, float]] = []

    def checkpoint(it: int, path: Path) -> Path:
        if not ctx.is_main:  # one writer
            return path
        return save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "iteration": it,
                "rng": rng_state(),
                "config": config_to_dict(cfg),
                "class_names": list(cfg.data.classes),
                "best_map": best_map,
                "skipped_steps": skipped_total,
                "world_size": ctx.world_size,
                "ema": None if ema is None else {
                    "model": ema.module.state_dict(), "updates": int(ema.n_averaged)
                },
                "runtime": runtime.as_dict(),
            },
            path,
        )

    if evaluate_fn is None:
        from ssd.engine.evaluate import predict_split, score_with_result

        def evaluate_fn(m: SSD, c: Config, d: torch.device) -> dict[str, Any]:
            detections = predict_split(m, c, "val", d)
            summary, result = score_with_result(c, "val", detections)
            _log_eval_visuals(writer, c, result, detections.detections, it)  # `it`: the iteration evaluated
            return summary

    final_metrics: dict[str, Any] | None = None
    it = start
    bad_in_row = 0
    with ctx.main_first():  # rank 0 may generate the synthetic dataset; the others then read it
        loader = (
            build_train_loader(cfg, start, ctx.rank, ctx.world_size) if start < cfg.train.max_iters else None
        )
    batches: Iterator[Batch] = checked(loader) if loader is not None else iter(())
    skipped_images: dict[str, int] = {}
    t_last = time.perf_counter()
    try:
        with _SignalGuard() as guard:
            while it < cfg.train.max_iters:
                if ctx.any_rank(guard.received is not None):  # all processes stop at the same step
                    path = checkpoint(it, last_path)
                    ctx.barrier()  # the checkpoint exists before anyone reports it
                    by = guard.received if guard.received is not None else "(another process)"
                    log.warning("signal %s: checkpoint written at iteration %d", by, it)
                    raise TrainingInterrupted(path, it)
                batch = next(batches)
                for err in batch.skipped:
                    name = str(getattr(err, "image_id", None) or getattr(err, "path", err))
                    skipped_images[name] = skipped_images.get(name, 0) + 1
                    log.warning("iteration %d: %s; replaced by another sample (data.skip_invalid)", it, err)
                model.train()
                lr = set_lr(optimizer, cfg.train.lr, lr_factor(it, cfg))
                images = batch.images.to(dev, non_blocking=runtime.non_blocking)
                if cfg.train.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                targets = batch.targets.to(dev)
                with runtime.autocast(dev.type):
                    outputs = net(images)
                priors = model.priors()
                if aids is not None:
                    result, extra = aids.loss(criterion, outputs, targets, priors, it)
                else:
                    result, extra = criterion(outputs, targets, priors), {}
                if not ctx.distributed:
                    loss = result.total + sum(extra.values(), torch.zeros((), device=dev))
                    finite = bool(torch.isfinite(loss))
                    scalars = _scalars(result, extra, lr)
                else:  # this process holds a slice of the global batch: normalise by global counts
                    soft_loc = aids is not None and aids.temperature(it) > 0
                    loss, scalars, finite = _global_loss(
                        result, extra, targets, priors, soft_loc, cfg.loss.loc_weight, lr, ctx
                    )
                if not finite:  # the same decision on every process
                    bad_in_row += 1
                    skipped_total += 1
                    optimizer.zero_grad(set_to_none=True)
                    log.warning(
                        "iteration %d: non-finite loss (%s); step skipped (%d in a row, %d in all)",
                        it, scalars["loss"], bad_in_row, skipped_total,
                    )  # fmt: skip
                    writer.add_scalar("train/skipped_steps", skipped_total, it)
                    if bad_in_row >= cfg.train.max_bad_steps:
                        raise TrainingError(
                            f"{bad_in_row} non-finite losses in a row at iteration {it} "
                            f"(train.max_bad_steps={cfg.train.max_bad_steps}); lower train.lr, check "
                            "the data with tools/check_dataset.py, or set train.grad_clip"
                        )
                    it += 1
                    continue
                bad_in_row = 0
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()  # DDP: gradients averaged over processes here
                if cfg.train.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                scaler.step(optimizer)
                if ema is not None:
                    ema.update_parameters(model)
                scaler.update()
                it += 1

                history.append({"iteration": it, **scalars})
                if progress is not None:
                    progress(it, scalars)
                if it % cfg.train.log_every == 0 or it == cfg.train.max_iters:
                    now = time.perf_counter()
                    scalars["sec_per_iter"] = (now - t_last) / cfg.train.log_every
                    t_last = now
                    for k, v in scalars.items():
                        writer.add_scalar(f"train/{k}", v, it)
                    if aids is not None:
                        aids.log_shapes(writer, model, it)
                    metrics_file.write(json.dumps({"iteration": it, **scalars}) + "\n")
                    metrics_file.flush()
                do_eval = it % cfg.train.eval_every == 0 or it == cfg.train.max_iters
                if it % cfg.train.checkpoint_every == 0 or it == cfg.train.max_iters or do_eval:
                    # before evaluating: an evaluation that fails loses nothing of the training
                    checkpoint(it, last_path)
                if do_eval:
                    if ctx.is_main:
                        with torch.random.fork_rng(devices=[]):  # resuming from last.pt sees the same RNG
                            final_metrics = evaluate_fn(eval_model, cfg, dev)
                        m = float(final_metrics["mAP"])
                        writer.add_scalar("eval/mAP", m, it)
                        for name, ap in final_metrics.get("per_class_ap", {}).items():
                            if ap is not None and ap == ap:  # None/NaN: no ground truth
                                writer.add_scalar(f"eval/AP/{name}", ap, it)
                        metrics_file.write(json.dumps({"iteration": it, "eval": final_metrics}) + "\n")
                        metrics_file.flush()
                        log.info("iteration %d: mAP %.4f", it, m)
                        if best_map is None or m > best_map:
                            best_map = m
                            checkpoint(it, best_path)
                            checkpoint(it, last_path)  # last.pt knows the new best mAP
                    best_map, final_metrics = ctx.broadcast((best_map, final_metrics))  # others wait
    finally:
        writer.close()
        metrics_file.close()
    learned_config = None
    learned_cfg = cfg
    if cfg.priors.learnable:
        learned_config = out / "learned_priors.yaml"
        if ctx.is_main:
            learned_cfg = export_learned_priors(model, cfg, learned_config)
            checkpoint(it, last_path)
            log.info("learned priors frozen and written to %s", learned_config)
            plot = _plot_learned_shapes(cfg, learned_cfg, out / "learned_priors.png")
            log.info("initial and learned prior shapes over the training boxes: %s", plot)
    elif not last_path.exists():  # resumed at max_iters: nothing ran
        checkpoint(it, last_path)
    report: dict[str, Any] | None = None
    if ctx.is_main and final_metrics is not None:
        report = _final_report(eval_model, learned_cfg, dev, final_metrics, out, it)
    ctx.barrier()  # rank 0's files are complete before any process returns
    return TrainResult(
        output_dir=out,
        iteration=it,
        last_checkpoint=last_path,
        best_checkpoint=best_path if best_path.exists() else None,
        best_map=best_map,
        final_metrics=final_metrics,
        skipped_steps=skipped_total,
        history=history,
        learned_config=learned_config,
        skipped_images=skipped_images,
        report=report,
        prior_check=prior_check,
        config=cfg,
    )


def _final_report(
    model: SSD, cfg: Config, dev: torch.device, metrics: dict[str, Any], out: Path, iteration: int
) -> dict[str, Any]:
    """The end-of-training report of the final model: its last evaluation (per-class AP with GT
    counts, mAP, confusion matrix) and its end-to-end speed on the training device (batch 1,
    fp32), logged and written to `out`/report.md and results.json."""
    from ssd.engine.evaluate import measure_speed, typical_image_size
    from ssd.evaluation.report import write_run_report

    try:
        size = typical_image_size(cfg, "val")
        speed: dict[str, Any] | None = measure_speed(model, cfg, dev, orig_size=size).to_dict()
    except RuntimeError as exc:  # e.g. out of memory: the metrics still get reported
        log.warning("end-to-end speed not measured: %s", exc)
        speed = None
    sources = {"run": str(out), "checkpoint": str(out / "last.pt"), "iteration": iteration, "split": "val"}
    summary = {**metrics, "speed": speed, "sources": sources}
    write_run_report(summary, out, f"Training run {out.name}: final model, iteration {iteration}, val split")
    fps = "n/a" if speed is None else f"{speed['end_to_end_fps']:.2f}"
    log.info("final model (iteration %d): mAP %s, %s FPS end to end; %s", iteration, metrics.get("mAP"), fps,
             out / "report.md")  # fmt: skip
    return summary


def _log_eval_visuals(
    writer: Any, cfg: Config, result: Any, detections: dict[str, Any], it: int, num_images: int = 4
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
    from ssd.priors.fit import PriorGrid, records_to_boxes
    from ssd.priors.plots import plot_shape_density

    size = initial.priors.image_size
    boxes = records_to_boxes(build_records(initial, "train"), size)
    shapes = {
        "initial": PriorGrid.from_config(initial.priors).shapes,
        "learned": PriorGrid.from_config(learned.priors).shapes,
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
