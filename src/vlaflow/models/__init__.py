"""Neural-network code only: no file, data, server or simulator knowledge lives here."""

from vlaflow.models.config import GemmaConfig, SiglipConfig, VLAConfig
from vlaflow.models.observation import Observation
from vlaflow.models.presets import PRESETS, preset, reference_config
from vlaflow.models.targets import Losses, Targets
from vlaflow.models.vla import VLA

__all__ = [
    "PRESETS",
    "VLA",
    "GemmaConfig",
    "Losses",
    "Observation",
    "SiglipConfig",
    "Targets",
    "VLAConfig",
    "preset",
    "reference_config",
]
