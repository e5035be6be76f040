"""Benchmark engine: figures are positive and finite, iteration counts are respected, FLOPs agree
with a hand count, and torchvision's SSD512 comparison model has the SSD512 default boxes."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import OrderedDict
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from ssd.config import Config, config_from_dict
from ssd.engine.benchmark import (
    benchmark,
    benchmark_torchvision,
    count_flops,
    peak_bf16_tflops,
    random_images,
    speed_ratio,
    summarize_times,
    time_interleaved,
)
from ssd.engine.torchvision_baseline import build_torchvision_ssd512, torchvision_default_boxes
from ssd.inference.settings import InferenceSettings
from ssd.modeling.build import build_model
from ssd.priors.generator import generate_priors

DEFAULTS = InferenceSettings.from_config(Config())
_F = 320 / 512
# SSD512 layout scaled to a 320 input at width 1/8: maps 40/20/10/5/3/2/1, 9,624 priors.
TINY = {
    "model": {"width_mult": 0.125},
    "priors": {
        "image_size": 320,
        "feature_maps": [40, 20, 10, 5, 3, 2, 1],
        "steps": [8, 16, 32, 64, 107, 160, 320],
        "min_sizes": [s * _F for s in (35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8)],
        "max_sizes": [s * _F for s in (76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6)],
    },
}
TINY_PRIORS = 4 * 40 * 40 + 6 * (20 * 20 + 10 * 10 + 5 * 5 + 3 * 3) + 4 * (2 * 2 + 1)


@pytest.fixture(scope="module")
def tiny_cfg() -> Config:
    return config_from_dict(TINY)


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _finite_positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def test_benchmark_tiny_model_reports_positive_finite_figures(tiny_cfg: Config) -> None:
    model = build_model(tiny_cfg)
    settings = InferenceSettings.from_config(tiny_cfg)
    res = benchmark(model, model.priors(), settings, batch_size=2, warmup=1, iters=3, orig_size=(60, 90))
    for key in ("network_fps", "end_to_end_fps", "network_tflops", "end_to_end_tflops"):
        assert _finite_positive(getattr(res, key)), key
    for part in ("network", "end_to_end"):
        t = getattr(res, part)
        assert t.iters == 3 and len(t.times_ms) == 3
        for key in ("median_ms", "mean_ms", "p90_ms", "min_ms", "images_per_s"):
            assert _finite_positive(getattr(t, key)), (part, key)
        assert t.min_ms <= t.median_ms <= t.p90_ms <= t.max_ms
        assert t.images_per_s == pytest.approx(2 / (t.median_ms / 1e3))
    assert res.network_fps == res.network.images_per_s
    assert res.batch_size == 2 and res.precision == "fp32" and res.device == "cpu"
    assert res.num_priors == TINY_PRIORS
    assert "network forward only" in res.includes["network"]
    assert "batched NMS" in res.includes["end_to_end"]
    assert "resize" in res.includes["end_to_end"]
    assert 0 < res.end_to_end.detections_per_image <= settings.max_detections
    assert res.flops_per_image == count_flops(model, 320)
    # no GPU peak on CPU
    assert res.peak_share is None and res.peak_bf16_tflops is None


def test_benchmark_runs_exactly_warmup_plus_iters_forwards(tiny_cfg: Config) -> None:
    model = build_model(tiny_cfg)
    calls: list[int] = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    settings = InferenceSettings.from_config(tiny_cfg)
    res = benchmark(
        model, model.priors(), settings, batch_size=1, warmup=2, iters=3, flops=False, orig_size=(40, 40)
    )
    assert len(calls) == 2 * (2 + 3)  # network loop + end-to-end loop
    assert res.flops_per_image is None and res.network_tflops is None
    assert res.warmup == 2 and res.iters == 3


def test_benchmark_channels_last_bf16_restores_layout(tiny_cfg: Config) -> None:
    model = build_model(tiny_cfg)
    res = benchmark(
        model, model.priors(), InferenceSettings.from_config(tiny_cfg), batch_size=1, precision="bf16",
        warmup=0, iters=1, channels_last=True, flops=False, orig_size=(40, 40),
    )  # fmt: skip
    assert _finite_positive(res.end_to_end_fps) and res.channels_last is True
    assert "autocast bf16" in res.includes["network"]
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous()


def test_benchmark_rejects_bad_arguments(tiny_cfg: Config) -> None:
    model = build_model(tiny_cfg)
    settings = InferenceSettings.from_config(tiny_cfg)
    with pytest.raises(ValueError, match="precision"):
        benchmark(model, model.priors(), settings, precision="int8", iters=1, flops=False)
    with pytest.raises(ValueError, match="batch_size"):
        benchmark(model, model.priors(), settings, batch_size=0, iters=1, flops=False)
    with pytest.raises(ValueError, match="iters"):
        benchmark(model, model.priors(), settings, warmup=0, iters=0, flops=False, orig_size=(8, 8))


def test_count_flops_equals_hand_count_of_convolutions(tiny_cfg: Config) -> None:
    model = build_model(tiny_cfg).eval()
    total = 0

    def hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Conv2d)
        kh, kw = m.kernel_size
        total += 2 * out.numel() * (m.in_channels // m.groups) * kh * kw

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, 320, 320))
    expected = total  # read before counting: the meta copy carries the hooks too
    assert count_flops(model, 320) == expected
    # counting used a meta copy: the real weights are untouched and still on CPU
    assert next(model.parameters()).device.type == "cpu"


def test_summarize_times_golden() -> None:
    s = summarize_times([0.1, 0.4, 0.2, 0.3], batch_size=2)
    assert s.median_ms == pytest.approx(250.0)
    assert s.mean_ms == pytest.approx(250.0)
    assert s.p90_ms == pytest.approx(370.0)  # linear interpolation between 300 and 400
    assert s.min_ms == pytest.approx(100.0) and s.max_ms == pytest.approx(400.0)
    assert s.images_per_s == pytest.approx(8.0)
    assert s.iters == 4
    with pytest.raises(ValueError):
        summarize_times([], 1)


def test_time_interleaved_counts_calls_syncs_and_order() -> None:
    order: list[str] = []
    syncs: list[int] = []
    fns = [lambda: order.append("a") or len(order), lambda: order.append("b") or -len(order)]
    times, last = time_interleaved(fns, 2, 3, lambda: syncs.append(1))
    assert order == ["a", "b"] * 5  # round-robin, warm-up included
    assert [len(t) for t in times] == [3, 3] and last == [9, -10]
    assert len(syncs) == 1 + 2 * 3  # once after warm-up, once per timed call
    assert all(t >= 0 for ts in times for t in ts)
    with pytest.raises(ValueError):
        time_interleaved(fns, 0, 0, lambda: None)


def test_peak_table() -> None:
    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)
    assert peak_bf16_tflops("NVIDIA H100 PCIe") == pytest.approx(756.0)
    assert peak_bf16_tflops("NVIDIA H200") == pytest.approx(989.4)
    assert peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == pytest.approx(312.0)
    assert peak_bf16_tflops("NVIDIA GeForce RTX 2080 Ti") is None


def test_random_images_seeded() -> None:
    a = random_images(2, 30, 40, seed=3)
    b = random_images(2, 30, 40, seed=3)
    c = random_images(2, 30, 40, seed=4)
    assert [t.shape for t in a] == [torch.Size([3, 30, 40])] * 2 and a[0].dtype == torch.uint8
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])
    assert int(a[0].max()) - int(a[0].min()) > 50  # not a constant image


@dataclasses.dataclass
class _Fps:
    network_fps: float
    end_to_end_fps: float


def test_speed_ratio() -> None:
    r = speed_ratio(_Fps(10.0, 9.0), _Fps(5.0, 3.0))
    assert r.to_dict() == {"network": 2.0, "end_to_end": 3.0}
    assert speed_ratio(_Fps(1.0, 1.0), _Fps(0.0, 1.0)).network == math.inf


# --------------------------------------------------------------------------- torchvision


def test_torchvision_ssd512_has_the_ssd512_default_boxes() -> None:
    settings = DEFAULTS
    tv = build_torchvision_ssd512(21, settings, device="meta")  # no weights, no compute
    boxes = torchvision_default_boxes(tv)
    assert boxes.shape == (24564, 4)
    ours = generate_priors(config_from_dict({}).priors).double()
    assert ours.shape == (24564, 4)
    # same boxes in the same order (level, row, column, shape), both cxcywh relative
    torch.testing.assert_close(boxes, ours, atol=1e-6, rtol=0)
    assert tv.score_thresh == 0.01 and tv.nms_thresh == 0.45
    assert tv.detections_per_img == 200 and tv.topk_candidates == 200
    assert tuple(tv.transform.fixed_size) == (512, 512)
    assert tv.head.classification_head.num_columns == 21


def test_torchvision_stock_highres_layout_has_24732_boxes() -> None:
    tv = build_torchvision_ssd512(21, DEFAULTS, match_ssd512_layout=False, device="meta")
    # maps 64/32/16/8/6/4/1 with 4/6/6/6/6/4/4 boxes per cell
    expected = 4 * 64 * 64 + 6 * (32 * 32 + 16 * 16 + 8 * 8 + 6 * 6) + 4 * (4 * 4 + 1)
    assert expected == 24732
    assert torchvision_default_boxes(tv).shape[0] == expected


def test_torchvision_needs_512() -> None:
    with pytest.raises(ValueError, match="512"):
        build_torchvision_ssd512(21, dataclasses.replace(DEFAULTS, image_size=320), device="meta")


class _TinyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.out_channels = [8, 8]
        self.a = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.b = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        f1 = self.a(x).relu()
        return OrderedDict([("0", f1), ("1", self.b(f1).relu())])


def _tiny_torchvision_ssd() -> nn.Module:
    """A torchvision SSD at 32x32 with two levels (8x8, 4x4), 4 boxes per cell, C = 3."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD

    gen = DefaultBoxGenerator([[2], [2]], scales=[0.2, 0.5, 0.9], steps=[4, 8], clip=False)
    return SSD(_TinyBackbone(), gen, (32, 32), 3, topk_candidates=50, detections_per_img=20)


