"""Train SSD512: `tools/train.py --config CFG [--set k=v ...] --output-dir DIR [--resume]`."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from tools.common import USAGE_ERRORS, add_config_args, config_from_args, fail, print_json, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser, required=False)
    parser.add_argument("--output-dir", default="runs/train", help="run folder (checkpoints, logs)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--resume", nargs="?", const=True, default=False,
        help="continue from OUTPUT_DIR/last.pt (or the given checkpoint)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    setup_logging()

    from ssd.engine.train import TrainingError, TrainingInterrupted, train

    try:
        cfg = config_from_args(args)
    except USAGE_ERRORS as exc:
        return fail(str(exc))
    bar = tqdm(total=cfg.train.max_iters, disable=args.quiet, file=sys.stderr, desc="train")

    def progress(it: int, scalars: dict[str, float]) -> None:
        bar.n = it
        bar.set_postfix(loss=f"{scalars['loss']:.3f}", lr=f"{scalars['lr']:.2e}", refresh=False)
        bar.refresh()

    try:
        result = train(cfg, args.output_dir, device=args.device, resume=args.resume, progress=progress)
    except TrainingInterrupted as exc:
        bar.close()
        print(f"{exc}; continue with --resume", file=sys.stderr)
        return 130
    except TrainingError as exc:
        bar.close()
        return fail(str(exc))
    except USAGE_ERRORS as exc:
        bar.close()
        return fail(str(exc))
    bar.close()
    summary = {
        "output_dir": str(result.output_dir),
        "iteration": result.iteration,
        "last_checkpoint": str(result.last_checkpoint),
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "best_map": result.best_map,
        "final_metrics": result.final_metrics,
        "skipped_steps": result.skipped_steps,
        "learned_config": str(result.learned_config) if result.learned_config else None,
    }
    if args.json:
        print_json(summary)
    else:
        print(f"done: {result.iteration} iterations, best mAP {result.best_map}, run in {result.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
