"""vlaflow: fast, faithful PyTorch pi0 / pi0.5 vision-language-action models."""

from vlaflow.models import VLA, Observation, VLAConfig, preset

__all__ = ["VLA", "Observation", "VLAConfig", "preset"]
__version__ = "0.1.0"
