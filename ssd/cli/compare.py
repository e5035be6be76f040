"""Original vs Chi et al. vs k-means vs coverage vs learned priors on the same data and schedule.

`ssd-compare --config BASE --variants original,chi,kmeans,coverage,learned --seeds 0,1,2
--output-dir DIR` trains every variant with every seed (same seeds, same data order per seed) in
DIR/<variant>/seed<S>/, evaluates each, and writes DIR/report.json (per variant: map = mean over
seeds, map_sd, maps, and against the original delta_map with a paired bootstrap 95% interval over
validation images, delta_ci), DIR/report.md and PNG plots. `learned@kmeans` (or @chi, @coverage)
starts the learned priors from that variant's shapes; `learned` starts from the original ones.
An interrupted comparison continues where it stopped, per (variant, seed), when run again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ssd.cli.common import USAGE_ERRORS, add_config_args, config_from_args, fail, print_json, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser, required=True)
    parser.add_argument("--variants", default="original,chi,kmeans,coverage,learned")
    parser.add_argument("--seeds", default=None, help="training seeds, e.g. 0,1,2 (default: config's)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (>= 1000; 0 = none)")
    parser.add_argument("--bootstrap-seed", type=int, default=0)
    parser.add_argument(
        "--skip-untrained", action="store_true", help="do not evaluate the untrained network (chance level)"
    )
    parser.add_argument("--output-dir", default="runs/compare")
    parser.add_argument("--device", default="cpu", help="training/evaluation device")
    parser.add_argument("--bench-device", default=None, help="FPS device (default: --device)")
    parser.add_argument("--bench-iters", type=int, default=20, help="FPS iterations (0 = no benchmark)")
    parser.add_argument("--json", action="store_true", help="print report.json on stdout")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    setup_logging()

    from ssd.engine.compare import compare

    try:
        cfg = config_from_args(args)
    except USAGE_ERRORS as exc:
        return fail(str(exc))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()] if args.seeds else None
    except ValueError:
        return fail(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    bars: dict[str, tqdm[Any]] = {}

    def progress(name: str, it: int, scalars: dict[str, float]) -> None:
        if args.quiet:
            return
        bar = bars.get(name)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[name] = tqdm(total=cfg.train.max_iters, desc=name, file=sys.stderr)
        bar.n = it
        bar.set_postfix(loss=f"{scalars['loss']:.3f}", refresh=False)
        bar.refresh()

    try:
        report = compare(cfg, args.output_dir, variants, device=args.device,
                         bench_device=args.bench_device, bench_iters=args.bench_iters,
                         progress=progress, seeds=seeds, bootstrap=args.bootstrap,
                         bootstrap_seed=args.bootstrap_seed,
                         untrained=not args.skip_untrained)  # fmt: skip
    except USAGE_ERRORS as exc:
        return fail(str(exc))
    finally:
        for bar in bars.values():
            bar.close()
    if args.json:
        print_json(report.to_dict())
    else:
        print(Path(report.files["markdown"]).read_text(encoding="utf-8"))
        print(f"report: {report.files['markdown']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
