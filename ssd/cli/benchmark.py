"""Inference speed of SSD512: the network alone and end to end (pre-processing + network + decode
+ NMS + rescale), on CPU or CUDA, optionally beside torchvision's SSD512 in the same process.

  ssd-benchmark --config configs/ssd512_voc.yaml --device cpu --batch-size 1 --json
  ssd-benchmark --device cuda --sweep --channels-last --vs-torchvision --output-dir runs/bench

Timings are per batch, with warm-up and a device synchronisation after every iteration; the
table shows median / mean / p90 latency and images/s (from the median). --json prints one JSON
object on stdout (a single run, or {"runs": [...]} with --sweep); the table then goes to stderr.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from ssd.cli.common import USAGE_ERRORS, add_model_args, add_output_args, fail, print_json, setup_logging

SWEEP_BATCH_SIZES = "1,8,32,64"
SWEEP_PRECISIONS = "fp32,bf16,fp16"


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{flag}: expected comma-separated integers, got {text!r}") from exc
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{flag}: expected positive integers, got {text!r}")
    return values


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(results: list[dict[str, Any]]) -> str:
    """Markdown table, one row per run (and per model with --vs-torchvision)."""
    head = (
        "| model | batch | precision | part | median ms | mean ms | p90 ms | images/s | TFLOP/s | "
        "peak share | ours/torchvision |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if "error" in r:
            lines.append(f"| ours | {r['batch_size']} | {r['precision']} | error: {r['error']} |" + " |" * 7)
            continue
        rows = [(r, "ours")]
        if "torchvision" in r:
            rows.append((r["torchvision"], "torchvision"))
        for res, name in rows:
            for part in ("network", "end_to_end"):
                t = res[part]
                tflops = res.get("network_tflops") if part == "network" else res.get("end_to_end_tflops")
                share = res.get("peak_share") if part == "network" else None
                ratio = r.get("speed_ratio", {}).get(part) if name == "ours" else None
                lines.append(
                    f"| {name} | {res['batch_size']} | {res['precision']} | {part.replace('_', ' ')} | "
                    f"{t['median_ms']:.2f} | {t['mean_ms']:.2f} | {t['p90_ms']:.2f} | "
                    f"{t['images_per_s']:.2f} | {_fmt(tflops, '.3f')} | "
                    f"{_fmt(None if share is None else 100 * share, '.1f')}{'' if share is None else ' %'} | "
                    f"{_fmt(ratio, '.2f')} |"
                )
    return "\n".join(lines)


def _describe(results: list[dict[str, Any]]) -> str:
    first = next((r for r in results if "error" not in r), None)
    if first is None:
        return ""
    lines = [
        f"device: {first['device']} ({first['device_name']}), threads {first['num_threads']}, "
        f"torch {first['torch_version']}, torchvision {first['torchvision_version']}",
        f"backend={first.get('backend', 'eager')} channels_last={first['channels_last']} "
        f"compile={first['compile']} warmup={first['warmup']} "
        f"iters={first['iters']} input {first['image_size']}x{first['image_size']}, "
        f"{first['num_priors']} priors",
    ]
    if first.get("compile_s") is not None:
        lines.append(f"first (compiling) call: {first['compile_s']:.1f} s, not timed")
    if first.get("flops_per_image"):
        lines.append(f"network FLOPs per image: {first['flops_per_image'] / 1e9:.1f} GFLOP")
    lines.append(f"network includes: {first['includes']['network']}")
    lines.append(f"end to end includes: {first['includes']['end_to_end']}")
    if "torchvision" in first:
        tv = first["torchvision"]
        lines.append(
            f"torchvision SSD512: {tv['num_priors']} default boxes ({tv['layout']} layout); "
            f"end to end includes: {tv['includes']['end_to_end']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--precision", choices=["fp32", "bf16", "fp16"],
        help="network precision (default: inference.precision; auto = bf16/fp16 on CUDA, fp32 on CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--backend", choices=["eager", "onnxruntime", "openvino"], default="eager",
        help="runtime of our network: eager PyTorch, ONNX Runtime or OpenVINO (CPU, fp32; extra [deploy])",
    )  # fmt: skip
    parser.add_argument("--onnx", help="ONNX file for --backend onnxruntime/openvino (exported if missing)")
    parser.add_argument("--sweep", action="store_true", help="sweep batch sizes x precisions")
    parser.add_argument("--sweep-batch-sizes", default=SWEEP_BATCH_SIZES, help=f"default {SWEEP_BATCH_SIZES}")
    parser.add_argument("--sweep-precisions", default=SWEEP_PRECISIONS, help=f"default {SWEEP_PRECISIONS}")
    parser.add_argument("--warmup", type=int, help="warm-up iterations (default 10 on CUDA, 2 on CPU)")
    parser.add_argument("--iters", type=int, help="timed iterations (default 50 on CUDA, 10 on CPU)")
    parser.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=None,
        help="our eager network in NHWC (default: inference.channels_last of the config, on)",
    )  # fmt: skip
    parser.add_argument(
        "--torchvision-channels-last", action="store_true",
        help="torchvision's model in NHWC too (default: NCHW, as torchvision ships it)",
    )  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument(
        "--compile-mode", default="default",
        help="torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune, ...",
    )  # fmt: skip
    parser.add_argument("--vs-torchvision", action="store_true", help="also time torchvision's SSD512")
    parser.add_argument(
        "--torchvision-stock-layout", action="store_true",
        help="keep torchvision's highres extras (24,732 default boxes) instead of the SSD512 layout",
    )  # fmt: skip
    parser.add_argument(
        "--orig-size", default="375x500", help="HxW of the uint8 input images (default 375x500)"
    )
    parser.add_argument("--images-on-host", action="store_true", help="CUDA: time the host->device copy too")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic images")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    parser.add_argument(
        "--tiled", action="store_true",
        help="also time sliced inference (input.tiling of the config) beside the untiled pipeline "
        "on the same --orig-size images: images/s of full photos and tiles/s",
    )  # fmt: skip
    add_output_args(parser, "write benchmark.json and benchmark.md here", "print a JSON summary on stdout")
    args = parser.parse_args(argv)
    setup_logging()

    import torch
    from tqdm import tqdm

    from ssd.engine.benchmark import benchmark
    from ssd.engine.torchvision_baseline import build_torchvision_ssd512
    from ssd.inference.backends import backend_available
    from ssd.inference.checkpoint import load_model
    from ssd.inference.runtime import DeviceCaps
    from ssd.inference.settings import InferenceSettings

    try:
        if args.sweep:
            batch_sizes = _int_list(args.sweep_batch_sizes, "--sweep-batch-sizes")
            precisions = [p.strip() for p in args.sweep_precisions.split(",") if p.strip()]
            bad = [p for p in precisions if p not in ("fp32", "bf16", "fp16")]
            if bad or not precisions:
                return fail(f"--sweep-precisions: expected fp32/bf16/fp16, got {args.sweep_precisions!r}")
        else:
            batch_sizes, precisions = [args.batch_size], [args.precision]  # None: from the config
        height, width = (int(v) for v in args.orig_size.lower().split("x"))
    except (ValueError, argparse.ArgumentTypeError) as exc:
        return fail(str(exc) if isinstance(exc, argparse.ArgumentTypeError) else f"--orig-size: {exc}")
    if any(b <= 0 for b in batch_sizes) or height <= 0 or width <= 0:
        return fail("--batch-size and --orig-size must be positive")
    from ssd.inference.device import resolve_device

    try:
        device = resolve_device(args.device)
    except USAGE_ERRORS as exc:
        return fail(str(exc))
    warmup = args.warmup if args.warmup is not None else (10 if device.type == "cuda" else 2)
    iters = args.iters if args.iters is not None else (50 if device.type == "cuda" else 10)
    if warmup < 0 or iters <= 0:
        return fail("--warmup must be >= 0 and --iters > 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        cfg, model = load_model(args.checkpoint, config=args.config, overrides=args.overrides)
    except USAGE_ERRORS as exc:
        return fail(str(exc))
    settings = InferenceSettings.from_config(cfg)
    caps = DeviceCaps.of(device)
    precisions = [p or settings.precision_on(caps) for p in precisions]
    channels_last = args.channels_last if args.channels_last is not None else settings.channels_last_on(caps)
    channels_last = channels_last and args.backend == "eager"  # the ONNX runtimes pick their own layouts
    if args.backend != "eager":
        if device.type != "cpu" or args.compile or precisions != ["fp32"]:
            return fail(f"--backend {args.backend} runs on --device cpu in fp32 without --compile")
        if not backend_available(args.backend):
            return fail(f"--backend {args.backend}: runtime not installed (pip install 'ssd512[deploy]')")
    tv_model = None
    if args.vs_torchvision:
        if settings.image_size != 512:
            return fail(f"--vs-torchvision needs priors.image_size 512, the config has {settings.image_size}")
        tv_model = build_torchvision_ssd512(
            cfg.num_classes, settings, match_ssd512_layout=not args.torchvision_stock_layout
        )

    common = {
        "device": device, "warmup": warmup, "iters": iters, "channels_last": channels_last,
        "backend": args.backend, "onnx_path": args.onnx,
        "torchvision_channels_last": args.torchvision_channels_last,
        "compile": args.compile, "compile_mode": args.compile_mode, "orig_size": (height, width),
        "images_on_host": args.images_on_host, "seed": args.seed,
    }  # fmt: skip
    combos = list(itertools.product(batch_sizes, precisions))
    results: list[dict[str, Any]] = []
    progress = tqdm(combos, desc="benchmark", file=sys.stderr, disable=len(combos) == 1)
    for bs, precision in progress:
        progress.set_postfix(batch=bs, precision=precision)
        try:
            res = benchmark(
                model, model.priors(), settings, batch_size=bs, precision=precision,
                torchvision_model=tv_model, **common,
            ).to_dict()  # fmt: skip
            if tv_model is not None:
                layout = "torchvision stock highres" if args.torchvision_stock_layout else "SSD512"
                res["torchvision"]["layout"] = layout
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            if len(combos) == 1:
                print(f"error: benchmark failed: {exc}", file=sys.stderr)
                return 1
            res = {"batch_size": bs, "precision": precision, "error": str(exc).splitlines()[0][:200]}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        res["config"] = args.config
        res["checkpoint"] = args.checkpoint
        results.append(res)

    text = _describe(results) + "\n\n" + format_table(results)
    if args.tiled:
        from ssd.engine.benchmark_tiled import benchmark_tiled

        tiled = benchmark_tiled(
            model, cfg, device=device, orig_size=(height, width), batch_size=args.batch_size,
            warmup=warmup, iters=iters, seed=args.seed,
        )  # fmt: skip
        for r in results:
            r["tiled"] = tiled.to_dict()
        t = tiled.tiling
        text += (
            f"\n\nTiled (scale {t['scale']:g}, {t['tile']} px tiles, overlap {t['overlap']}, "
            f"{tiled.tiles_per_image:g} tiles per {width}x{height} image, merge {t['merge']}), timed "
            f"interleaved with the untiled pipeline, batch {args.batch_size}, median of {iters}: "
            f"untiled {tiled.untiled_fps:.3f} images/s, tiled {tiled.tiled_fps:.3f} images/s "
            f"({tiled.tiled_tiles_per_s:.2f} tiles/s), {tiled.slowdown:.2f}x slower"
        )
    if args.sweep:
        ok = [r for r in results if "error" not in r]
        summary: dict[str, Any] = {
            "sweep": True,
            "device": str(device),
            "device_name": ok[0]["device_name"] if ok else None,
            "runs": results,
        }
    else:
        summary = results[0]
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "benchmark.json").write_text(json.dumps(summary, indent=2, default=float), encoding="utf-8")
        (out / "benchmark.md").write_text(text + "\n", encoding="utf-8")
    if args.json:
        print(text, file=sys.stderr)
        print_json(summary)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
