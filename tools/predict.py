"""Draw detections on images: `tools/predict.py --config CFG --checkpoint CKPT IMAGES... --output-dir DIR`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.common import USAGE_ERRORS, add_config_args, config_from_args, fail, print_json, setup_logging

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def _collect(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image or folder")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser)
    parser.add_argument("--checkpoint", help="trained checkpoint (default: random weights)")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--output-dir", default="runs/predict")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--score", type=float, default=0.3, help="draw detections above this score")
    parser.add_argument("--json", action="store_true", help="print detections as JSON")
    args = parser.parse_args(argv)
    setup_logging()

    from torchvision.io import decode_image, write_png
    from torchvision.io.image import ImageReadMode
    from torchvision.utils import draw_bounding_boxes

    from ssd.detector import Detector

    try:
        cfg = config_from_args(args)
        files = _collect(args.images)
        detector = Detector(cfg, args.checkpoint, device=args.device)
    except USAGE_ERRORS as exc:
        return fail(str(exc))
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = cfg.data.classes
    summary = []
    for f in files:
        try:
            image = decode_image(str(f), mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError) as exc:
            print(f"warning: {f}: cannot decode image: {exc}", file=sys.stderr)
            continue
        det = detector([image])[0]
        keep = det.scores >= args.score
        labels = [f"{names[int(c) - 1]} {s:.2f}" for c, s in zip(det.labels[keep], det.scores[keep])]
        drawn = draw_bounding_boxes(image, det.boxes[keep], labels=labels, colors="red", width=3)
        target = out_dir / f"{f.stem}.png"
        write_png(drawn, str(target))
        summary.append({
            "image": str(f),
            "output": str(target),
            "detections": [
                {"label": names[int(c) - 1], "score": float(s), "box_xyxy": [float(v) for v in b]}
                for b, s, c in zip(det.boxes[keep], det.scores[keep], det.labels[keep])
            ],
        })  # fmt: skip
    if args.json:
        print_json(summary)
    else:
        n = sum(len(s["detections"]) for s in summary)  # type: ignore[arg-type]
        print(f"{len(summary)} images, {n} detections drawn into {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
