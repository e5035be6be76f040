"""Speed benchmark of IoU k-means (a benchmark, not a test).

    python -m tools.bench_kmeans                      # k=9, 10 restarts, 100,000 boxes
    python -m tools.bench_kmeans --boxes 100000 --k 9 --restarts 10 --repeat 3 --json

The boxes are a seeded mixture in network-input pixels that resembles a detection data set
(log-normal blobs of different sizes and aspect ratios plus thin full-width bands), drawn as
continuous values so that no two shapes coincide (the slowest case: no duplicate merging).
The printed time is the best of `--repeat` runs of `iou_kmeans` alone (data generation excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from ssd.priors.kmeans import iou_kmeans


def synthetic_shapes(n: int, seed: int = 0) -> np.ndarray:
    """[n, 2] (w, h) in 512x512 input pixels: 8 log-normal blobs + full-width bands."""
    rng = np.random.default_rng(seed)
    centres = np.array(
        [[20, 20], [40, 25], [60, 90], [120, 60], [200, 200], [350, 300], [90, 30], [30, 110]],
        dtype=np.float64,
    )
    n_band = n // 5
    comp = rng.integers(0, len(centres), n - n_band)
    wh = centres[comp] * np.exp(rng.normal(0.0, 0.3, (n - n_band, 2)))
    band_h = np.exp(rng.normal(np.log(25.0), 0.6, n_band))
    band_w = 512.0 - np.abs(rng.normal(0.0, 8.0, n_band))
    bands = np.stack([band_w, band_h], axis=1)
    out = np.clip(np.concatenate([wh, bands]), 1.0, 512.0)
    return out[rng.permutation(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boxes", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=9)
    ap.add_argument("--restarts", type=int, default=10)
    ap.add_argument("--update", choices=["mean", "median"], default="mean")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    args = ap.parse_args(argv)
    if args.boxes < args.k or args.repeat < 1:
        ap.error("--boxes must be >= --k and --repeat >= 1")
    wh = synthetic_shapes(args.boxes, args.seed)
    times = []
    result = None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        result = iou_kmeans(wh, args.k, update=args.update, restarts=args.restarts, seed=args.seed)
        times.append(time.perf_counter() - t0)
    assert result is not None
    summary = {
        "boxes": args.boxes,
        "k": args.k,
        "restarts": args.restarts,
        "update": args.update,
        "seconds_best": min(times),
        "seconds_all": times,
        "mean_iou": result.mean_iou,
        "iterations_kept_restart": result.iterations,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"iou_kmeans: {args.boxes} boxes, k={args.k}, {args.restarts} restarts, update={args.update}: "
            f"{min(times):.3f} s (best of {args.repeat}; all: {', '.join(f'{t:.3f}' for t in times)}) "
            f"mean IoU {result.mean_iou:.4f}, {os.cpu_count()} CPUs"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
