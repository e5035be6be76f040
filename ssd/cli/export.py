"""Export SSD512 to ONNX and check it against onnxruntime.

`ssd-export --checkpoint CKPT --onnx OUT.onnx [--with-nms] [--config CFG]`

Without --with-nms: the network, input `images` float [B, 3, S, S] (resized, normalised), outputs
`cls_logits` [B, P, C] and `box_deltas` [B, P, 4]; B is dynamic. With --with-nms: batch fixed at 1,
outputs `boxes` [K, 4] xyxy relative to the input, `scores` [K], `labels` [K] (softmax, decode,
score filter, per-class top-k and NMS inside the graph). After export the file is run with
onnxruntime on seeded sample images and compared with PyTorch; the max abs difference is printed.
Exit 0 ok, 1 when the outputs do not match, 2 for usage/config/checkpoint errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ssd.cli.common import USAGE_ERRORS, add_model_args, add_output_args, fail, print_json, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser)
    parser.add_argument("--onnx", required=True, help="output .onnx file")
    parser.add_argument(
        "--with-nms", action="store_true", help="include decode + score filter + NMS (batch 1)"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--num-samples", type=int, default=2, help="sample images for the check (default 2)")
    parser.add_argument("--sample-size", default="375x500", help="HxW of the sample images (default 375x500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample images")
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    parser.add_argument(
        "--device", default="cpu",
        help="device of the PyTorch reference in the onnxruntime check: auto, cpu, cuda, cuda:N (the "
        "graph is traced on the CPU)",
    )  # fmt: skip
    add_output_args(parser, "also write export_report.json here", "print the report as JSON on stdout")
    args = parser.parse_args(argv)
    setup_logging()

    import json

    import torch

    from ssd.engine.benchmark import random_images
    from ssd.inference.checkpoint import load_model
    from ssd.inference.detector import preprocess
    from ssd.inference.export import export_onnx, verify_onnx
    from ssd.inference.settings import InferenceSettings

    try:
        height, width = (int(v) for v in args.sample_size.lower().split("x"))
    except ValueError:
        return fail(f"--sample-size: expected HxW, e.g. 375x500, got {args.sample_size!r}")
    if args.num_samples <= 0 or height <= 0 or width <= 0:
        return fail("--num-samples and --sample-size must be positive")
    from ssd.inference.device import resolve_device

    try:
        device = resolve_device(args.device)
        cfg, model = load_model(args.checkpoint, config=args.config, overrides=args.overrides)
    except USAGE_ERRORS as exc:
        return fail(str(exc))
    if args.checkpoint is None:
        print("warning: no --checkpoint, exporting random weights", file=sys.stderr)
    settings = InferenceSettings.from_config(cfg)
    path = export_onnx(model, args.onnx, settings, with_nms=args.with_nms, opset=args.opset)
    report: dict[str, Any] = {
        "onnx": str(path),
        "bytes": path.stat().st_size,
        "with_nms": args.with_nms,
        "batch": "fixed 1" if args.with_nms else "dynamic",
        "image_size": settings.image_size,
        "num_classes": cfg.num_classes,
        "num_priors": int(model.priors().shape[0]),
        "opset": args.opset,
        "checkpoint": args.checkpoint,
        "config": args.config,
    }
    ok = True
    if not args.no_verify:
        images = random_images(args.num_samples, height, width, args.seed)
        x, _ = preprocess(images, settings.image_size, settings.mean, settings.std, torch.device("cpu"))
        check = verify_onnx(
            path, model, x, settings, with_nms=args.with_nms, atol=args.atol, rtol=args.rtol, device=device
        )
        report["verification"] = check.to_dict()
        ok = check.ok
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "export_report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    if args.json:
        print_json(report)
    else:
        kind = "with NMS, batch 1" if args.with_nms else "network, dynamic batch"
        print(f"wrote {path} ({report['bytes'] / 1e6:.1f} MB, {kind})")
        if "verification" in report:
            check = report["verification"]
            assert isinstance(check, dict)
            print(
                f"onnxruntime vs PyTorch on {check['num_images']} sample images: max abs diff "
                f"{check['max_abs_diff']:.3g} (tolerance {check['tolerance']:.3g}) -> "
                f"{'OK' if ok else 'MISMATCH'}"
            )
    if not ok:
        print("error: onnxruntime outputs do not match PyTorch", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
