"""Speed of sliced (tiled) inference next to the untiled pipeline, on the same images.

Both pipelines start from the same seeded uint8 images of `orig_size` resident on the device and
end with per-image Detections in original pixels:
- untiled: resize the whole image to S x S + normalise -> network -> postprocess (as
  `ssd.inference.detector.Detector` without tiling);
- tiled: `ssd.inference.sliced.SlicedPredictor` (crop + warp every window, one network batch for all
  windows of all images, postprocess per window, seam merge + NMS per image).
They are timed round-robin (`ssd.engine.benchmark.time_interleaved`) so that both see the same
machine load. Images per second count full photos; tiles per second count network inputs of the
tiled pipeline (windows, plus the whole image with `tiling.full_image`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ssd.config import Config
from ssd.engine.benchmark import (
    TimingSummary,
    random_images,
    summarize_times,
    synchronizer,
    time_interleaved,
)
from ssd.inference.detector import preprocess
from ssd.inference.settings import InferenceSettings
from ssd.inference.sliced import build_sliced_predictor
from ssd.modeling.ssd import SSD
from ssd.structures import Detections


@dataclass(frozen=True)
class TiledBenchmark:
    """Untiled and tiled timings of the same photos (`benchmark_tiled`): the `tiling` settings
    (scale, tile, overlap, full_image, merge), the `untiled` and `tiled` timing summaries
    (images = full photos), `untiled_fps`, `tiled_fps` (images/s from the medians),
    `tiles_per_image`, `tiled_tiles_per_s` and `slowdown` (untiled / tiled images/s)."""

    device: str
    orig_size: tuple[int, int]
    batch_size: int
    warmup: int
    iters: int
    tiling: dict[str, Any]
    image_size: int
    untiled: TimingSummary
    tiled: TimingSummary
    untiled_fps: float
    tiled_fps: float
    tiles_per_image: float
    tiled_tiles_per_s: float
    slowdown: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "orig_size": list(self.orig_size),
            "batch_size": self.batch_size,
            "warmup": self.warmup,
            "iters": self.iters,
            "tiling": dict(self.tiling),
            "image_size": self.image_size,
            "untiled": self.untiled.to_dict(),
            "tiled": self.tiled.to_dict(),
            "untiled_fps": self.untiled_fps,
            "tiled_fps": self.tiled_fps,
            "tiles_per_image": self.tiles_per_image,
            "tiled_tiles_per_s": self.tiled_tiles_per_s,
            "slowdown": self.slowdown,
        }


@torch.inference_mode()
def benchmark_tiled(
    model: SSD,
    cfg: Config,
    *,
    device: str | torch.device = "cpu",
    orig_size: tuple[int, int] = (1920, 2560),
    batch_size: int = 1,
    warmup: int = 1,
    iters: int = 5,
    seed: int = 0,
) -> TiledBenchmark:
    """Time untiled and tiled inference of `model` with the settings of `cfg` (its
    `input.tiling` for the tiled pipeline, whether enabled or not) on `batch_size` images of
    `orig_size` (H, W) (see `TiledBenchmark`)."""
    dev = torch.device(device)
    if batch_size <= 0 or iters <= 0 or warmup < 0:
        raise ValueError(f"need batch_size > 0, iters > 0, warmup >= 0; got {batch_size}, {iters}, {warmup}")
    model.eval().to(dev)
    images = [im.to(dev) for im in random_images(batch_size, orig_size[0], orig_size[1], seed)]
    tiled_cfg = cfg if cfg.input.tiling.enabled else _with_tiling(cfg)
    sliced = build_sliced_predictor(tiled_cfg, model, dev)
    priors = model.priors().detach().to(dev)
    s = InferenceSettings.from_config(cfg)

    def untiled() -> list[Detections]:
        x, sizes = preprocess(images, s.image_size, s.mean, s.std, dev)
        return s.postprocess(model(x), priors, sizes)

    def tiled() -> list[Detections]:
        return sliced(images)

    times, _ = time_interleaved([untiled, tiled], warmup, iters, synchronizer(dev))
    un, ti = summarize_times(times[0], batch_size), summarize_times(times[1], batch_size)
    tiles_per_image = sliced.last_num_tiles / batch_size
    return TiledBenchmark(
        device=str(dev),
        orig_size=orig_size,
        batch_size=batch_size,
        warmup=warmup,
        iters=iters,
        tiling={
            "scale": tiled_cfg.input.tiling.scale,
            "tile": tiled_cfg.input.tiling.tile,
            "overlap": tiled_cfg.input.tiling.overlap,
            "full_image": tiled_cfg.input.tiling.full_image,
            "merge": tiled_cfg.input.tiling.merge,
        },
        image_size=cfg.priors.image_size,
        untiled=un,
        tiled=ti,
        untiled_fps=un.images_per_s,
        tiled_fps=ti.images_per_s,
        tiles_per_image=tiles_per_image,
        tiled_tiles_per_s=ti.images_per_s * tiles_per_image,
        slowdown=un.images_per_s / ti.images_per_s,
    )


def _with_tiling(cfg: Config) -> Config:
    from ssd.config import replace

    out = replace(cfg, **{"input.tiling.enabled": True})
    assert isinstance(out, Config)
    return out
