"""ssd512: SSD512 (VGG-16) for industrial surface-defect detection, with priors fitted to the data."""

from ssd.config import Config, ConfigError, load_config, save_config
from ssd.inference.detector import Detector
from ssd.modeling.build import build_model
from ssd.priors.generator import generate_priors
from ssd.structures import Detections, HeadOutputs

__all__ = [
    "Config",
    "ConfigError",
    "Detections",
    "Detector",
    "HeadOutputs",
    "build_model",
    "generate_priors",
    "load_config",
    "save_config",
]
__version__ = "0.1.0"
