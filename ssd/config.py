"""Typed, frozen configuration.

Every setting has a default in a dataclass below; YAML files hold only differences. Loading
rejects unknown keys and wrong types with the dotted key in the message, and `validate` runs the
cross-field checks. Only this module and the `build_*` functions read a `Config`; everything else
takes plain arguments.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the file and/or dotted key."""


VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


@dataclass(frozen=True)
class ModelConfig:
    """VGG-16 SSD512. `width_mult` scales every channel count (small demo/test models)."""

    batch_norm: bool = False
    width_mult: float = 1.0
    l2norm_scale: float = 20.0
    # Path to a torchvision ImageNet VGG-16 (or VGG-16-BN) state dict; fc6/fc7 are subsampled.
    pretrained: str | None = None
    # Batch norm without shift on the predicted w/h offsets (Zhong et al.). None = automatic:
    # on when priors.learnable and priors.learn.bn_no_shift.
    wh_batchnorm: bool | None = None


@dataclass(frozen=True)
class LearnPriorsConfig:
    """Zhong et al., "Anchor Box Optimization for Object Detection" (trainable prior shapes)."""

    lr_mult: float = 1.0
    # both warm-ups (soft assignment, online clustering) last the paper's 1500 iterations
    warmup_iters: int = 1500
    soft_assignment: bool = True
    temperature_start: float = 2.0
    online_clustering: bool = True
    clustering_weight_start: float = 1.0
    bn_no_shift: bool = True


@dataclass(frozen=True)
class PriorsConfig:
    """Prior (default) boxes, in network-input pixels; see the README section "Priors that fit the data".

    Ratio form (the SSD paper): per level `min_sizes`, `max_sizes` and `aspect_ratios`.
    Shape form: per level an explicit list of `[w, h]` or `[w, h, dx, dy]`; when `shapes` is set
    it replaces the ratio form. `dx, dy` in (-0.5, 0.5), in units of the level's step, move that
    prior's centre within every cell to ((j + 0.5 + dx) step, (i + 0.5 + dy) step) (default 0:
    the cell centre); a shape at several offsets is several priors of the cell (a finer
    sub-grid). `image_size` is the (square) network input size and is the one place it is set.
    """

    image_size: int = 512
    feature_maps: tuple[int, ...] = (64, 32, 16, 8, 4, 2, 1)
    steps: tuple[float, ...] = (8, 16, 32, 64, 128, 256, 512)
    min_sizes: tuple[float, ...] = (35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8)
    max_sizes: tuple[float, ...] = (76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6)
    aspect_ratios: tuple[tuple[float, ...], ...] = ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))
    shapes: tuple[tuple[tuple[float, ...], ...], ...] | None = None  # entries [w, h] or [w, h, dx, dy]
    clip: bool = False
    variances: tuple[float, float] = (0.1, 0.2)
    learnable: bool = False
    learn: LearnPriorsConfig = field(default_factory=LearnPriorsConfig)


@dataclass(frozen=True)
class MatcherConfig:
    iou_threshold: float = 0.5


@dataclass(frozen=True)
class LossConfig:
    neg_pos_ratio: float = 3.0
    loc_weight: float = 1.0


@dataclass(frozen=True)
class PostprocessConfig:
    score_threshold: float = 0.01
    nms_iou: float = 0.45
    top_k: int = 200  # per class, before NMS
    max_detections: int = 200  # per image, after NMS


@dataclass(frozen=True)
class TilingConfig:
    """Tiled training and sliced inference for small defects on large photos (off by default).

    The image is resized by `scale` and cut into `tile` x `tile` windows (in scaled pixels) that
    overlap their neighbours by at least `overlap` scaled pixels, spread evenly over the image;
    a side shorter than `tile` gives one window spanning it. Each window is warped to the
    network input like a whole image would be. Inference runs every window of an image as one
    batch (plus the whole image when `full_image`), maps the detections back to original pixels
    and merges them (`merge`: "seam" joins same-class pieces of one object cut by a window border,
    then batched NMS; "nms": batched NMS only). Training draws one random window per sample, placed
    around a random ground-truth box with probability `positive_fraction` (anywhere otherwise);
    boxes are clipped to the window and kept when at least `min_visibility` of what a window of
    that size could show of them is visible (see `ssd.data.tiling.visible_fraction`). The prior
    tools clip boxes to the inference windows with the same rule.
    """

    enabled: bool = False
    scale: float = 0.5
    tile: int = 512
    overlap: int = 64
    full_image: bool = False
    merge: Literal["seam", "nms"] = "seam"
    min_visibility: float = 0.5
    positive_fraction: float = 0.75