def test_benchmark_torchvision_runs_on_a_small_torchvision_ssd() -> None:
    torch.manual_seed(0)
    tv = _tiny_torchvision_ssd()
    res = benchmark_torchvision(tv, batch_size=2, warmup=1, iters=2, orig_size=(20, 30))
    assert res.num_priors == 4 * 8 * 8 + 4 * 4 * 4
    for key in ("network_fps", "end_to_end_fps", "network_tflops"):
        assert _finite_positive(getattr(res, key)), key
    assert len(res.network.times_ms) == 2 and len(res.end_to_end.times_ms) == 2
    assert 0 < res.end_to_end.detections_per_image <= 20
    assert res.flops_per_image == 2 * 8 * 8 * 8 * 3 * 9 + 2 * 4 * 4 * 8 * 8 * 9 + 2 * (
        8 * 8 * (4 * 3 + 4 * 4) * 8 * 9 + 4 * 4 * (4 * 3 + 4 * 4) * 8 * 9
    )
    assert "torchvision SSD eval forward" in res.includes["end_to_end"]


def test_benchmark_with_torchvision_model_interleaves_both(tiny_cfg: Config) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_cfg)
    tv = _tiny_torchvision_ssd()
    calls: list[str] = []

    def hook(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], object], None]:
        def record(m: nn.Module, inputs: tuple[Tensor, ...], out: object) -> None:
            if not inputs[0].is_meta:  # hooks travel with the meta copies used for counting
                calls.append(name)

        return record

    model.register_forward_hook(hook("ours"))
    tv.backbone.register_forward_hook(hook("tv"))
    res = benchmark(
        model, model.priors(), InferenceSettings.from_config(tiny_cfg), warmup=1, iters=2, flops=False,
        orig_size=(40, 60), torchvision_model=tv,
    )  # fmt: skip
    # per round: ours network, ours end to end, torchvision network, torchvision end to end
    assert calls == ["ours", "ours", "tv", "tv"] * 3
    theirs = res.torchvision
    assert theirs.model == "torchvision" and theirs.num_priors == 4 * 8 * 8 + 4 * 4 * 4
    assert len(theirs.end_to_end.times_ms) == 2 and theirs.batch_size == 1
    assert res.same_number_of_priors is False
    assert res.speed_ratio.end_to_end == pytest.approx(res.end_to_end_fps / theirs.end_to_end_fps)
    # the JSON of benchmark.json: the report's keys in order, torchvision's without backend/settings
    timing = ["iters", "median_ms", "mean_ms", "p90_ms", "min_ms", "max_ms", "images_per_s",
              "images_per_s_mean", "times_ms"]  # fmt: skip
    run = ["device", "device_name", "batch_size", "precision", "channels_last", "compile", "compile_s",
           "warmup", "iters", "orig_size", "images_on_host", "network", "end_to_end", "network_fps",
           "end_to_end_fps", "network_tflops", "end_to_end_tflops", "peak_bf16_tflops", "peak_share",
           "end_to_end_peak_share", "num_threads", "torch_version", "torchvision_version"]  # fmt: skip
    d = json.loads(json.dumps(res.to_dict()))
    assert list(d) == [
        "model", "backend", "compile_mode", "image_size", "num_priors", "settings", "flops_per_image",
        "includes", *run, "torchvision", "speed_ratio", "same_number_of_priors",
    ]  # fmt: skip
    assert list(d["torchvision"]) == [
        "model", "compile_mode", "image_size", "num_priors", "flops_per_image", "includes", *run
    ]  # fmt: skip
    assert list(d["network"]) == timing and list(d["end_to_end"]) == [*timing, "detections_per_image"]
    assert list(d["settings"]) == [
        "image_size", "mean", "std", "variances", "score_threshold", "nms_iou", "top_k", "max_detections"
    ]  # fmt: skip
    assert d["orig_size"] == [40, 60] and d["speed_ratio"] == res.speed_ratio.to_dict()


@pytest.mark.slow
def test_full_size_comparison_runs_once() -> None:
    cfg = config_from_dict({})
    model = build_model(cfg)
    settings = InferenceSettings.from_config(cfg)
    tv = build_torchvision_ssd512(cfg.num_classes, settings)
    ours = benchmark(model, model.priors(), settings, warmup=0, iters=1, torchvision_model=tv)
    theirs = ours.torchvision
    assert ours.num_priors == theirs.num_priors == 24564
    # same architecture: FLOPs agree to within the L2Norm / head details (< 1 %)
    assert abs(ours.flops_per_image - theirs.flops_per_image) < 0.01 * ours.flops_per_image
    assert all(v > 0 for v in speed_ratio(ours, theirs).to_dict().values())
