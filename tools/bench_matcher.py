"""Matcher memory and time with a crowded image: `tools/bench_matcher.py [--config CFG] [--json]`.

Matches two batches of `--batch-size` images against the priors of the config (default config:
SSD512's 24,564 priors) with `ssd.priors.matcher.match`, as the loss does every step:

* **normal**: every image holds 1..`--max-normal` random boxes;
* **crowded**: the same images, but image 0 holds `--crowded-boxes` boxes (default 5,000).

Per batch it prints the peak memory the match adds and the median time of `--iters` calls (after
one untimed call). Each batch runs in a fresh process. CPU: peak resident set size of that process
(`ru_maxrss`) minus its resident size just before matching; CUDA (`--device cuda`):
`torch.cuda.max_memory_allocated` minus the memory allocated before matching.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time
from typing import Any

from ssd.cli.common import USAGE_ERRORS, add_config_args, config_from_args, fail, print_json


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize()


def _boxes(n: int, gen: Any) -> Any:
    import torch

    wh = torch.rand(n, 2, generator=gen) * 0.29 + 0.01
    xy = torch.rand(n, 2, generator=gen) * (1.0 - wh)
    return torch.cat([xy, xy + wh], dim=1)


def measure(
    counts: list[int], priors_cfg: Any, iou_threshold: float, device: str, iters: int
) -> dict[str, Any]:
    """Peak added memory (bytes) and median seconds of `match` on images with `counts` boxes."""
    import torch

    from ssd.priors.generator import generate_priors
    from ssd.priors.matcher import match

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    priors = generate_priors(priors_cfg).to(dev)
    boxes = [_boxes(n, gen).to(dev) for n in counts]
    labels = [torch.randint(1, 5, (n,), generator=gen).to(dev) for n in counts]
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        base = _rss_bytes()
    match(boxes, labels, priors, iou_threshold)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        match(boxes, labels, priors, iou_threshold)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    return {
        "images": len(counts),
        "boxes": sum(counts),
        "max_boxes_per_image": max(counts),
        "priors": int(priors.shape[0]),
        "peak_added_bytes": max(int(peak), 0),
        "median_s": statistics.median(times) if times else None,
    }


def _child(queue: Any, *args: Any) -> None:
    try:
        queue.put(measure(*args))
    except BaseException as exc:  # report, the parent prints it
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--crowded-boxes", type=int, default=5000, help="boxes of the crowded image")
    parser.add_argument("--max-normal", type=int, default=10, help="most boxes of a normal image")
    parser.add_argument("--iters", type=int, default=3, help="timed calls per batch (default 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except USAGE_ERRORS as exc:
        return fail(str(exc))
    if args.batch_size < 1 or args.crowded_boxes < 1 or args.max_normal < 1 or args.iters < 0:
        return fail("--batch-size, --crowded-boxes and --max-normal must be >= 1, --iters >= 0")
    import random

    rng = random.Random(0)
    normal = [rng.randint(1, args.max_normal) for _ in range(args.batch_size)]
    crowded = [args.crowded_boxes, *normal[1:]]
    ctx = mp.get_context("spawn")
    results: dict[str, Any] = {}
    for name, counts in (("normal", normal), ("crowded", crowded)):
        queue = ctx.Queue()
        proc = ctx.Process(
            target=_child,
            args=(queue, counts, cfg.priors, cfg.matcher.iou_threshold, args.device, args.iters),
        )
        proc.start()
        proc.join()
        if proc.exitcode != 0 or queue.empty():
            return fail(f"the {name} batch did not finish (exit code {proc.exitcode}; out of memory?)")
        out = queue.get()
        if "error" in out:
            return fail(f"the {name} batch: {out['error']}")
        results[name] = out
    if args.json:
        print_json({"device": args.device, **results})
    else:
        for name, r in results.items():
            ms = "n/a" if r["median_s"] is None else f"{r['median_s'] * 1000:.1f} ms"
            print(
                f"{name:8s} {r['images']} images, {r['boxes']} boxes "
                f"(at most {r['max_boxes_per_image']} in one), "
                f"{r['priors']} priors: peak +{r['peak_added_bytes'] / 2**20:.0f} MiB, median {ms}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
