"""Tiled vs untiled runs side by side: mAP, mAP of the small boxes (under 32 x 32 after the 512
warp), per-class AP and speed (images/s of full photos, tiles/s); report.json + report.md.

    ssd-tiling-report --run untiled=runs/tiling/untiled --run tiled=runs/tiling/tiled \\
        --output-dir docs/results/tiling

Each run folder holds `config.yaml` and `last.pt` (ssd-train); a tiled run (its config has
`input.tiling.enabled: true`) is evaluated and timed tiled. Exit status 0 ok, 2 usage/config/data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ssd.cli.common import USAGE_ERRORS, fail, print_json, setup_logging

if TYPE_CHECKING:
    from ssd.engine.tiling_report import RunReport


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--run", action="append", required=True, metavar="NAME=DIR", help="a training run (repeatable)"
    )
    ap.add_argument(
        "--checkpoint", default="last.pt", help="checkpoint file inside each run (default last.pt)"
    )
    ap.add_argument("--split", default="val", choices=("train", "val"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fps-iters", type=int, default=3, help="timed iterations of the speed test (default 3)")
    ap.add_argument("--output-dir", type=Path, help="write report.json and report.md here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    setup_logging()
    from ssd.engine.tiling_report import evaluate_run, report_markdown

    runs: dict[str, str] = {}
    for item in args.run:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            return fail(f"--run {item!r}: expected NAME=DIR")
        if not (Path(path) / "config.yaml").is_file():
            return fail(f"--run {item!r}: {path}/config.yaml not found")
        runs[name] = path
    results: dict[str, RunReport] = {}
    try:
        for name, path in runs.items():
            print(f"evaluating {name} ({path})", file=sys.stderr)
            results[name] = evaluate_run(
                path,
                checkpoint=args.checkpoint,
                split=args.split,
                device=args.device,
                fps_iters=args.fps_iters,
            )
    except USAGE_ERRORS as exc:
        return fail(str(exc))
    text = report_markdown(results)
    as_json = {name: r.to_dict() for name, r in results.items()}
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
