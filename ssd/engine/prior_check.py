"""The prior check at the start of training, and `train.auto_priors`.

Like ultralytics' AutoAnchor (which checks the best possible recall of the anchors on the
training labels and re-fits them when it is low), a run first measures how its priors fit the
training boxes: grid recall@0.5 (the share of boxes with a positioned prior at IoU >= 0.5, what
the matcher needs) and mean grid IoU, from `ssd.priors.fit.fit_report` without the position
averaging (about 0.2 s for 10,000 boxes, see the README). Below `train.prior_check_min_recall`
it warns with the exact `priors optimize` command; with `train.auto_priors` it fits priors to the
training boxes and the run trains with them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssd.config import Config, ConfigError, save_config
from ssd.data.loader import build_records
from ssd.priors.fit import BoxSet, fit_report, records_to_boxes
from ssd.priors.generator import PriorSet
from ssd.priors.writer import write_priors_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PriorFit:
    """The short fit summary of a prior set on the training boxes (`prior_fit`)."""

    recall: float
    mean_iou_grid: float
    iou_threshold: float
    num_gt: int
    num_priors: int
    per_class_recall: dict[str, float | None]
    unmatched: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "recall": self.recall,
            "mean_iou_grid": self.mean_iou_grid,
            "iou_threshold": self.iou_threshold,
            "num_gt": self.num_gt,
            "num_priors": self.num_priors,
            "per_class_recall": dict(self.per_class_recall),
            "unmatched": self.unmatched,
        }


@dataclass(frozen=True)
class PriorCheck:
    """What the prior check found (`check_priors`; also prior_check.json): `config` the fit of
    the configured priors (None when the training split has no boxes), `fitted` that of the
    priors `train.auto_priors` fitted, `priors_config` where those were written, `warning` the
    optimize command suggested when the recall is below `min_recall`."""

    config: PriorFit | None
    auto_priors: str | None
    min_recall: float | None = None
    fitted: PriorFit | None = None
    priors_config: str | None = None
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.config is None:
            return {"config": None, "auto_priors": self.auto_priors}
        out: dict[str, Any] = {
            "config": self.config.to_dict(), "min_recall": self.min_recall, "auto_priors": self.auto_priors
        }  # fmt: skip
        if self.fitted is not None:
            out["fitted"] = self.fitted.to_dict()
        if self.priors_config is not None:
            out["priors_config"] = self.priors_config
        if self.warning is not None:
            out["warning"] = self.warning
        return out


def prior_fit(cfg: Config, boxes: BoxSet) -> PriorFit:
    """The short fit summary of `cfg`'s priors on `boxes` (at least one): `recall` (grid
    recall@IoU `matcher.iou_threshold`), `mean_iou_grid`, `num_gt`, `num_priors`, per-class
    recall."""
    threshold = cfg.matcher.iou_threshold
    report = fit_report(
        PriorSet.from_config(cfg.priors), boxes, cfg.data.classes, iou_threshold=threshold, shifts=0,
        max_unmatched=10,
    )  # fmt: skip
    if report.recall is None or report.mean_iou_grid is None:
        raise ValueError("prior_fit needs at least one ground-truth box")
    return PriorFit(
        recall=report.recall,
        mean_iou_grid=report.mean_iou_grid,
        iou_threshold=threshold,
        num_gt=report.num_gt,
        num_priors=report.num_priors,
        per_class_recall={k: v.recall for k, v in report.per_class.items()},
        unmatched=report.unmatched.count,
    )


def optimize_command(out: Path) -> str:
    """The command that fits priors to this run's training boxes (its config.yaml)."""
    return (
        f"ssd-priors optimize --config {out / 'config.yaml'} --split-name train "
        f"--method coverage --out {out / 'priors_coverage.yaml'}"
    )


def fit_auto_priors(cfg: Config, boxes: BoxSet, name: str) -> Config:
    """`cfg` with priors fitted to `boxes` by the `train.auto_priors` method `name`."""
    from ssd.priors import optimize

    if name not in optimize.METHODS:
        raise ConfigError(f"train.auto_priors: {name!r} is not one of {', '.join(optimize.METHODS)}")
    result = optimize.optimize_priors(boxes, cfg.priors, method=name, seed=cfg.seed)  # type: ignore[arg-type]
    return dataclasses.replace(cfg, priors=result.priors)


def check_priors(cfg: Config, out: Path | None) -> tuple[Config, PriorCheck]:
    """Run the prior check (and `train.auto_priors`) for a new run; returns the config to train
    with and the check's report. With `out` the report is written to `out`/prior_check.json and
    fitted priors to `out`/priors.yaml."""
    t = cfg.train
    boxes = records_to_boxes(build_records(cfg, "train"), cfg.priors.image_size)
    if boxes.num_boxes == 0:
        log.warning("prior check: the training split has no boxes; priors not checked")
        return cfg, PriorCheck(config=None, auto_priors=t.auto_priors)
    before = prior_fit(cfg, boxes)
    report = PriorCheck(config=before, auto_priors=t.auto_priors, min_recall=t.prior_check_min_recall)
    log.info(
        "prior check: %d priors, grid recall@%.2f %.1f%%, mean grid IoU %.1f%% on %d training boxes",
        before.num_priors, before.iou_threshold, 100 * before.recall, 100 * before.mean_iou_grid,
        before.num_gt,
    )  # fmt: skip
    if t.auto_priors is not None:
        fitted = fit_auto_priors(cfg, boxes, t.auto_priors)
        after = prior_fit(fitted, boxes)
        report = dataclasses.replace(report, fitted=after)
        log.info(
            "auto_priors %s: %d priors, grid recall %.1f%% (was %.1f%%), mean grid IoU %.1f%% (was %.1f%%)",
            t.auto_priors, after.num_priors, 100 * after.recall, 100 * before.recall,
            100 * after.mean_iou_grid, 100 * before.mean_iou_grid,
        )  # fmt: skip
        if out is not None:
            base = out / "config.yaml"  # the run's config before the fit (rewritten with the fit later)
            save_config(cfg, base)
            path = write_priors_config(
                base, fitted.priors, out / "priors.yaml",
                header=f"the run's config with priors fitted by train.auto_priors: {t.auto_priors} "
                f"on {after.num_gt} training boxes",
            )  # fmt: skip
            report = dataclasses.replace(report, priors_config=str(path))
        cfg = fitted
    elif before.recall < t.prior_check_min_recall:
        command = optimize_command(out) if out is not None else "ssd-priors optimize ..."
        report = dataclasses.replace(report, warning=command)
        log.warning(
            "prior check: the priors reach only %.1f%% grid recall@%.2f of the training boxes (below "
            "train.prior_check_min_recall=%.2f): fit priors to the data with\n  %s\n"
            "and train with that config, or set train.auto_priors: coverage",
            100 * before.recall, before.iou_threshold, t.prior_check_min_recall, command,
        )  # fmt: skip
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "prior_check.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return cfg, report