@dataclass(frozen=True)
class InputConfig:
    # ImageNet statistics of torchvision's VGG-16 weights, on [0, 1] RGB.
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    tiling: TilingConfig = field(default_factory=TilingConfig)


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how to read it. `classes` excludes background (label 0)."""

    format: Literal["voc", "coco", "labelme", "synthetic"] = "voc"
    root: str = "data/VOCdevkit/VOC2007"
    train_split: str = "ImageSets/Main/trainval.txt"
    val_split: str = "ImageSets/Main/test.txt"
    train_annotations: str = ""
    val_annotations: str = ""
    # coco: image folders (relative to `root`) that the JSON `file_name`s are relative to
    train_images: str = ""
    val_images: str = ""
    classes: tuple[str, ...] = VOC_CLASSES
    use_difficult: bool = False
    # Samples with fatal problems (see ssd.data.check): refuse the dataset (false) or skip them.
    skip_invalid: bool = False
    # Boxes reaching outside the image: clip them to it (a warning) or reject the sample (fatal).
    box_outside: Literal["clip", "reject"] = "clip"
    # Decode every image when a split is loaded (finds truncated files; slow) instead of
    # reading headers only.
    check_decode: bool = False
    num_workers: int = 2
    # CUDA runs: page-locked host batches copied with non_blocking=True (ignored without CUDA).
    pin_memory: bool = True
    # Keep loader worker processes alive between epochs/evaluations (when num_workers > 0).
    persistent_workers: bool = True
    # synthetic generator (format: synthetic): generated into `root` on first use
    synthetic_num_images: int = 200
    synthetic_size: tuple[int, int] = (2560, 1920)
    synthetic_seed: int = 0
    synthetic_val_fraction: float = 0.2


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    photometric: bool = True
    expand: bool = True
    expand_max_ratio: float = 4.0
    min_iou_crop: bool = True
    hflip: bool = True
    vflip: bool = False


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32
    max_iters: int = 120000
    lr: float = 1e-3
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    schedule: Literal["multistep", "cosine"] = "multistep"
    milestones: tuple[int, ...] = (80000, 100000)
    gamma: float = 0.1
    grad_clip: float | None = None
    # Mixed precision on CUDA (CPU runs train in fp32): auto = bf16 where the GPU has native bf16
    # (compute capability >= 8.0), else fp16 with gradient scaling; none = fp32. See ssd.inference.runtime.
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    # cuDNN autotuning of convolution algorithms (CUDA; input shapes are fixed in training).
    cudnn_benchmark: bool = True
    channels_last: bool = False
    # Data-parallel runs on CUDA: BatchNorm layers become SyncBatchNorm (statistics over the
    # global batch instead of each process's slice). Ignored in single-process runs.
    sync_bn: bool = False
    log_every: int = 20
    eval_every: int = 5000
    checkpoint_every: int = 5000
    max_bad_steps: int = 10
    # At the start of a run: the fit of the priors to the training boxes (grid recall@0.5, mean
    # grid IoU; ssd.priors.fit), logged and saved as prior_check.json; a warning with the
    # `priors optimize` command when the recall is below `prior_check_min_recall`.
    prior_check: bool = True
    prior_check_min_recall: float = 0.8
    # Fit the priors to the training boxes before training (coverage, kmeans = Chi et al.'s IoU
    # k-means, chi) and train with them; the fitted prior config is saved as priors.yaml.
    auto_priors: Literal["coverage", "kmeans", "chi"] | None = None
    # Exponential moving average of the weights (evaluated and used for inference when on);
    # decay ramps up as ema_decay * (1 - exp(-updates / ema_ramp)).
    ema: bool = False
    ema_decay: float = 0.9998
    ema_ramp: float = 2000.0


@dataclass(frozen=True)
class EvalConfig:
    metric: Literal["voc07", "area", "coco"] = "voc07"
    iou_threshold: float = 0.5
    batch_size: int = 8
    # detections at or above this score count in the confusion matrix (classes + background)
    confusion_score: float = 0.3


@dataclass(frozen=True)
class InferenceConfig:
    """Network precision and memory format of evaluation, prediction, `Detector` and benchmark.

    `precision` auto = bf16 on CUDA GPUs with native bf16, fp16 on other CUDA GPUs, fp32 on CPU;
    decode and NMS always run in fp32. See ssd.inference.runtime."""

    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    priors: PriorsConfig = field(default_factory=PriorsConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    input: InputConfig = field(default_factory=InputConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    seed: int = 0

    @property
    def num_classes(self) -> int:
        """C: number of classes including background."""
        return len(self.data.classes) + 1


# --------------------------------------------------------------------------- conversion

# Exponent notation that YAML 1.2 reads as a float but PyYAML (YAML 1.1) as a string: `1e-3`, `5E+4`.
_YAML12_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} does not match {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build_dataclass(tp, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # PyYAML follows YAML 1.1, where `1e-3` (no dot) is a string, not a float: accept it.
        if isinstance(value, str) and _YAML12_FLOAT.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - programming error


def _build_dataclass(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = [n for n in sorted(names) if n.startswith(str(k)[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown config key '{key}'{hint}")
        kwargs[k] = _convert(v, hints[k], key)
    return cls(**kwargs)


def merge_values(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `update` merged in, recursively for nested mappings (neither is modified)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge_values(out[k], v)
        else:
            out[k] = v
    return out


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (lists, not tuples) of a config dataclass."""
    out = _to_plain(cfg)
    assert isinstance(out, dict)
    return out


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Turn `["a.b=1", "c=[1,2]"]` into a nested dict; values are parsed as YAML."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {key}: cannot parse {raw!r}: {exc}") from exc
        node = tree
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: '{p}' is set to a value and a mapping")
        node[parts[-1]] = value
    return tree


