"""Dataset checks: every problem of every file, classified, with the file named.

`check_dataset(cfg)` scans the configured dataset (the CLI `ssd-check-dataset`); the data
pipeline calls `usable_records(cfg, split)` (through `ssd.data.loader.build_records`, with the
image headers when a loader is built), which refuses a split with fatal problems, or with
`data.skip_invalid: true` drops the bad samples and logs which, and cleans the rest (boxes
clipped to the image, duplicate boxes removed).

A problem has a `kind` (the keys of `KINDS`), a severity and the file at fault:
* fatal: the sample cannot be used (training refuses it, or skips it with `data.skip_invalid`);
* warning: the sample is used after a fix (box clipped, duplicate removed) or as it is, but
  the data is probably not what its author meant (an annotation without boxes);
* info: a harmless quirk the readers handle (NEU-DET: `<filename>` without ".jpg", `<depth>` 1
  on RGB files).

How it finds *all* problems: the readers run in collecting mode (a `problems` list: per-file
and per-object problems are appended instead of raised), then annotation-level checks run on
the parsed records (boxes: non-finite, non-positive size, outside the image, duplicated; no box
at all), then image-level checks (header: missing, unreadable or too large, size (after the EXIF
orientation) and channels against the annotation, EXIF orientation, more than 8 bits per
sample; with `decode` every image is fully decoded by the training reader
`ssd.data.image.read_image`, which finds truncated files).

Boxes are xyxy in pixels of the original image (`Record.boxes_px`); a box is inside the image
when 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ssd.config import Config, ConfigError
from ssd.data.coco import read_coco_records
from ssd.data.image import probe_image
from ssd.data.labelme import read_labelme_records
from ssd.data.records import IMAGE_EXTENSIONS, DatasetError, Record
from ssd.data.voc import ANNOTATION_DIRS, IMAGE_DIRS, read_voc_records

log = logging.getLogger(__name__)

Severity = Literal["fatal", "warning", "info"]
BoxOutside = Literal["clip", "reject"]
ProgressFn = Callable[[str, int, int], None]  # (split, images done, images in all)

SEVERITIES: tuple[Severity, ...] = ("fatal", "warning", "info")

# kind -> (default severity, what it means). `box_outside` is fatal under `data.box_outside:
# reject`, or when clipping leaves nothing of the box.
KINDS: dict[str, tuple[Severity, str]] = {
    "layout": ("fatal", "dataset, annotation or image folder, or split file, missing or unreadable"),
    "missing_annotation": ("fatal", "a sample listed in the split has no annotation file"),
    "missing_image": ("fatal", "an annotation whose image file does not exist"),
    "unannotated_image": ("warning", "an image file that no annotation refers to (VOC/COCO; not used)"),
    "unreadable_image": ("fatal", "an image whose header cannot be read, or (--decode) that does not decode"),
    "malformed_annotation": (
        "fatal",
        "XML/JSON that does not parse, or a missing, mistyped or non-finite field",
    ),
    "unknown_class": ("fatal", "a class label that is not in data.classes"),
    "degenerate_box": ("fatal", "a box with non-positive width or height"),
    "box_outside": (
        "warning",
        "a box reaching outside the image: clipped (data.box_outside: clip) or rejected",
    ),
    "duplicate_box": ("warning", "the same box (label and coordinates) more than once: deduplicated"),
    "size_mismatch": ("fatal", "the image size the annotation states differs from the image file's"),
    "empty_annotation": ("warning", "an annotation without any box (used as a background-only image)"),
    "filename_mismatch": ("warning", "VOC <filename> names another file than the image paired by stem"),
    "filename_without_extension": ("info", "VOC <filename> is the paired image's name without extension"),
    "channel_mismatch": ("info", "VOC <depth> differs from the image's channels (images are read as RGB)"),
    "exif_orientation": (
        "warning",
        "an image with an EXIF orientation: read rotated/flipped as viewers show it; boxes and the stated "
        "size must refer to that view",
    ),
    "high_bit_depth": ("info", "more than 8 bits per sample (e.g. a 16-bit PNG): scaled to 8 bit when read"),
}


@dataclass(frozen=True)
class Problem:
    """One problem: `kind` (a key of `KINDS`), `severity`, the `file` at fault, a `detail`
    naming the field or box, the `split` it was found in (None: dataset level) and the
    `sample` (image id) it affects (None: not tied to one sample)."""

    kind: str
    severity: Severity
    file: str
    detail: str
    split: str | None = None
    sample: str | None = None

    def __str__(self) -> str:
        return f"{self.severity} {self.kind}: {self.file}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "file": self.file,
            "detail": self.detail,
            "split": self.split,
            "sample": self.sample,
        }


def _problem(
    kind: str,
    file: str | Path,
    detail: str,
    split: str | None,
    sample: str | None,
    severity: Severity | None = None,
) -> Problem:
    if kind not in KINDS:  # pragma: no cover - programming error
        raise ValueError(f"unknown problem kind {kind!r}")
    return Problem(kind, severity or KINDS[kind][0], str(file), detail, split, sample)


def _from_error(exc: DatasetError, split: str | None) -> Problem:
    kind = exc.kind if exc.kind in KINDS else "malformed_annotation"
    return _problem(kind, exc.path, exc.detail, split, exc.image_id)


@dataclass
class SplitCheck:
    """The result of checking one split: the `records` as parsed (before clean-up: boxes not
    clipped, duplicates kept; samples whose file did not parse are missing) and the problems."""

    split: str
    records: list[Record]
    problems: list[Problem]

    @property
    def samples(self) -> list[str]:
        """Ids of every sample the split lists (parsed or not), in first-seen order."""
        ids = dict.fromkeys(r.image_id for r in self.records)
        ids.update(dict.fromkeys(p.sample for p in self.problems if p.sample is not None))
        return list(ids)

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "fatal"]

    @property
    def bad_samples(self) -> list[str]:
        """Ids of the samples with a fatal problem (sorted)."""
        return sorted({p.sample for p in self.fatal if p.sample is not None})


@dataclass
class CheckReport:
    """Problems of the checked splits plus dataset-level ones (split None), with per-split
    sample counts (`num_samples`) and unusable sample ids (`bad_samples`)."""

    problems: list[Problem] = field(default_factory=list)
    num_samples: dict[str, int] = field(default_factory=dict)
    bad_samples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "fatal"]

    @property
    def ok(self) -> bool:
        """True when nothing is fatal."""
        return not self.fatal

    def counts(self) -> dict[str, dict[str, int]]:
        """kind -> severity -> number of problems (kinds in `KINDS` order)."""
        c = Counter((p.kind, p.severity) for p in self.problems)
        out: dict[str, dict[str, int]] = {}
        for kind in KINDS:
            per: dict[str, int] = {sev: c[(kind, sev)] for sev in SEVERITIES if c[(kind, sev)]}
            if per:
                out[kind] = per
        return out

    def summary(self, max_problems: int = 10) -> str:
        return summarize(self.problems, max_problems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "num_samples": dict(self.num_samples),
            "bad_samples": {k: list(v) for k, v in self.bad_samples.items()},
            "counts": self.counts(),
            "problems": [p.to_dict() for p in self.problems],
        }


def summarize(problems: Sequence[Problem], max_problems: int = 10) -> str:
    """Counts per severity and kind, then the first `max_problems` problems, fatal first."""
    if not problems:
        return "no problems"
    by_sev = Counter(p.severity for p in problems)
    by_kind = Counter((p.severity, p.kind) for p in problems)
    head = ", ".join(f"{by_sev[s]} {s}" for s in SEVERITIES if by_sev[s])
    kinds = ", ".join(
        f"{n} {k}" for (s, k), n in sorted(by_kind.items(), key=lambda x: SEVERITIES.index(x[0][0]))
    )
    order = sorted(problems, key=lambda p: SEVERITIES.index(p.severity))
    lines = [f"{head} ({kinds})"]
    lines += [f"  {p}" for p in order[:max_problems]]
    if len(order) > max_problems:
        lines.append(f"  ... and {len(order) - max_problems} more")
    return "\n".join(lines)


# --------------------------------------------------------------------------- reading


def _resolve(root: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else root / p


ANNOTATION_FORMATS: tuple[str, ...] = ("voc", "coco", "labelme")


def read_annotations(
    fmt: str,
    path: Path,
    classes: Sequence[str],
    *,
    split_file: Path | None = None,
    image_root: Path | None = None,
    check_images: bool = True,
    problems: list[DatasetError] | None = None,
) -> list[Record]:
    """The records of an annotation set in `fmt` (one of `ANNOTATION_FORMATS`): voc and labelme
    read the dataset folder `path` (with an optional `split_file`: stems or image paths); coco
    reads the JSON file `path`, images under `image_root` (default: the JSON's folder)."""
    if fmt == "voc":
        return read_voc_records(path, split_file, classes, check_images=check_images, problems=problems)
    if fmt == "labelme":
        return read_labelme_records(path, split_file, classes, check_images=check_images, problems=problems)
    if fmt == "coco":
        root = path.parent if image_root is None else image_root
        return read_coco_records(path, root, classes, check_images=check_images, problems=problems)
    raise ConfigError(f"annotation format must be one of {', '.join(ANNOTATION_FORMATS)}, got {fmt!r}")


def read_split(cfg: Config, split: str, problems: list[DatasetError]) -> list[Record]:
    """The records of `split` ("train"/"val") of the configured dataset, with the readers in
    collecting mode (per-file problems appended to `problems`). Paths as in
    `ssd.data.loader.build_records`; the synthetic dataset is read, not generated. Raises
    DatasetError for problems that make the whole split unreadable (missing folder or split
    file, a COCO file that does not parse) and ConfigError for a missing setting."""
    if split not in ("train", "val"):
        raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
    d = cfg.data
    root = Path(d.root)
    if d.format in ("voc", "labelme"):
        split_name = d.train_split if split == "train" else d.val_split
        split_file = _resolve(root, split_name) if split_name else None
        return read_annotations(d.format, root, d.classes, split_file=split_file, problems=problems)
    if d.format == "coco":
        ann = d.train_annotations if split == "train" else d.val_annotations
        if not ann:
            raise ConfigError(f"data.{split}_annotations: required for data.format 'coco'")
        images = d.train_images if split == "train" else d.val_images
        return read_annotations(
            "coco", _resolve(root, ann), d.classes, image_root=_resolve(root, images), problems=problems
        )
    if d.format == "synthetic":
        split_file = root / f"{split}.txt"
        return read_annotations("labelme", root, d.classes, split_file=split_file, problems=problems)
    raise ConfigError(f"data.format: unknown format {d.format!r}")  # pragma: no cover


# --------------------------------------------------------------------------- record checks


def _fmt_box(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"


def check_record(
    rec: Record,
    classes: Sequence[str],
    box_outside: BoxOutside = "clip",
    split: str | None = None,
    objects_left_out: bool = False,
) -> list[Problem]:
    """Annotation-level problems of one record (no file is opened): non-finite coordinates,
    non-positive size, outside the image (clipped or rejected per `box_outside`), duplicates
    (same label and coordinates) and no box at all (an annotation file without boxes, unless
    `objects_left_out`: its objects were reported as unusable already)."""
    file = rec.annotation_path or rec.image_path
    out: list[Problem] = []

    def add(kind: str, detail: str, severity: Severity | None = None) -> None:
        out.append(_problem(kind, file, detail, split, rec.image_id, severity))

    def name(i: int) -> str:
        label = int(rec.labels[i])
        cls = classes[label - 1] if 1 <= label <= len(classes) else f"label {label}"
        return f"box {i} ({cls}) {_fmt_box(rec.boxes_px[i])}"

    boxes = np.asarray(rec.boxes_px, np.float64).reshape(-1, 4)
    if boxes.shape[0] == 0:
        if rec.annotation_path is not None and not objects_left_out:
            add("empty_annotation", "no boxes (a background-only image)")
        return out
    w, h = rec.width, rec.height
    seen: dict[tuple[int, tuple[float, ...]], int] = {}
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if not np.isfinite(boxes[i]).all():
            add("malformed_annotation", f"{name(i)}: coordinates out of range")
            continue
        if x2 <= x1 or y2 <= y1:
            add("degenerate_box", f"{name(i)} (xyxy px): width {x2 - x1:g}, height {y2 - y1:g}: not positive")
            continue
        if w > 0 and h > 0 and (x1 < 0 or y1 < 0 or x2 > w or y2 > h):
            cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
            where = f"{name(i)} (xyxy px) reaches outside the {w}x{h} image"
            if cx2 <= cx1 or cy2 <= cy1:
                add("box_outside", f"{where}: entirely outside", "fatal")
                continue
            if box_outside == "reject":
                add("box_outside", f"{where} (data.box_outside: reject)", "fatal")
            else:
                add("box_outside", f"{where}: clipped to {_fmt_box(np.array([cx1, cy1, cx2, cy2]))}")
        key = (int(rec.labels[i]), (float(x1), float(y1), float(x2), float(y2)))
        if key in seen:
            add("duplicate_box", f"{name(i)} duplicates box {seen[key]}: removed")
        else:
            seen[key] = i
    return out


def check_image(rec: Record, decode: bool = False, split: str | None = None) -> list[Problem]:
    """Image-level problems of one record: missing or unreadable file (not decoding with
    `decode`; too large for PIL's decompression-bomb guard), size differing from the
    annotation's (compared with the size after the EXIF orientation), `<depth>` differing from
    the channels, an EXIF orientation (applied when read), more than 8 bits per sample."""
    try:
        info = probe_image(rec.image_path, decode)
    except DatasetError as exc:
        return [_problem(exc.kind, exc.path, exc.detail, split, rec.image_id)]
    out = []
    file = rec.annotation_path or rec.image_path
    name = rec.image_path.name
    width, height = info.width, info.height
    if rec.width > 0 and (rec.width, rec.height) != (width, height):
        detail = f"annotation says {rec.width}x{rec.height} but {name} is {width}x{height}"
        if info.orientation != 1:
            detail += f" as read (EXIF orientation {info.orientation}, {info.orientation_name}, applied)"
            if (rec.width, rec.height) == info.stored_size:
                detail += "; the annotation gives the stored size: were the boxes drawn on the stored pixels?"
        out.append(_problem("size_mismatch", file, detail, split, rec.image_id))
    if rec.depth is not None and rec.depth != info.channels:
        detail = f"<depth> {rec.depth} but {name} has {info.channels} channels (read as RGB)"
        out.append(_problem("channel_mismatch", file, detail, split, rec.image_id))
    if info.orientation != 1:
        sw, sh = info.stored_size
        detail = (
            f"EXIF orientation {info.orientation} ({info.orientation_name}): the stored {sw}x{sh} pixels are "
            f"read as {width}x{height}; boxes must refer to that view"
        )
        out.append(_problem("exif_orientation", rec.image_path, detail, split, rec.image_id))
    if info.high_bit_depth:
        detail = f"PIL mode {info.mode}: more than 8 bits per sample, scaled to 8 bit when read"
        out.append(_problem("high_bit_depth", rec.image_path, detail, split, rec.image_id))
    return out


# --------------------------------------------------------------------------- splits and datasets


def check_split(
    cfg: Config,
    split: str,
    *,
    images: bool = True,
    decode: bool = False,
    progress: ProgressFn | None = None,
) -> SplitCheck:
    """Check one split of the configured dataset: every problem of every file (see the module
    docstring). `images=False` checks the annotations only (the readers still pair each
    annotation with its image file, but no image is opened); `decode` fully decodes every image
    (slow). Never raises for bad data (it is reported); ConfigError for a missing setting."""
    errors: list[DatasetError] = []
    try:
        records = read_split(cfg, split, errors)
    except DatasetError as exc:
        return SplitCheck(split, [], [_from_error(exc, split)])
    problems = [_from_error(e, split) for e in errors]
    if not records and not any(e.image_id is not None for e in errors):
        problems.append(_problem("layout", cfg.data.root, f"the {split} split lists no sample", split, None))
    # samples that lost an object to a reader problem: "empty" would only repeat that
    left_out = {p.sample for p in problems if p.kind in ("malformed_annotation", "unknown_class")}
    no_image = {p.sample for p in problems if p.kind == "missing_image"}
    d = cfg.data
    for k, rec in enumerate(records):
        problems += check_record(rec, d.classes, d.box_outside, split, rec.image_id in left_out)
        if images and rec.image_id not in no_image:
            problems += check_image(rec, decode, split)
        if progress is not None:
            progress(split, k + 1, len(records))
    return SplitCheck(split, records, problems)


def _images_under(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        out += [
            Path(dirpath) / f for f in sorted(filenames) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        ]
    return out


def _unannotated_images(cfg: Config, scans: dict[str, SplitCheck]) -> list[Problem]:
    """Dataset level: image files no annotation refers to (VOC: no XML of the same stem; COCO:
    not a `file_name` of the configured splits). Not done for the Tianchi layout, where an
    image without JSON is a defect-free sample."""
    d = cfg.data
    root = Path(d.root)
    detail = "no annotation refers to this image: it is not used"
    if d.format == "voc":
        ann_dir = next((root / n for n in ANNOTATION_DIRS if (root / n).is_dir()), None)
        img_dir = next((root / n for n in IMAGE_DIRS if (root / n).is_dir()), None)
        if ann_dir is None or img_dir is None:
            return []
        stems = {os.path.splitext(f)[0] for f in os.listdir(ann_dir) if f.lower().endswith(".xml")}
        return [
            _problem("unannotated_image", img_dir / f, detail, None, None)
            for f in sorted(os.listdir(img_dir))
            if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS and os.path.splitext(f)[0] not in stems
        ]
    if d.format == "coco":
        referenced: set[Path] = set()
        folders: set[Path] = set()
        for split in ("train", "val"):
            if not (d.train_annotations if split == "train" else d.val_annotations):
                continue
            scan = scans.get(split) or SplitCheck(split, _quiet_read(cfg, split), [])
            referenced |= {r.image_path.resolve() for r in scan.records}
            folders.add(_resolve(root, d.train_images if split == "train" else d.val_images))
        return [
            _problem("unannotated_image", img, detail, None, None)
            for folder in sorted(folders)
            if folder.is_dir()
            for img in _images_under(folder)
            if img.resolve() not in referenced
        ]
    return []


def _quiet_read(cfg: Config, split: str) -> list[Record]:
    try:
        return read_split(cfg, split, [])
    except (DatasetError, ConfigError):
        return []


def check_dataset(
    cfg: Config,
    splits: Iterable[str] = ("train", "val"),
    *,
    decode: bool = False,
    progress: ProgressFn | None = None,
) -> CheckReport:
    """Check the configured dataset: every problem of every file of `splits`, plus image files
    no annotation refers to (VOC/COCO). `decode` fully decodes every image (finds truncated
    files; slow). Bad data is reported, never raised; ConfigError for a missing setting."""
    report = CheckReport()
    scans: dict[str, SplitCheck] = {}
    for split in splits:
        scan = check_split(cfg, split, decode=decode, progress=progress)
        scans[split] = scan
        report.problems += scan.problems
        report.num_samples[split] = len(scan.samples)
        report.bad_samples[split] = scan.bad_samples
    report.problems += _unannotated_images(cfg, scans)
    return report


# --------------------------------------------------------------------------- training


def clean_record(rec: Record, box_outside: BoxOutside = "clip") -> Record:
    """A usable record made clean: boxes clipped to the image (`box_outside: clip`), exact
    duplicates (label and coordinates) removed, keeping the first and marking it difficult only
    when every copy is. Call it on records without fatal problems."""
    boxes = np.asarray(rec.boxes_px, np.float32).reshape(-1, 4)
    if boxes.shape[0] == 0:
        return rec
    first: dict[tuple[int, tuple[float, ...]], int] = {}
    keep: list[int] = []
    difficult = np.asarray(rec.difficult, bool).copy()
    for i, box in enumerate(boxes):
        key = (int(rec.labels[i]), tuple(float(v) for v in box))
        if key in first:
            difficult[first[key]] &= difficult[i]
        else:
            first[key] = i
            keep.append(i)
    boxes = boxes[keep]
    if box_outside == "clip" and rec.width > 0 and rec.height > 0:
        boxes = boxes.copy()
        np.clip(boxes[:, 0::2], 0.0, float(rec.width), out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0.0, float(rec.height), out=boxes[:, 1::2])
    return replace(rec, boxes_px=boxes, labels=np.asarray(rec.labels)[keep], difficult=difficult[keep])


def usable_records(
    cfg: Config, split: str, *, images: bool = False, left_out: list[DatasetError] | None = None
) -> list[Record]:
    """The records of `split`, checked and cleaned (`clean_record`): the annotations, and with
    `images` the image files too (headers; every pixel with `data.check_decode`).

    A split with fatal problems is refused with a DatasetError naming the dataset and listing
    the first problems, unless `data.skip_invalid`: then the bad samples are left out and
    logged (how many and which), and with a `left_out` list the first fatal problem of each is
    appended to it as a DatasetError (naming the file, with the sample's id). Raises
    DatasetError when no usable sample is left."""
    d = cfg.data
    scan = check_split(cfg, split, images=images, decode=d.check_decode)
    fatal = scan.fatal
    samples = scan.samples
    bad = set(scan.bad_samples)
    if fatal and not d.skip_invalid:
        raise DatasetError(
            d.root,
            f"the {split} split has {len(fatal)} fatal problem(s) in {len(bad)} of {len(samples)} samples; "
            "fix them, or set data.skip_invalid: true to skip those samples (full report: "
            f"ssd-check-dataset --config CFG):\n{summarize(scan.problems)}",
            kind=fatal[0].kind,
        )
    records = [clean_record(r, d.box_outside) for r in scan.records if r.image_id not in bad]
    if left_out is not None:
        first = {p.sample: p for p in reversed(fatal) if p.sample is not None}
        for sample, q in sorted(first.items()):
            left_out.append(DatasetError(q.file, q.detail, kind=q.kind, image_id=sample))
    if fatal:
        kinds = {s: sorted({p.kind for p in fatal if p.sample == s}) for s in sorted(bad)}
        shown = ", ".join(f"{s} ({', '.join(k)})" for s, k in list(kinds.items())[:20])
        more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
        loose = sum(p.sample is None for p in fatal)
        extra = f"; {loose} problem(s) not tied to a sample ignored" if loose else ""
        log.warning(
            "skipped %d of %d samples of the %s split (data.skip_invalid): %s%s%s",
            len(bad),
            len(samples),
            split,
            shown,
            more,
            extra,
        )
    fixed = Counter(p.kind for p in scan.problems if p.severity != "fatal" and p.sample not in bad)
    if fixed:
        log.info("%s split: %s", split, ", ".join(f"{n} {k}" for k, n in sorted(fixed.items())))
    if not records:
        why = f":\n{summarize(scan.problems)}" if scan.problems else " (it is empty)"
        raise DatasetError(
            d.root, f"the {split} split has no usable sample{why}", kind=fatal[0].kind if fatal else "layout"
        )
    return records
