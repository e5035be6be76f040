"""Tiled vs untiled runs side by side: mAP, mAP of the small boxes (under 32 x 32 after the 512
warp), per-class AP and speed (images/s of full photos, tiles/s); report.json + report.md.

    ssd-tiling-report --run untiled=runs/tiling/untiled --run tiled=runs/tiling/tiled \\
        --output-dir docs/results/tiling
    ssd-tiling-report --run untiled=runs/tiling/s0/untiled,runs/tiling/s1/untiled \\
        --run tiled=runs/tiling/s0/tiled,runs/tiling/s1/tiled      # one folder per training seed

Each run folder holds `config.yaml` and `last.pt` (ssd-train); a tiled run (its config has
`input.tiling.enabled: true`) is evaluated and timed tiled. With several folders for a variant
(its training seeds) every folder is scored and the first is timed and detailed per class; with
two variants or more, each is compared with the first: the difference of the seed-mean mAPs
with a paired bootstrap interval over the photos. Exit status 0 ok, 2 usage/config/data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ssd.cli.common import USAGE_ERRORS, fail, print_json, setup_logging

if TYPE_CHECKING:
    from ssd.engine.tiling_report import RunReport, ScoredRun


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="NAME=DIR[,DIR...]",
        help="a variant: its training run folder, or one folder per training seed (repeatable)",
    )
    ap.add_argument(
        "--checkpoint", default="last.pt", help="checkpoint file inside each run (default last.pt)"
    )
    ap.add_argument("--split", default="val", choices=("train", "val"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fps-iters", type=int, default=3, help="timed iterations of the speed test (default 3)")
    ap.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    ap.add_argument("--bootstrap-seed", type=int, default=0)
    ap.add_argument("--output-dir", type=Path, help="write report.json and report.md here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    setup_logging()
    from ssd.engine.tiling_report import compare_seeds, report_markdown, score_run, seeds_markdown, time_run

    runs: dict[str, list[str]] = {}
    for item in args.run:
        name, sep, paths = item.partition("=")
        if not sep or not name or not paths or name in runs:
            return fail(f"--run {item!r}: expected NAME=DIR[,DIR...] with a new NAME")
        runs[name] = paths.split(",")
        for path in runs[name]:
            if not (Path(path) / "config.yaml").is_file():
                return fail(f"--run {item!r}: {path}/config.yaml not found")
    if args.resamples < 1:
        return fail("--resamples must be >= 1")
    results: dict[str, RunReport] = {}
    scored: dict[str, list[ScoredRun]] = {}
    try:
        for name, paths in runs.items():
            scored[name] = []
            for path in paths:
                print(f"evaluating {name} ({path})", file=sys.stderr)
                scored[name].append(
                    score_run(path, checkpoint=args.checkpoint, split=args.split, device=args.device)
                )
            results[name] = time_run(scored[name][0], device=args.device, fps_iters=args.fps_iters)
    except USAGE_ERRORS as exc:
        return fail(str(exc))
    try:  # runs scored on other images cannot be compared
        seeds = (
            compare_seeds(scored, resamples=args.resamples, seed=args.bootstrap_seed) if len(runs) > 1 else []
        )
    except ValueError as exc:
        return fail(str(exc))
    text = report_markdown(results)
    as_json = {name: r.to_dict() for name, r in results.items()}
    if seeds:
        num_images = len(scored[seeds[0].variant][0].image_ids)
        text += "\n" + seeds_markdown(seeds, num_images, args.resamples, args.bootstrap_seed)
        for fig in seeds:
            as_json[fig.variant]["seeds"] = fig.to_dict()
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "report.json").write_text(json.dumps(as_json, indent=2, default=float) + "\n")
        (args.output_dir / "report.md").write_text(text, encoding="utf-8")
    if args.json:
        print_json(as_json)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
