"""Inference runtimes for the SSD network: eager PyTorch, ONNX Runtime and OpenVINO.

Every backend is a callable `network(images [B, 3, S, S] float, normalised) -> (cls_logits
[B, P, C], box_deltas [B, P, 4])` (float32 tensors on the model's device); pre-processing,
decode and NMS stay in PyTorch (`ssd.inference.detector.preprocess`, `ssd.postprocess.postprocess`), so
every backend gives detections through the same code.

- `eager`: the PyTorch module in eval mode, channels_last (NHWC) weights and input where asked
  (oneDNN on CPUs and cuDNN on GPUs run NHWC convolutions without layout reorders), autocast at
  the requested precision.
- `onnxruntime` / `openvino` (CPU): the network graph of `ssd.inference.export.export_onnx` (dynamic batch),
  written to `onnx_path` or a temporary file, run by ONNX Runtime's CPU execution provider or
  OpenVINO's CPU plugin (compiled once per input shape, latency hint). Both runtimes are the
  optional extra `pip install ssd512[deploy]`; nothing is downloaded at run time.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ssd.inference.runtime import autocast

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("eager", "onnxruntime", "openvino")
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


class BackendError(RuntimeError):
    """A backend cannot run here (runtime not installed, or an unsupported device)."""


class Network(Protocol):
    name: str

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]: ...


def backend_available(name: str) -> bool:
    """Whether backend `name` can be used in this environment (its runtime is installed)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {name!r}")
    module = _MODULES.get(name)
    return module is None or importlib.util.find_spec(module) is not None


class EagerNetwork:
    """The PyTorch module itself (`model(images) -> HeadOutputs`), optionally channels_last and
    under autocast ("bf16" / "fp16"); outputs are returned as float32."""

    name = "eager"

    def __init__(self, model: nn.Module, precision: str = "fp32", channels_last: bool = False) -> None:
        self.model = model.eval()
        self.precision = precision
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.device_type = next(model.parameters()).device.type
        autocast(self.device_type, precision)  # validates the precision

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.device_type, self.precision):
            out = self.model(images)
        return out.cls_logits.float(), out.box_deltas.float()


class _OnnxNetwork:
    """Shared part of the ONNX-based backends: export the network graph once."""

    name = "onnx"

    def __init__(
        self,
        model: nn.Module,
        image_size: int,
        onnx_path: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        if not backend_available(self.name):
            raise BackendError(
                f"backend {self.name!r} needs the {_MODULES[self.name]} package: pip install 'ssd512[deploy]'"
            )
        if next(model.parameters()).device.type != "cpu":
            raise BackendError(f"backend {self.name!r} runs on the CPU; build the model on device cpu")
        from ssd.config import Config
        from ssd.inference.export import export_onnx
        from ssd.inference.settings import InferenceSettings

        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if onnx_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ssd512-onnx-")
            onnx_path = Path(self._tmp.name) / "network.onnx"
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.exists():
            # the network graph needs only the input size of the settings
            settings = dataclasses.replace(InferenceSettings.from_config(Config()), image_size=image_size)
            export_onnx(model, self.onnx_path, settings)  # type: ignore[arg-type]
        self.threads = threads or torch.get_num_threads()
        self._load()

    def _load(self) -> None:
        """Open `self.onnx_path` with the backend's runtime (`self.threads` threads)."""
        raise NotImplementedError

    @staticmethod
    def _outputs(logits: Any, deltas: Any) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(logits), torch.from_numpy(deltas)


class OnnxRuntimeNetwork(_OnnxNetwork):
    """ONNX Runtime, CPU execution provider, all graph optimisations, `threads` intra-op threads
    (default: PyTorch's thread count)."""

    name = "onnxruntime"

    def _load(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(str(self.onnx_path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        logits, deltas = self.session.run(None, {"images": images.detach().float().cpu().numpy()})
        return self._outputs(logits, deltas)


class OpenVinoNetwork(_OnnxNetwork):
    """OpenVINO CPU plugin on the ONNX graph, compiled once per input shape (static shapes let it
    plan memory and pick kernels) with the latency hint and `threads` inference threads."""

    name = "openvino"

    def _load(self) -> None:
        import openvino as ov

        self._core = ov.Core()
        self._config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(self.threads)}
        self._compiled: dict[tuple[int, ...], Any] = {}

    def _compile(self, shape: tuple[int, ...]) -> Any:
        if shape not in self._compiled:
            graph = self._core.read_model(str(self.onnx_path))
            graph.reshape({"images": list(shape)})
            self._compiled[shape] = self._core.compile_model(graph, "CPU", self._config)
            log.info("OpenVINO compiled the network for input %s", list(shape))
        return self._compiled[shape]

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = images.detach().float().cpu().contiguous().numpy()
        compiled = self._compile(tuple(x.shape))
        result = compiled([x])
        return self._outputs(result[compiled.output(0)], result[compiled.output(1)])


def build_network(
    backend: str,
    model: nn.Module,
    image_size: int,
    *,
    precision: str = "fp32",
    channels_last: bool = False,
    onnx_path: str | Path | None = None,
    threads: int | None = None,
) -> Network:
    """The network of `model` (eval mode, on its device) as run by `backend`. `precision` and
    `channels_last` apply to eager; the ONNX backends compute in fp32 on the CPU."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "eager":
        return EagerNetwork(model, precision, channels_last)
    if precision != "fp32":
        raise BackendError(f"backend {backend!r} runs in fp32; got precision {precision!r}")
    if backend == "onnxruntime":
        return OnnxRuntimeNetwork(model.eval(), image_size, onnx_path, threads)
    return OpenVinoNetwork(model.eval(), image_size, onnx_path, threads)
