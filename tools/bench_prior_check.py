"""Cost of the prior check that training runs at its start (a benchmark, not a test).

`tools/bench_prior_check.py --annotations BOXES.json [--boxes 10000] [--config CFG] [--repeat 3]`

The boxes of a COCO json (xywh pixels; each image's width/height scale them to the warped
network input) are repeated to `--boxes` boxes; the check (`ssd.engine.prior_check.prior_fit`:
grid recall@0.5 and mean grid IoU of the config's priors, no position averaging) is timed.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ssd.cli.common import USAGE_ERRORS, add_config_args, config_from_args, fail, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    parser.add_argument("--annotations", required=True, help="COCO json with images and annotations")
    parser.add_argument("--boxes", type=int, default=10000, help="number of boxes (the file's, repeated)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is reported)")
    args = parser.parse_args(argv)
    setup_logging()

    from ssd.config import replace
    from ssd.data.records import DatasetError
    from ssd.engine.prior_check import prior_fit
    from ssd.evaluation.coco import read_json
    from ssd.priors.fit import BoxSet

    try:
        cfg = config_from_args(args)
        data = read_json(args.annotations)
        sizes = {im["id"]: (float(im["width"]), float(im["height"])) for im in data["images"]}
        rows = []
        for a in data["annotations"]:
            w_img, h_img = sizes[a["image_id"]]
            x, y, w, h = (float(v) for v in a["bbox"])
            rows.append([x / w_img, y / h_img, (x + w) / w_img, (y + h) / h_img])
    except USAGE_ERRORS as exc:
        return fail(str(exc))
    except (KeyError, TypeError, ValueError) as exc:
        return fail(str(DatasetError(args.annotations, f"not a COCO box file ({exc})")))
    if not rows or args.boxes <= 0 or args.repeat <= 0:
        return fail("need boxes in --annotations, --boxes > 0 and --repeat > 0")
    base = np.clip(np.asarray(rows, dtype=np.float64), 0.0, 1.0)
    n = args.boxes
    index = np.arange(n) % len(base)
    boxes = BoxSet(base[index], np.ones(n, np.int64), np.zeros(n, np.int64), ("all",), cfg.priors.image_size)
    cfg = replace(cfg, **{"data.classes": ("box",)})
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        fit = prior_fit(cfg, boxes)
        times.append(time.perf_counter() - start)
    print(json.dumps({
        "boxes": n, "distinct_boxes": len(base), "num_priors": fit.num_priors,
        "best_s": round(min(times), 3), "all_s": [round(t, 3) for t in times],
        "recall": round(fit.recall, 4), "mean_iou_grid": round(fit.mean_iou_grid, 4),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
