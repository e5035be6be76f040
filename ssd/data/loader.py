"""Records -> images -> batches: dataset, collate, the resumable train sampler and the loaders.

Reproducibility: the training stream is a pure function of (seed, iteration). `TrainBatchSampler`
yields `(index, item_seed)` keys; `DetectionDataset` runs the augmentation of such an item under
`torch.manual_seed(item_seed)` inside a forked RNG, so the same iteration gives the same batch
whether the run started at 0 or resumed at that iteration, and whatever the number of workers.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ssd.config import Config, ConfigError
from ssd.data.check import check_split, summarize, usable_records
from ssd.data.image import read_image
from ssd.data.records import DatasetError, Record
from ssd.data.tiling import TiledTransform, Tiling
from ssd.data.transforms import build_transforms
from ssd.structures import Batch, Targets

log = logging.getLogger(__name__)

Split = Literal["train", "val"]
Transform = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]

_SEED_MASK = (1 << 63) - 1


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence hashing: platform independent)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint64)
    return int((int(state[0]) << 32 ^ int(state[1])) & _SEED_MASK)


# --------------------------------------------------------------------------- records


def build_records(
    cfg: Config,
    split: Split | str,
    *,
    open_images: bool = False,
    left_out: list[DatasetError] | None = None,
) -> list[Record]:
    """The annotation records of `split` ("train" or "val") of the configured dataset, checked
    and cleaned by `ssd.data.check.usable_records`.

    `data.root` is resolved against the current directory; split and annotation paths against
    `data.root` (absolute paths are kept). Per `data.format`:
    voc: `root`, split file `train_split`/`val_split` (stems); coco: JSON `train_annotations`/
    `val_annotations`, images under `root / train_images|val_images`; labelme: split file of image
    paths; synthetic: generated into `root` on first use (when `root/train.txt` is missing), then
    read as labelme with `train.txt`/`val.txt`.

    Every annotation is checked (and with `open_images` every image header, or every pixel
    with `data.check_decode`; otherwise no image is opened unless an annotation lacks the size):
    a split with fatal problems raises a DatasetError listing them, unless `data.skip_invalid`
    (the bad samples are then left out, logged, and appended to `left_out` as DatasetErrors when
    a list is given); boxes are clipped to the image
    (`data.box_outside: clip`) and exact duplicate boxes removed. Raises DatasetError when no
    usable sample is left.
    """
    if split not in ("train", "val"):
        raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
    if cfg.data.format == "synthetic":
        ensure_synthetic(cfg)
    return usable_records(cfg, split, images=open_images, left_out=left_out)


def ensure_synthetic(cfg: Config) -> None:
    """Generate the synthetic dataset into `data.root` unless `data.root/train.txt` exists; an
    existing one must have been generated with the configured parameters."""
    from ssd.data.synthetic import SUMMARY_FILE, generate_dataset

    d = cfg.data
    root = Path(d.root)
    wanted = {
        "num_images": d.synthetic_num_images,
        "size": list(d.synthetic_size),
        "seed": d.synthetic_seed,
        "val_fraction": d.synthetic_val_fraction,
    }
    if (root / "train.txt").is_file():
        summary_path = root / SUMMARY_FILE
        if summary_path.is_file():
            import json

            try:
                summary = json.loads(summary_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise DatasetError(summary_path, f"cannot read: {exc}") from exc
            have = {k: summary.get(k) for k in wanted}
            if have != wanted:
                raise DatasetError(
                    summary_path,
                    f"generated with {have} but the config asks for {wanted} "
                    "(delete the folder to regenerate, or change data.root)",
                )
        return
    log.info("generating %d synthetic images into %s", d.synthetic_num_images, root)
    generate_dataset(
        root, d.synthetic_num_images, d.synthetic_size, d.synthetic_seed, d.synthetic_val_fraction
    )


# --------------------------------------------------------------------------- dataset


@dataclass
class Sample:
    """One transformed image: `image` float [3, S, S] normalised, `boxes` [G, 4] xyxy relative
    [0, 1] to the network input, `labels` [G] int64 in 1..C-1, `difficult` [G] bool, `image_id`,
    `orig_size` (height, width) of the original image in pixels; `skipped` the errors of
    unusable samples this one replaced (training with `data.skip_invalid`)."""

    image: Tensor
    boxes: Tensor
    labels: Tensor
    difficult: Tensor
    image_id: str
    orig_size: tuple[int, int]
    skipped: list[DatasetError] = field(default_factory=list)


def load_image(path: Path) -> Tensor:
    """Decode an image file to uint8 RGB [3, H, W] (`ssd.data.image.read_image`: EXIF
    orientation applied, 16-bit scaled to 8, grey/palette/CMYK to RGB). Raises DatasetError
    naming the file when it is missing, unreadable, truncated, corrupt or too large."""
    return read_image(path)


@dataclass
class LoadFailure:
    """A sample whose image could not be used, returned by `DetectionDataset` (with
    `return_failures`) instead of raised: it reaches the main process intact through any number
    of DataLoader workers (a raised error would arrive as a RuntimeError wrapping a traceback).
    `skipped`: left out under `data.skip_invalid`; otherwise the batch is unusable."""

    error: DatasetError
    skipped: bool


class DetectionDataset(Dataset[Sample | LoadFailure]):
    """Images + annotations of `records`, transformed by `transform` (see
    `ssd.data.transforms.DetectionTransform`).

    `dataset[i]` augments with the item seed `derive_seed(seed, i)` (a fixed augmentation per
    index); `dataset[(i, item_seed)]` with `item_seed`: the random draws of the transform are a
    pure function of it (torch's global RNG is forked, seeded, and restored afterwards).
    The decoded image must have the size the annotation states (DatasetError otherwise).

    An image that turns out unusable only when it is decoded (a truncated file whose header was
    fine) raises the DatasetError naming the file, or with `return_failures` is returned as a
    `LoadFailure` (what the loaders use; `collate` puts it into the batch). `skip_invalid`: the
    failure is a skipped sample (logged); with `replace_invalid` too (training) the sample is
    replaced by the next record (index + 1, + 2, ...) with the same item seed, so the stream
    stays a pure function of (seed, iteration), and the replaced samples' errors travel in
    `Sample.skipped`. An evaluation pass does not replace: it must see every image once.
    """

    max_replacements = 16

    def __init__(
        self,
        records: Sequence[Record],
        transform: Transform,
        seed: int = 0,
        skip_invalid: bool = False,
        *,
        replace_invalid: bool = True,
        return_failures: bool = False,
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.seed = seed
        self.skip_invalid = skip_invalid
        self.replace_invalid = replace_invalid
        self.return_failures = return_failures
        # samples left out before this dataset was built (build_eval_loader), for reporting
        self.left_out: list[DatasetError] = []

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> Sample | LoadFailure:
        if isinstance(key, tuple):
            index, item_seed = int(key[0]), int(key[1])
        else:
            index = int(key)
            item_seed = derive_seed(self.seed, index)
        try:
            return self._get(index, item_seed)
        except DatasetError as exc:
            if not self.return_failures:
                raise
            return LoadFailure(exc, skipped=self.skip_invalid and not self.replace_invalid)

    def _get(self, index: int, item_seed: int) -> Sample:
        if not self.skip_invalid:
            return self._load(self.records[index], item_seed)
        if not self.replace_invalid:
            try:
                return self._load(self.records[index], item_seed)
            except DatasetError as exc:
                log.warning("%s; sample %r skipped (data.skip_invalid)", exc, self.records[index].image_id)
                raise
        tries = min(self.max_replacements, len(self.records))
        skipped: list[DatasetError] = []
        for attempt in range(tries):
            rec = self.records[(index + attempt) % len(self.records)]
            try:
                sample = self._load(rec, item_seed)
            except DatasetError as exc:
                log.warning("%s; sample %r skipped (data.skip_invalid)", exc, rec.image_id)
                skipped.append(_with_sample(exc, rec))
                continue
            sample.skipped = skipped
            return sample
        raise DatasetError(
            self.records[index].image_path,
            f"this sample and the {tries - 1} after it are all unusable; run ssd-check-dataset --decode",
            kind="unreadable_image",
            image_id=self.records[index].image_id,
        )

    def _load(self, rec: Record, item_seed: int) -> Sample:
        try:
            image = load_image(rec.image_path)
        except DatasetError as exc:
            raise _with_sample(exc, rec) from exc
        h, w = int(image.shape[-2]), int(image.shape[-1])
        if (rec.width, rec.height) != (w, h) and rec.width > 0:
            raise DatasetError(
                rec.annotation_path or rec.image_path,
                f"annotation says {rec.width}x{rec.height} but {rec.image_path} is {w}x{h}",
                kind="size_mismatch",
                image_id=rec.image_id,
            )
        boxes = torch.from_numpy(np.asarray(rec.boxes_px, np.float32)).reshape(-1, 4)
        labels = torch.from_numpy(np.asarray(rec.labels, np.int64)).reshape(-1)
        difficult = torch.from_numpy(np.asarray(rec.difficult, bool)).reshape(-1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            img, boxes_rel, labels, difficult = self.transform(image, boxes, labels, difficult)
        return Sample(img, boxes_rel, labels, difficult, rec.image_id, (h, w))


def _with_sample(exc: DatasetError, rec: Record) -> DatasetError:
    if exc.image_id is None:
        exc.image_id = rec.image_id
    return exc


def collate(samples: Sequence[Sample | LoadFailure], use_difficult: bool = False) -> Batch:
    """Stack samples into a `Batch`: images [B, 3, S, S], targets per image (boxes xyxy
    relative, labels; difficult boxes dropped unless `use_difficult`), image ids and
    `orig_sizes` [B, 2] float32 (height, width). `LoadFailure`s are left out of the stacked
    tensors and listed in `Batch.skipped` or `Batch.errors`, with the errors of the samples a
    training sample replaced (`Sample.skipped`)."""
    good = [s for s in samples if isinstance(s, Sample)]
    failures = [s for s in samples if isinstance(s, LoadFailure)]
    boxes, labels = [], []
    for s in good:
        keep = torch.ones_like(s.difficult) if use_difficult else ~s.difficult
        boxes.append(s.boxes[keep].to(torch.float32))
        labels.append(s.labels[keep].to(torch.int64))
    skipped: list[Exception] = [e for s in good for e in s.skipped]
    skipped += [f.error for f in failures if f.skipped]
    if good:
        images = torch.stack([s.image for s in good])
    else:  # every image of the batch failed
        images = torch.zeros(0, 3, 1, 1)
    return Batch(
        images=images,
        targets=Targets(boxes, labels),
        image_ids=[s.image_id for s in good],
        orig_sizes=torch.tensor([s.orig_size for s in good], dtype=torch.float32).reshape(-1, 2),
        skipped=skipped,
        errors=[f.error for f in failures if not f.skipped],
    )


def checked(batches: Iterable[Batch]) -> Iterator[Batch]:
    """The batches of a loader, raising the first error a batch carries (`Batch.errors`: an
    image that could not be read, without `data.skip_invalid`) as the DatasetError naming the
    file, in the main process."""
    for batch in batches:
        if batch.errors:
            raise batch.errors[0]
        yield batch


# --------------------------------------------------------------------------- sampling


class TrainBatchSampler:
    """Infinite, resumable batches of `(index, item_seed)` keys.

    Epoch e is `torch.randperm(length)` from a generator seeded with derive_seed(seed, 0, e);
    epochs are concatenated into one stream of positions and iteration i takes positions
    [i * B, (i + 1) * B) (a batch may straddle two epochs). The item seed of position p is
    derive_seed(seed, 1, p). So iteration i's batch depends only on (seed, i), and
    `start_iteration` resumes exactly.

    Data-parallel training: `batch_size` B is the *global* batch; process `rank` of
    `world_size` yields the `rank`-th of `world_size` equal contiguous slices of it (B must be
    divisible by `world_size`), so the union over ranks of iteration i's keys, in rank order, is
    exactly the single-process batch of iteration i.
    """

    def __init__(
        self,
        length: int,
        batch_size: int,
        seed: int,
        start_iteration: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if length <= 0:
            raise ValueError(f"cannot sample from an empty dataset (length {length})")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if start_iteration < 0:
            raise ValueError(f"start_iteration must be >= 0, got {start_iteration}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if batch_size % world_size:
            raise ValueError(f"global batch_size {batch_size} is not divisible by world_size {world_size}")
        self.length = length
        self.batch_size = batch_size
        self.seed = seed
        self.start_iteration = start_iteration
        self.rank = rank
        self.world_size = world_size
        self._epoch = -1
        self._perm: list[int] = []

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, 0, epoch))
            self._perm = torch.randperm(self.length, generator=g).tolist()
            self._epoch = epoch
        return self._perm

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        """This rank's keys of `iteration` (a pure function of seed, iteration, rank and
        world_size): B / world_size keys."""
        per_rank = self.batch_size // self.world_size
        first = iteration * self.batch_size + self.rank * per_rank
        out = []
        for pos in range(first, first + per_rank):
            epoch, offset = divmod(pos, self.length)
            out.append((self._permutation(epoch)[offset], derive_seed(self.seed, 1, pos)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        iteration = self.start_iteration
        while True:
            yield self.batch(iteration)
            iteration += 1


# --------------------------------------------------------------------------- loaders


def _loader_kwargs(cfg: Config) -> dict[str, Any]:
    nw = cfg.data.num_workers
    return {
        "num_workers": nw,
        "pin_memory": cfg.data.pin_memory and torch.cuda.is_available(),
        "persistent_workers": cfg.data.persistent_workers and nw > 0,
        "collate_fn": functools.partial(collate, use_difficult=cfg.data.use_difficult),
    }


def build_train_loader(
    cfg: Config, start_iteration: int = 0, rank: int = 0, world_size: int = 1
) -> DataLoader[Sample | LoadFailure]:
    """Infinite training loader (augmentation on), batches of `train.batch_size` starting at
    iteration `start_iteration` (see `TrainBatchSampler`). Yields `Batch`es.

    Data-parallel: `train.batch_size` is per process; process `rank` of `world_size` gets its
    slice of the global stream of batch `train.batch_size * world_size`.

    An image that does not decode is replaced with `data.skip_invalid` (its error listed in
    `Batch.skipped`), otherwise its error is in `Batch.errors` (iterate through `checked`)."""
    records = build_records(cfg, "train", open_images=True)
    _refuse_bad_val(cfg)
    transform: Transform = build_transforms(
        cfg.augment, cfg.priors.image_size, cfg.input.mean, cfg.input.std, train=True
    )
    if cfg.input.tiling.enabled:  # one sampled window per sample (ssd.data.tiling)
        transform = TiledTransform(transform, Tiling.from_config(cfg.input.tiling))
    dataset = DetectionDataset(
        records, transform, seed=cfg.seed, skip_invalid=cfg.data.skip_invalid, return_failures=True
    )
    sampler = TrainBatchSampler(
        len(dataset), cfg.train.batch_size * world_size, cfg.seed, start_iteration, rank, world_size
    )
    return DataLoader(dataset, batch_sampler=sampler, **_loader_kwargs(cfg))


def _refuse_bad_val(cfg: Config) -> None:
    """Fatal problems of the val split fail the run now, not at its first evaluation (unless
    `data.skip_invalid`: evaluation then skips those samples)."""
    if cfg.data.skip_invalid:
        return
    scan = check_split(cfg, "val", decode=cfg.data.check_decode)
    if scan.fatal:
        raise DatasetError(
            cfg.data.root,
            f"the val split (evaluated during training) has {len(scan.fatal)} fatal problem(s) in "
            f"{len(scan.bad_samples)} of {len(scan.samples)} samples; fix them, or set data.skip_invalid: "
            f"true:\n{summarize(scan.problems)}",
            kind=scan.fatal[0].kind,
        )


def build_eval_loader(cfg: Config, split: Split | str = "val", *, raw: bool = False) -> DataLoader[Any]:
    """One ordered pass over `split` (resize only), batches of `eval.batch_size`. Yields
    `Batch`es; with `raw` (sliced inference) the samples are the whole uint8 images with their
    boxes, unresized, and a batch is the plain list of its samples. `loader.dataset.records`
    are the records in loader order (with `data.skip_invalid`, samples whose annotation or
    image header is unusable are left out and listed in `loader.dataset.left_out`, a
    DatasetError each).

    An image that does not decode (a truncated file whose header was fine) is not replaced:
    with `data.skip_invalid` it is left out of its batch and listed in `Batch.skipped`,
    otherwise its error is in `Batch.errors` (iterate through `checked` to raise it)."""
    left_out: list[DatasetError] = []
    records = build_records(cfg, split, open_images=True, left_out=left_out)
    transform: Transform = (
        _raw
        if raw
        else build_transforms(cfg.augment, cfg.priors.image_size, cfg.input.mean, cfg.input.std, train=False)
    )
    dataset = DetectionDataset(
        records,
        transform,
        seed=cfg.seed,
        skip_invalid=cfg.data.skip_invalid,
        replace_invalid=False,
        return_failures=True,
    )
    dataset.left_out = left_out
    kwargs = _loader_kwargs(cfg)
    if raw:  # whole images of different sizes: the batch stays a list
        kwargs = {"num_workers": cfg.data.num_workers, "collate_fn": _as_list}
    return DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False, **kwargs)


def _raw(
    image: Tensor, boxes: Tensor, labels: Tensor, difficult: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return image, boxes, labels, difficult


def _as_list(samples: list[Any]) -> list[Any]:
    return samples
