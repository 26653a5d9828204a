"""Real-time chunking (RTC; Black et al. 2025): sample the next action
chunk while the current one is still executing, so that it joins the current one smoothly.

The next chunk is started from an observation taken when s actions of the current chunk A_prev have
been executed (s: the execution horizon); inference takes d control steps (the inference delay), during
which A_prev[s : s + d] are executed. So the first d actions of the new chunk are frozen to those, and
the rest is inpainted toward the remaining A_prev[s + d :] with a soft mask. Guidance is applied at every
Euler step through the true vector-Jacobian product of the data-end estimate (torch.autograd through
the model's denoising step), not the Jacobian-free shortcut.

Time convention. The paper integrates tau from 0 (noise) to 1 (data). vlaflow follows the reference
(openpi): t = 1 is noise, t = 0 is data, x_t = t * noise + (1 - t) * actions, v = dx/dt ~ noise - actions,
Euler steps of dt = -1/n from t = 1. With tau = 1 - t and v_paper = -v:

* data-end estimate:  x0_hat = x_t - t * v(x_t, t)              (paper: x_tau + (1 - tau) v_paper)
* error:              e = W * (Y - x0_hat),  Y = A_prev[s:] padded to H (weights 0 where Y is padding)
* correction:         g = e^T d x0_hat / d x_t                   (a vector-Jacobian product)
* weight:             w = min(beta, (t^2 + (1 - t)^2) / (t (1 - t)))
                      (paper: ((1 - tau) / tau) * (tau^2 + (1 - tau)^2) / (1 - tau)^2)
* guided velocity:    v_guided = v - w * g                      (paper: v_paper + w * g)

so that x_{t+dt} = x_t + dt * v_guided moves x toward the frozen / inpainted actions. All of this runs in
the model's normalized action space; `Policy` maps the previous chunk there from robot units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlaflow.inference import DELAY_KEY, PREV_ACTIONS_KEY
from vlaflow.models import VLA, Observation


@dataclass(frozen=True)
class RTCConfig:
    """`beta` clips the guidance weight (the paper: 5; about 10 for 10-step flows, the default here)."""

    beta: float = 10.0

    def __post_init__(self) -> None:
        if not (isinstance(self.beta, int | float) and self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"rtc beta must be a positive finite number, got {self.beta!r}")


def soft_mask(horizon: int, delay: int, overlap: int) -> Tensor:
    """(horizon,) weights: 1 on the first `delay` (frozen) steps, c (e^c - 1) / (e - 1) with
    c = (overlap - i) / (overlap - delay + 1) for delay <= i < overlap, 0 from `overlap` on, where
    overlap = H - s is how many actions of the previous chunk remain (the paper's Eq. 5)."""
    if not 0 <= delay <= overlap <= horizon:
        raise ValueError(
            f"rtc needs 0 <= delay ({delay}) <= overlap ({overlap}, the previous chunk's remaining actions) "
            f"<= horizon ({horizon})"
        )
    i = torch.arange(horizon, dtype=torch.float32)
    c = (overlap - i) / (overlap - delay + 1)
    decay = c * torch.expm1(c) / math.expm1(1.0)
    return torch.where(i < delay, 1.0, torch.where(i < overlap, decay, 0.0))


def guidance_weight(t: Tensor, beta: float) -> Tensor:
    """min(beta, (t^2 + (1 - t)^2) / (t (1 - t))) in the reference's time (t = 1 noise, t = 0 data)."""
    raw = (t**2 + (1 - t) ** 2) / (t * (1 - t))
    return torch.nan_to_num(raw, nan=beta, posinf=beta).clamp(max=beta)


def data_estimate_vjp(
    velocity: Callable[[Tensor, Tensor], Tensor],
    x_t: Tensor,
    t: Tensor,
    cotangent: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """(v, u^T d x0_hat / d x_t) at x_t, where x0_hat = x_t - t v(x_t, t), u = cotangent(x0_hat) and
    `t` is (B,): one backward pass through the velocity, never the Jacobian itself."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        v = velocity(x, t)
        x0_hat = x - t[:, None, None] * v
        (vjp,) = torch.autograd.grad(x0_hat, x, grad_outputs=cotangent(x0_hat.detach()))
    return v.detach(), vjp


def guided_velocity(
    velocity: Callable[[Tensor, Tensor], Tensor], target: Tensor, weights: Tensor, beta: float
) -> Callable[[Tensor, Tensor], Tensor]:
    """The velocity field (x_t, t) -> v_guided that pulls the data-end estimate toward `target`
    (B, H, D) with per-element `weights` (B, H, D); see the module docstring."""

    def step(x_t: Tensor, t: Tensor) -> Tensor:
        v, g = data_estimate_vjp(velocity, x_t, t, lambda x0_hat: weights * (target - x0_hat))
        return v - guidance_weight(t, beta)[:, None, None] * g

    return step


def sample_guided(
    model: VLA,
    obs: Observation,
    noise: Tensor,
    num_steps: int,
    target: Tensor,
    weights: Tensor,
    delays: list[int],
    config: RTCConfig,
    text: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """(B, H, D) actions sampled with RTC guidance toward `target` under `weights` (rows of
    `soft_mask` times the real action dimensions); the first `delays[b]` steps of sample b are then
    set exactly to its target (frozen: they are executed from the previous chunk anyway). `text`
    conditions the chunk as in `VLA.sample_actions` (e.g. a decoded subtask)."""
    target, weights = target.to(noise.device), weights.to(noise.device)
    prefix = model.prefill(obs, text)
    field = guided_velocity(lambda x, t: model.denoise_step(prefix, x, t), target, weights, config.beta)
    with torch.no_grad():
        actions = model.integrate(field, noise, num_steps)
    real = weights.amax(dim=1, keepdim=True) > 0  # (B, 1, D): dimensions the previous chunk has
    for b, d in enumerate(delays):
        actions[b, :d] = torch.where(real[b], target[b, :d], actions[b, :d])
    return actions


def policy_guidance(
    observations: Sequence[Mapping[str, Any]],
    to_model: Callable[[np.ndarray, np.ndarray], np.ndarray],
    raw_states: np.ndarray,
    horizon: int,
    action_dim: int,
) -> tuple[Tensor, Tensor, list[int]]:
    """Target (B, H, action_dim), weights (B, H, action_dim) and delays of raw observations carrying
    `PREV_ACTIONS_KEY` (L, A) in robot units and `DELAY_KEY`; `to_model(actions, state)` maps robot
    actions into the model's normalized space. An observation without them gets zero weights."""
    target = torch.zeros(len(observations), horizon, action_dim)
    weights = torch.zeros_like(target)
    delays = []
    for b, (o, state) in enumerate(zip(observations, raw_states, strict=True)):
        if PREV_ACTIONS_KEY not in o:
            delays.append(0)
            continue
        prev = np.asarray(o[PREV_ACTIONS_KEY], dtype=np.float32)
        if prev.ndim != 2 or prev.shape[0] > horizon or not np.isfinite(prev).all():
            raise ValueError(
                f"observation {b}: {PREV_ACTIONS_KEY} must be finite actions of shape (L, A) with L <= "
                f"{horizon}, got {prev.shape}"
            )
        delay = o.get(DELAY_KEY, 0)
        if not isinstance(delay, int | np.integer) or not 0 <= delay <= len(prev):
            raise ValueError(
                f"observation {b}: {DELAY_KEY} must be an int in [0, {len(prev)}] (the previous chunk's "
                f"remaining actions), got {delay!r}"
            )
        normalized = torch.from_numpy(np.asarray(to_model(prev, state), dtype=np.float32))
        a = normalized.shape[1]
        target[b, : len(prev), :a] = normalized
        weights[b, :, :a] = soft_mask(horizon, int(delay), len(prev))[:, None]
        delays.append(int(delay))
    return target, weights, delays
