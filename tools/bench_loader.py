"""Loader-only throughput: images/s of the training loader of a config, without a model.

`tools/bench_loader.py --config CFG [--set k=v ...] [--num-workers N] [--iters 50] [--warmup 5] [--json]`

Times `build_train_loader(cfg)` (decode, augmentation, collate, worker hand-off: everything the
training loop waits for) over `--iters` batches after `--warmup` untimed ones (worker start-up and
first batches are reported separately). To know whether data loading limits training, compare
images/s here with the training rate (batch size / `sec_per_iter` in a run's metrics.jsonl) at
the same `data.num_workers`; with torchrun each process runs its own loader of `train.batch_size`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ssd.cli.common import USAGE_ERRORS, add_config_args, config_from_args, fail, print_json, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser, required=False)
    parser.add_argument(
        "--num-workers", type=int, default=None, help="loader workers (default: data.num_workers)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per batch (default: train.batch_size)"
    )
    parser.add_argument("--iters", type=int, default=50, help="timed batches (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first (default 5)")
    parser.add_argument("--output-dir", default=None, help="also write bench_loader.json there")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    setup_logging()
    for name in ("iters", "warmup", "num_workers", "batch_size"):
        value = getattr(args, name)
        minimum = 1 if name in ("iters", "batch_size") else 0
        if value is not None and value < minimum:
            return fail(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")

    import ssd
    from ssd.data.loader import build_train_loader, checked

    try:
        cfg = config_from_args(args)
        changes: dict[str, Any] = {}
        if args.num_workers is not None:
            changes["data.num_workers"] = args.num_workers
        if args.batch_size is not None:
            changes["train.batch_size"] = args.batch_size
        cfg = ssd.config.replace(cfg, **changes)
        t0 = time.perf_counter()
        loader = build_train_loader(cfg)
        batches = checked(loader)  # an unreadable image: its DatasetError
        first = next(batches)
        first_batch_s = time.perf_counter() - t0
        for _ in range(max(args.warmup - 1, 0)):
            next(batches)
        images = 0
        bar = tqdm(total=args.iters, disable=args.quiet, file=sys.stderr, desc="loader")
        start = time.perf_counter()
        for _ in range(args.iters):
            batch = next(batches)
            images += int(batch.images.shape[0])
            bar.update()
        elapsed = time.perf_counter() - start
        bar.close()
    except USAGE_ERRORS as exc:
        return fail(str(exc))
    del batches, loader  # stop the workers before reporting

    summary = {
        "config": args.config,
        "num_workers": cfg.data.num_workers,
        "batch_size": cfg.train.batch_size,
        "image_size": cfg.priors.image_size,
        "image_shape": list(first.images.shape[1:]),
        "warmup_batches": args.warmup,
        "batches": args.iters,
        "images": images,
        "seconds": elapsed,
        "images_per_s": images / elapsed if elapsed > 0 else float("inf"),
        "ms_per_batch": 1000.0 * elapsed / args.iters,
        "first_batch_s": first_batch_s,
    }
    if args.output_dir is not None:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_loader.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print_json(summary)
    else:
        print(
            f"{summary['images_per_s']:.1f} images/s ({summary['ms_per_batch']:.1f} ms per batch of "
            f"{cfg.train.batch_size}, {cfg.data.num_workers} workers, {cfg.priors.image_size}px; "
            f"first batch after {first_batch_s:.2f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
