"""Speed benchmark of the paired bootstrap of mAP (a benchmark, not a test).

    python -m tools.bench_bootstrap     # 360 images x 200 detections, 6 classes, 1000 resamples
    python -m tools.bench_bootstrap --images 360 --detections 200 --classes 6 --resamples 1000 --json

Seeded random ground truth (1-5 boxes per image) and detections (half of them near a ground-truth
box, the rest random, continuous scores), the size of a NEU-DET validation split with an untrained
network's 200 detections per image. Times the VOC matching once (`match_detections`) and the
resampled mAP of `--resamples` resamples (`resampled_map`), best of `--repeat`.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from ssd.evaluation.bootstrap import resample_counts, resampled_map
from ssd.evaluation.voc import GroundTruth, match_detections
from ssd.structures import Detections


def synthetic(
    images: int, detections: int, classes: int, seed: int
) -> tuple[list[GroundTruth], list[Detections]]:
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(images):
        g = int(rng.integers(1, 6))
        xy = rng.uniform(0, 150, (g, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 50, (g, 2))], 1)
        labels = rng.integers(1, classes + 1, g)
        gts.append(GroundTruth(boxes, labels, np.zeros(g, bool)))
        pick = rng.integers(0, g, detections)
        near = boxes[pick] + rng.normal(0, 4, (detections, 4))
        xy2 = rng.uniform(0, 150, (detections, 2))
        rand = np.concatenate([xy2, xy2 + rng.uniform(10, 50, (detections, 2))], 1)
        use_near = rng.random(detections) < 0.5
        d_boxes = np.where(use_near[:, None], near, rand)
        right = use_near & (rng.random(detections) < 0.7)
        d_labels = np.where(right, labels[pick], rng.integers(1, classes + 1, detections))
        scores = torch.tensor(rng.random(detections), dtype=torch.float32)
        dets.append(Detections(torch.tensor(d_boxes, dtype=torch.float32), scores, torch.tensor(d_labels)))
    return gts, dets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=360)
    ap.add_argument("--detections", type=int, default=200)
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--metric", choices=("voc07", "area"), default="voc07")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    gts, dets = synthetic(args.images, args.detections, args.classes, seed=0)
    names = [f"c{k}" for k in range(1, args.classes + 1)]
    counts = resample_counts(args.images, args.resamples, seed=0)
    match_times, boot_times = [], []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        matches, _, _ = match_detections(gts, dets, names)
        t1 = time.perf_counter()
        maps = resampled_map(matches, counts, args.metric)
        t2 = time.perf_counter()
        match_times.append(t1 - t0)
        boot_times.append(t2 - t1)
    out = {
        "images": args.images,
        "detections": args.images * args.detections,
        "classes": args.classes,
        "resamples": args.resamples,
        "metric": args.metric,
        "match_s": min(match_times),
        "bootstrap_s": min(boot_times),
        "bootstrap_all_s": boot_times,
        "map_mean": float(np.nanmean(maps)),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"{out['detections']:,} detections in {args.images} images, {args.classes} classes: "
            f"matching {out['match_s']:.3f} s, {args.resamples} resamples {out['bootstrap_s']:.3f} s "
            f"(best of {len(boot_times)}; all: {', '.join(f'{t:.3f}' for t in boot_times)}), "
            f"{out['cpus']} CPUs"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
