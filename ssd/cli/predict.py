"""Draw detections on images: `ssd-predict --checkpoint CKPT IMAGES... --output-dir DIR`.

Images are read as training reads them (`ssd.data.image.read_image`: EXIF orientation applied,
16-bit scaled to 8 bit, any PIL failure a one-line error naming the file). An image that cannot
be read is reported on stderr (and in --json) and the others are still drawn. Outputs are PNGs
named after the input's stem; when two inputs share a stem the later ones get their extension
and, if needed, a number (`x.png`, `x_jpg.png`, `x_jpg_2.png`).

Exit status: 0 every image drawn, 1 some images could not be read (the rest were drawn),
2 usage, config or checkpoint error, or --output-dir is not a usable folder.

The checkpoint carries its config (`--config`/`--set` override it). `--save-json PATH` also writes
every detection above `postprocess.score_threshold` (not only the drawn ones) as a COCO results
list `[{image_id, category_id, bbox xywh px, score}]`, which `ssd-evaluate --annotations
GT.json --predictions PATH` scores. With `--annotations GT.json` the image and category ids are
those of that file (images matched by file name, then by stem); without, `image_id` is the file
stem and `category_id` the label (1 = first class of the config).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import cast

from ssd.cli.common import USAGE_ERRORS, add_config_args, fail, print_json, setup_logging

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def _collect(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image or folder")
    return files


def output_names(files: list[Path]) -> list[str]:
    """A distinct output file name per input (compared case-insensitively): `stem.png`, then
    `stem_ext.png`, then `stem_ext_2.png`, ... for inputs whose stem is taken."""
    used: set[str] = set()
    names = []
    for f in files:
        ext = f.suffix.lstrip(".").lower()
        candidates = [f"{f.stem}.png", f"{f.stem}_{ext}.png"] if ext else [f"{f.stem}.png"]
        name = next((c for c in candidates if c.lower() not in used), None)
        k = 2
        while name is None:
            c = f"{f.stem}_{ext}_{k}.png" if ext else f"{f.stem}_{k}.png"
            name = c if c.lower() not in used else None
            k += 1
        used.add(name.lower())
        names.append(name)
    return names


CocoIds = tuple[dict[str, object], list[int]]


def _coco_ids(annotations: str, class_names: tuple[str, ...]) -> CocoIds:
    """(image id by file name and by stem, category id of each label 1..C-1) of a COCO GT file;
    its categories must be the config's classes."""
    from ssd.data.records import DatasetError
    from ssd.evaluation.coco import read_json

    data = read_json(annotations)
    try:
        by_name = {str(c["name"]): int(c["id"]) for c in data["categories"]}
        images = {}
        for im in data["images"]:
            name = str(im["file_name"])
            images[name] = im["id"]
            images.setdefault(Path(name).name, im["id"])
            images.setdefault(Path(name).stem, im["id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(annotations, f"not a COCO annotation file ({exc})") from exc
    missing = [n for n in class_names if n not in by_name]
    if missing:
        raise DatasetError(annotations, f"has no category for the classes {missing}")
    return images, [by_name[n] for n in class_names]


def _coco_results(det: object, image: Path, ids: CocoIds | None) -> list[dict[str, object]]:
    from ssd.evaluation.coco import detections_to_coco
    from ssd.structures import Detections

    assert isinstance(det, Detections)
    if ids is None:
        return detections_to_coco([det], [image.stem])
    images, categories = ids
    image_id = images.get(image.name, images.get(image.stem))
    if image_id is None:
        print(f"warning: {image}: not an image of --annotations; left out of --save-json", file=sys.stderr)
        return []
    return detections_to_coco([det], [image_id], categories)  # type: ignore[list-item]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser)
    parser.add_argument("--checkpoint", help="trained checkpoint (default: random weights)")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--output-dir", default="runs/predict")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--score", type=float, default=0.3, help="draw detections above this score")
    parser.add_argument("--json", action="store_true", help="print detections as JSON")
    parser.add_argument("--save-json", help="write all detections as COCO results json to this file")
    parser.add_argument("--annotations", help="COCO ground truth whose image/category ids --save-json uses")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    setup_logging()

    from PIL import Image
    from torchvision.utils import draw_bounding_boxes
    from tqdm import tqdm

    from ssd.data.image import read_image
    from ssd.data.records import DatasetError
    from ssd.inference.checkpoint import load_model
    from ssd.inference.detector import Detector
    from ssd.inference.device import resolve_device

    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        return fail(f"--output-dir {out_dir}: exists and is not a folder")
    try:
        device = resolve_device(args.device)
        cfg, model = load_model(args.checkpoint or None, config=args.config, overrides=args.overrides)
        files = _collect(args.images)
        detector = Detector.from_model(cfg, model, device=device)
        ids = _coco_ids(args.annotations, cfg.data.classes) if args.annotations else None
    except USAGE_ERRORS as exc:
        return fail(str(exc))
    except ValueError as exc:  # a checkpoint that does not fit the config (one line, names the file)
        return fail(str(exc))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return fail(f"--output-dir {out_dir}: cannot create the folder: {exc.strerror or exc}")
    names = cfg.data.classes
    summary: list[dict[str, object]] = []
    coco: list[dict[str, object]] = []
    failed = 0
    pairs = list(zip(files, output_names(files), strict=True))
    for f, out_name in tqdm(pairs, desc="predict", file=sys.stderr, disable=args.quiet or len(files) < 2):
        try:
            image = read_image(f)
        except DatasetError as exc:
            print(f"warning: {exc}; skipped", file=sys.stderr)
            summary.append({"image": str(f), "error": exc.detail})
            failed += 1
            continue
        det = detector([image])[0]
        if args.save_json:
            coco += _coco_results(det, f, ids)
        keep = det.scores >= args.score
        labels = [f"{names[int(c) - 1]} {s:.2f}" for c, s in zip(det.labels[keep], det.scores[keep])]
        drawn = draw_bounding_boxes(image, det.boxes[keep], labels=labels, colors="red", width=3)
        target = out_dir / out_name
        try:
            Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(target, format="PNG")
        except OSError as exc:
            return fail(f"{target}: cannot write: {exc.strerror or exc}")
        summary.append({
            "image": str(f),
            "output": str(target),
            "detections": [
                {"label": names[int(c) - 1], "score": float(s), "box_xyxy": [float(v) for v in b]}
                for b, s, c in zip(det.boxes[keep], det.scores[keep], det.labels[keep])
            ],
        })  # fmt: skip
    if args.save_json:
        import json

        target_json = Path(args.save_json)
        target_json.parent.mkdir(parents=True, exist_ok=True)
        target_json.write_text(json.dumps(coco) + "\n", encoding="utf-8")
        print(f"wrote {len(coco)} detections to {target_json}", file=sys.stderr)
    if args.json:
        print_json(summary)
    else:
        drawn_n = len(summary) - failed
        n = sum(len(cast(list[object], s.get("detections", []))) for s in summary)
        skipped = f"; {failed} could not be read (see the warnings)" if failed else ""
        print(f"{drawn_n} images, {n} detections drawn into {out_dir}{skipped}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
