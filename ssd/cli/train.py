"""Train SSD512: `ssd-train --config CFG [--set k=v ...] --output-dir DIR [--resume]`.

Data-parallel on N GPUs of one machine (one process per GPU):
`torchrun --standalone --nproc_per_node N -m ssd.cli.train --device cuda --config CFG ...`.
`train.batch_size` is per process (global batch = batch_size x N) and `train.lr` is the rate of
the global batch: scale it with N (linear scaling rule, with warm-up). Rank 0 alone shows the
progress bar, writes the run folder and prints the summary.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tqdm import tqdm

from ssd.cli.common import USAGE_ERRORS, add_config_args, config_from_args, fail, print_json, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser, required=False)
    parser.add_argument("--output-dir", default="runs/train", help="run folder (checkpoints, logs)")
    parser.add_argument(
        "--device", default="auto",
        help="auto (CUDA when present), cpu, cuda, cuda:N (under torchrun: cuda means cuda:LOCAL_RANK)",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true",
        help="start a new run in an OUTPUT_DIR that holds one, removing its checkpoints and logs",
    )  # fmt: skip
    parser.add_argument(
        "--resume", nargs="?", const=True, default=False,
        help="continue from OUTPUT_DIR/last.pt (or the given checkpoint)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from ssd.engine.distributed import env_world
    from ssd.engine.train import TrainingError, TrainingInterrupted, train

    try:
        rank, world_size, _ = env_world()
    except ValueError as exc:
        return fail(str(exc))
    main_process = rank == 0
    setup_logging()
    if not main_process:  # one voice: other ranks report warnings and errors only
        logging.getLogger().setLevel(logging.WARNING)

    from ssd.inference.device import resolve_device

    try:
        device = resolve_device(args.device)  # before anything is created
        cfg = config_from_args(args)
    except USAGE_ERRORS as exc:
        return fail(str(exc))
    bar = tqdm(
        total=cfg.train.max_iters, disable=args.quiet or not main_process, file=sys.stderr, desc="train"
    )

    def progress(it: int, scalars: dict[str, float]) -> None:
        bar.n = it
        bar.set_postfix(loss=f"{scalars['loss']:.3f}", lr=f"{scalars['lr']:.2e}", refresh=False)
        bar.refresh()

    try:
        result = train(
            cfg, args.output_dir, device=device, resume=args.resume, progress=progress,
            overwrite=args.overwrite,
        )  # fmt: skip
    except TrainingInterrupted as exc:
        bar.close()
        if main_process:
            print(f"{exc}; continue with --resume", file=sys.stderr)
        return 130
    except TrainingError as exc:
        bar.close()
        return fail(str(exc))
    except USAGE_ERRORS as exc:
        bar.close()
        return fail(str(exc))
    bar.close()
    if not main_process:
        return 0
    summary = {
        "output_dir": str(result.output_dir),
        "iteration": result.iteration,
        "world_size": world_size,
        "batch_per_process": cfg.train.batch_size,
        "global_batch": cfg.train.batch_size * world_size,
        "last_checkpoint": str(result.last_checkpoint),
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "best_map": result.best_map,
        "final_metrics": result.final_metrics,
        "skipped_steps": result.skipped_steps,
        "skipped_images": result.skipped_images,
        "learned_config": str(result.learned_config) if result.learned_config else None,
        "report": result.report.to_dict() if result.report is not None else None,
    }
    if args.json:
        print_json(summary)
    else:
        from ssd.evaluation.report import summary_text

        if result.report is not None:
            print(f"final model (iteration {result.iteration}) on the val split:")
            print(summary_text(result.report.to_dict()), end="")
        best = "n/a" if result.best_map is None else f"{result.best_map:.4f}"
        print(f"done: {result.iteration} iterations, best mAP {best}, run in {result.output_dir} "
              "(report.md, results.json)")  # fmt: skip
        if result.skipped_images:
            names = ", ".join(sorted(result.skipped_images))
            n = len(result.skipped_images)
            print(f"{n} unreadable training image(s) replaced (data.skip_invalid): {names}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
