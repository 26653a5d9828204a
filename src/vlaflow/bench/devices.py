"""What the hardware can do at best: memory bandwidth by GPU, and the physical floor of a call.

The floor of a sampling call is the larger of two times: its matmul FLOPs at the device's dense
peak (`vlaflow.models.flops.peak_flops`, from the vendors' datasheets) and the bytes of weights it
must read at the memory bandwidth. Bandwidths are the datasheets' HBM / GDDR figures in TB/s;
patterns are searched in the lower-cased `torch.cuda.get_device_name`, first match wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from vlaflow.models import VLA
from vlaflow.models.flops import peak_flops, sampling_flops

_BANDWIDTH_TBPS: tuple[tuple[str, float], ...] = (
    (r"h200", 4.8),  # H200 SXM (NVL: 4.8 too)
    (r"h100.*(pcie|hbm2e)", 2.0),
    (r"h100 nvl", 3.9),
    (r"h100", 3.35),  # H100 SXM
    (r"a100.*80", 2.0),
    (r"a100", 1.555),
    (r"l40s", 0.864),
    (r"a10g", 0.6),
    (r"rtx 4090", 1.008),
)


def bandwidth(device: torch.device) -> float | None:
    """Memory bandwidth in bytes/s of a known CUDA device, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    return next((tbps * 1e12 for pattern, tbps in _BANDWIDTH_TBPS if re.search(pattern, name)), None)


def sampling_weight_bytes(model: VLA, num_steps: int) -> float:
    """Weight bytes one `sample_actions` call must read: the vision tower, projector and VLM
    layers once (the token embedding only by the rows it looks up, not counted), the expert's
    layers, final norm and flow heads once per step."""
    t = model.transformer

    def size(modules) -> float:
        return float(sum(p.numel() * p.element_size() for m in modules for p in m.parameters()))

    once = size([model.vision, model.vision_proj, t.norms[0], *(layer.experts[0] for layer in t.layers)])
    heads = [m for name, m in model.named_children() if name not in ("vision", "vision_proj", "transformer")]
    per_step = size([t.norms[1], *(layer.experts[1] for layer in t.layers), *heads])
    return once + num_steps * per_step


@dataclass
class Floor:
    """The floor of one call in ms: compute (FLOPs / peak), memory (weights / bandwidth), and
    their maximum; None where the device's figure is unknown."""

    tflop: float
    weight_gb: float
    compute_ms: float | None
    memory_ms: float | None

    @property
    def floor_ms(self) -> float | None:
        known = [t for t in (self.compute_ms, self.memory_ms) if t is not None]
        return max(known) if known else None


def sampling_floor(model: VLA, *, batch_size: int, num_steps: int, device: torch.device) -> Floor:
    flops = sampling_flops(model.config, batch_size=batch_size, num_steps=num_steps).total
    weights = sampling_weight_bytes(model, num_steps)
    peak, bw = peak_flops(device, model.dtype), bandwidth(device)
    return Floor(
        tflop=flops / 1e12,
        weight_gb=weights / 1e9,
        compute_ms=flops / peak * 1e3 if peak else None,
        memory_ms=weights / bw * 1e3 if bw else None,
    )
