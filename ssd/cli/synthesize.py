"""Write the seeded synthetic aluminum-defect dataset (Tianchi layout) to a folder.

    ssd-synthesize --out runs/data/synth --num-images 200 --size 2560x1920 --seed 0
    ssd-synthesize --config configs/smoke.yaml          # data.root + data.synthetic_*

Flags override the config's `data.synthetic_*` values (and `--out` its `data.root`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ssd.cli.common import USAGE_ERRORS, add_config_args, fail, print_json
from ssd.config import ConfigError, load_config
from ssd.data.synthetic import generate_dataset


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 2560x1920, got {text!r}") from exc
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size {w}x{h} is too small (min 16x16)")
    return w, h


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    parser.add_argument("--out", "--output-dir", dest="out", help="dataset folder (default: data.root)")
    parser.add_argument(
        "--num-images", type=int, help="number of images (default: data.synthetic_num_images)"
    )
    parser.add_argument("--size", type=_parse_size, help="WIDTHxHEIGHT (default: data.synthetic_size)")
    parser.add_argument("--seed", type=int, help="random seed (default: data.synthetic_seed)")
    parser.add_argument("--val-fraction", type=float, help="share of val images (default: 0.2)")
    parser.add_argument("--workers", type=int, default=1, help="processes (the output does not depend on it)")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        d = cfg.data
        if args.out is None and args.config is None:
            raise ConfigError("--out is required without --config")
        out = Path(args.out if args.out is not None else d.root)
        num = args.num_images if args.num_images is not None else d.synthetic_num_images
        size = args.size if args.size is not None else d.synthetic_size
        seed = args.seed if args.seed is not None else d.synthetic_seed
        val_fraction = args.val_fraction if args.val_fraction is not None else d.synthetic_val_fraction
        if num <= 0:
            raise ConfigError(f"--num-images must be positive, got {num}")
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}")
        if args.workers <= 0:
            raise ConfigError(f"--workers must be positive, got {args.workers}")
        start = time.perf_counter()
        with tqdm(total=num, desc="synthesize", unit="img", disable=args.json, file=sys.stderr) as bar:
            made = generate_dataset(
                out, num, size, seed, val_fraction, workers=args.workers, progress=bar.update
            )
        elapsed = time.perf_counter() - start
    except USAGE_ERRORS as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"{args.out}: {exc}")
    per_minute = round(60.0 * num / elapsed, 1) if elapsed > 0 else None
    if args.json:
        extra = {"out": str(out), "seconds": round(elapsed, 3), "images_per_minute": per_minute}
        print_json({**made.to_dict(), **extra, "workers": args.workers})
    else:
        print(
            f"wrote {num} images ({size[0]}x{size[1]}, seed {seed}) to {out} in {elapsed:.1f} s "
            f"({per_minute} images/min, {args.workers} worker(s))"
        )
        print(
            f"train {made.train_images}, val {made.val_images}, "
            f"multi-defect {made.multi_defect_images}, defect-free {made.defect_free_images}"
        )
        for cls, n in made.images_per_class.items():
            print(f"  {cls:20s} images {n:5d}  boxes {made.boxes_per_class[cls]:5d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
