"""`make demo`: the whole experiment on a seeded synthetic aluminum-defect set, on the CPU.

Generates the data (all ten Tianchi defect classes), fits the chi, kmeans and coverage priors,
trains the five variants (original, chi, kmeans, coverage, learned) with one schedule and one
seed, evaluates and benchmarks them, compares each with the original (paired bootstrap interval
over validation images), prints the tables and writes runs/demo/report.md (+ report.json and
plots). One seed cannot separate the variants (the report says so); `--seeds 0,1,2` trains each
three times. Run again to continue an interrupted demo.
"""

from __future__ import annotations

import argparse
import time

from ssd.cli import compare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/demo_aluminum.yaml")
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", default=None, help="training seeds, e.g. 0,1,2 (default: the config's)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    extra = ["--quiet"] if args.quiet else []
    if args.seeds:
        extra += ["--seeds", args.seeds]
    for kv in args.overrides:
        extra += ["--set", kv]
    code = compare.main(["--config", args.config, "--output-dir", args.output_dir, *extra])
    if code == 0:
        print(f"demo finished in {(time.perf_counter() - start) / 60:.1f} min; "
              f"report: {args.output_dir}/report.md, data: {args.output_dir}/report.json")  # fmt: skip
    return code


if __name__ == "__main__":
    raise SystemExit(main())