def config_from_dict(values: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    """Build and validate a Config from a (partial) mapping plus `--set` style overrides."""
    merged = merge_values(values, parse_overrides(overrides))
    cfg = _build_dataclass(Config, merged)
    validate(cfg)
    assert isinstance(cfg, Config)
    return cfg


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (differences from the defaults) and apply `key.path=value` overrides.

    `path=None` gives the defaults (original SSD512 on VOC). Errors name the file and dotted key.
    """
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read config: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{p}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                "save the config as UTF-8"
            ) from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping, got {type(loaded).__name__}")
        values = loaded
    try:
        return config_from_dict(values, overrides)
    except ConfigError as exc:
        if path is None:
            raise
        raise ConfigError(f"{path}: {exc}") from exc


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the fully resolved config as YAML (loads back to an equal Config)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")


def replace(cfg: Any, **changes: Any) -> Any:
    """`dataclasses.replace` that accepts dotted keys: replace(cfg, **{"train.lr": 0.1})."""
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    for k, v in changes.items():
        head, _, rest = k.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = v
        else:
            direct[head] = v
    for head, sub in nested.items():
        direct[head] = replace(getattr(cfg, head), **sub)
    return dataclasses.replace(cfg, **direct)


# --------------------------------------------------------------------------- validation


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def validate(cfg: Config) -> None:
    """Cross-field checks; raises ConfigError naming the dotted key."""
    p = cfg.priors
    n = len(p.feature_maps)
    _check(n > 0, "priors.feature_maps", "needs at least one level")
    _check(p.image_size > 0, "priors.image_size", "must be positive")
    _check(all(f > 0 for f in p.feature_maps), "priors.feature_maps", "sizes must be positive")
    _check(len(p.steps) == n, "priors.steps", f"has {len(p.steps)} levels, feature_maps has {n}")
    _check(all(s > 0 for s in p.steps), "priors.steps", "must be positive")
    if p.shapes is None:
        _check(len(p.min_sizes) == n, "priors.min_sizes", f"has {len(p.min_sizes)} levels, expected {n}")
        _check(
            len(p.max_sizes) in (0, n),
            "priors.max_sizes",
            f"has {len(p.max_sizes)} levels, expected {n} (or none)",
        )
        _check(
            len(p.aspect_ratios) == n,
            "priors.aspect_ratios",
            f"has {len(p.aspect_ratios)} levels, expected {n}",
        )
        _check(all(s > 0 for s in p.min_sizes), "priors.min_sizes", "must be positive")
        for i, (lo, hi) in enumerate(zip(p.min_sizes, p.max_sizes)):
            _check(hi > lo, f"priors.max_sizes[{i}]", f"{hi} must exceed min_sizes[{i}]={lo}")
        for i, ratios in enumerate(p.aspect_ratios):
            for j, r in enumerate(ratios):
                _check(r > 0 and r != 1, f"priors.aspect_ratios[{i}][{j}]", "must be > 0 and != 1")
    else:
        for i, level in enumerate(p.shapes):
            _check(len(level) > 0, f"priors.shapes[{i}]", "every level needs at least one shape")
            for j, entry in enumerate(level):
                key, shown = f"priors.shapes[{i}][{j}]", list(entry)
                _check(
                    len(entry) in (2, 4),
                    key,
                    f"{shown}: expected [w, h] or [w, h, dx, dy], got {len(entry)} numbers",
                )
                _check(entry[0] > 0 and entry[1] > 0, key, f"{shown}: w and h must be positive")
                _check(
                    all(-0.5 < d < 0.5 for d in entry[2:]),
                    key,
                    f"{shown}: offsets dx, dy (units of the level's step) must be in (-0.5, 0.5)",
                )
        _check(len(p.shapes) == n, "priors.shapes", f"has {len(p.shapes)} levels, expected {n}")
    _check(all(v > 0 for v in p.variances), "priors.variances", "must be positive")
    lp = p.learn
    _check(lp.lr_mult >= 0, "priors.learn.lr_mult", "must be >= 0")
    _check(lp.warmup_iters >= 0, "priors.learn.warmup_iters", "must be >= 0")
    _check(lp.temperature_start > 0, "priors.learn.temperature_start", "must be > 0")
    _check(lp.clustering_weight_start >= 0, "priors.learn.clustering_weight_start", "must be >= 0")
    _check(0 < cfg.matcher.iou_threshold < 1, "matcher.iou_threshold", "must be in (0, 1)")
    _check(cfg.loss.neg_pos_ratio >= 0, "loss.neg_pos_ratio", "must be >= 0")
    _check(cfg.loss.loc_weight >= 0, "loss.loc_weight", "must be >= 0")
    pp = cfg.postprocess
    _check(0 <= pp.score_threshold < 1, "postprocess.score_threshold", "must be in [0, 1)")
    _check(0 < pp.nms_iou < 1, "postprocess.nms_iou", "must be in (0, 1)")
    _check(pp.top_k > 0, "postprocess.top_k", "must be positive")
    _check(pp.max_detections > 0, "postprocess.max_detections", "must be positive")
    _check(cfg.model.width_mult > 0, "model.width_mult", "must be positive")
    _check(all(s > 0 for s in cfg.input.std), "input.std", "must be positive")
    tl = cfg.input.tiling
    _check(tl.scale > 0, "input.tiling.scale", "must be positive")
    _check(tl.tile > 0, "input.tiling.tile", "must be positive")
    _check(0 <= tl.overlap < tl.tile, "input.tiling.overlap", f"must be in [0, tile={tl.tile})")
    _check(0 < tl.min_visibility <= 1, "input.tiling.min_visibility", "must be in (0, 1]")
    _check(0 <= tl.positive_fraction <= 1, "input.tiling.positive_fraction", "must be in [0, 1]")
    d = cfg.data
    _check(len(d.classes) > 0, "data.classes", "needs at least one class")
    _check(len(set(d.classes)) == len(d.classes), "data.classes", "has duplicates")
    _check("background" not in d.classes, "data.classes", "must not list 'background' (label 0)")
    _check(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    _check(0 <= d.synthetic_val_fraction < 1, "data.synthetic_val_fraction", "must be in [0, 1)")
    _check(d.synthetic_num_images > 0, "data.synthetic_num_images", "must be positive")
    _check(cfg.augment.expand_max_ratio >= 1, "augment.expand_max_ratio", "must be >= 1")
    t = cfg.train
    _check(t.batch_size > 0, "train.batch_size", "must be positive")
    _check(t.max_iters > 0, "train.max_iters", "must be positive")
    _check(t.lr > 0, "train.lr", "must be positive")
    _check(0 <= t.momentum < 1, "train.momentum", "must be in [0, 1)")
    _check(t.warmup_iters >= 0, "train.warmup_iters", "must be >= 0")
    _check(0 < t.warmup_factor <= 1, "train.warmup_factor", "must be in (0, 1]")
    _check(list(t.milestones) == sorted(t.milestones), "train.milestones", "must be increasing")
    _check(t.grad_clip is None or t.grad_clip > 0, "train.grad_clip", "must be positive")
    _check(t.log_every > 0, "train.log_every", "must be positive")
    _check(t.eval_every > 0, "train.eval_every", "must be positive")
    _check(t.checkpoint_every > 0, "train.checkpoint_every", "must be positive")
    _check(t.max_bad_steps > 0, "train.max_bad_steps", "must be positive")
    _check(0 <= t.prior_check_min_recall <= 1, "train.prior_check_min_recall", "must be in [0, 1]")
    _check(0 < t.ema_decay < 1, "train.ema_decay", "must be in (0, 1)")
    _check(t.ema_ramp > 0, "train.ema_ramp", "must be positive")
    _check(0 < cfg.eval.iou_threshold < 1, "eval.iou_threshold", "must be in (0, 1)")
    _check(cfg.eval.batch_size > 0, "eval.batch_size", "must be positive")
    _check(0 <= cfg.eval.confusion_score <= 1, "eval.confusion_score", "must be in [0, 1]")
