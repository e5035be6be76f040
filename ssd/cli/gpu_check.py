"""One prepared device check for SSD512: correctness tests on the device, end-to-end inference
speed beside torchvision's SSD512, training speed with mixed precision, peak memory.

  ssd-gpu-check                                   # CUDA, full sizes, report in docs/results/gpu/
  ssd-gpu-check --device cpu --quick --output-dir runs/check   # tiny sizes, runs anywhere

Writes <output-dir>/<device name>.md and .json. Exit status 0 when every section ran and the
tests passed, 1 when something failed (the report says what), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys

from ssd.cli.common import fail, setup_logging


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v <= 0 for v in values):
        raise ValueError(text)
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (width-1/8 network, 2 images)")
    parser.add_argument("--output-dir", default="docs/results/gpu", help="default docs/results/gpu")
    parser.add_argument("--batch-sizes", help="inference batch sizes (default 1,64; quick 1,2)")
    parser.add_argument("--precisions", help="default fp32,fp16,bf16; quick on CPU fp32")
    parser.add_argument("--iters", type=int, help="timed inference iterations (default 50; quick 3)")
    parser.add_argument("--train-batch-size", type=int, help="default 32; quick 2")
    parser.add_argument("--train-iters", type=int, help="timed training steps (default 30; quick 3)")
    parser.add_argument("--workers", type=int, help="training loader workers (default min(8, CPUs); quick 0)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the gpu-marked tests")
    args = parser.parse_args(argv)
    setup_logging()

    import torch

    from ssd.engine.gpu_check import CheckOptions, format_markdown, run_check, write_report

    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        return fail(f"--device: {exc}")
    if device.type == "cuda" and not torch.cuda.is_available():
        return fail("--device cuda: CUDA is not available on this machine (use --device cpu --quick)")
    try:
        batch_sizes = _ints(args.batch_sizes) if args.batch_sizes else None
    except ValueError:
        return fail(f"--batch-sizes: expected comma-separated positive integers, got {args.batch_sizes!r}")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()] if args.precisions else None
    if precisions is not None and (not precisions or set(precisions) - {"fp32", "fp16", "bf16"}):
        return fail(f"--precisions: expected fp32/fp16/bf16, got {args.precisions!r}")
    for name in ("iters", "train_batch_size", "train_iters"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            return fail(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.workers is not None and args.workers < 0:
        return fail(f"--workers must be >= 0, got {args.workers}")
    options = CheckOptions(
        device=str(device), quick=args.quick, batch_sizes=batch_sizes, precisions=precisions,
        iters=args.iters, train_batch_size=args.train_batch_size, train_iters=args.train_iters,
        num_workers=args.workers, run_tests=not args.skip_tests,
    )  # fmt: skip
    result = run_check(options, progress=lambda msg: print(f"[ssd-gpu-check] {msg}", file=sys.stderr))
    md, js = write_report(result, args.output_dir)
    print(format_markdown(result))
    print(f"wrote {md} and {js}", file=sys.stderr)
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
