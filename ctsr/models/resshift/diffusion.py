"""ResShift's residual-shifting Markov chain and its sampler, in the autoencoder's latent space.

Followed: zsyOAOA/ResShift ``models/gaussian_diffusion.py`` (``get_named_eta_schedule``, ``GaussianDiffusion``:
``prior_sample``, ``p_mean_variance``, ``p_sample``, ``p_sample_loop``, ``_scale_input``, ``encode_first_stage`` /
``decode_first_stage``) at commit 3ce1d81e, and SinSR's one-step variant (wyf0912/SinSR ``models/gaussian_diffusion.py``,
``p_sample_loop_progressive(one_step=True)``, commit f1735490).

The chain (ResShift, eq. 1–2): q(x_t | x_0, y) = N(x_0 + η_t (y − x_0), κ² η_t I), η_1 → 0, η_T → 1; sampling starts
at x_T = y + κ √η_T ε and walks the posterior q(x_{t−1} | x_t, x̂_0) with the network's x̂_0 = f(x_t, y, t):
mean = (η_{t−1}/η_t) x_t + (α_t/η_t) x̂_0, variance κ² (η_{t−1}/η_t) α_t, α_t = η_t − η_{t−1}. Here y is the
latent of the bicubic ×4 upsample of the LR image and the network input is normalised by √(κ² η_t + 1).
Coefficients are computed in float64 and cast to float32 as the official code does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def eta_schedule(steps: int, min_noise_level: float, etas_end: float = 0.99, kappa: float = 2.0,
                 power: float = 0.3, start_floor: float | None = None) -> np.ndarray:
    """√η_t for t = 1…T, ResShift's ``exponential`` schedule (float64, shape (T,)).

    √η_1 = min(min_noise_level/κ, min_noise_level[, start_floor]), √η_T = etas_end, geometric in a power-warped time.
    SinSR's copy of the function adds ``start_floor = √0.001`` (inactive at its configuration).
    """
    start = min(min_noise_level / kappa, min_noise_level)
    if start_floor is not None:
        start = min(start, start_floor)
    increaser = math.exp(1 / (steps - 1) * math.log(etas_end / start))
    warped = np.linspace(0, 1, steps, endpoint=True) ** power * (steps - 1)
    return np.power(np.full(steps, increaser), warped) * start


@dataclass(frozen=True)
class ShiftSchedule:
    """A released configuration of the chain."""

    steps: int
    min_noise_level: float
    kappa: float = 2.0
    etas_end: float = 0.99
    power: float = 0.3
    start_floor: float | None = None
    one_step: bool = False          # SinSR: return the first x̂_0 (from x_T at t = T−1)
    scale_factor: float = 1.0       # latent scale (1.0 in both releases)
    sf: int = 4                     # the SR factor of the bicubic upsample before encoding


# ResShift v3 (configs/realsr_swinunet_realesrgan256_journal.yaml) and SinSR v1 (configs/SinSR.yaml: ResShift v1's
# 15-step chain, sampled in one step).
RESSHIFT_V3 = ShiftSchedule(steps=4, min_noise_level=0.2)
SINSR_V1 = ShiftSchedule(steps=15, min_noise_level=0.04, start_floor=math.sqrt(0.001), one_step=True)


class ResidualShiftSampler(nn.Module):
    """The chain's float32 coefficient tables and the sampling loop (no parameters)."""

    def __init__(self, schedule: ShiftSchedule = RESSHIFT_V3) -> None:
        super().__init__()
        self.schedule = schedule
        s = schedule
        sqrt_etas = eta_schedule(s.steps, s.min_noise_level, s.etas_end, s.kappa, s.power, s.start_floor)
        etas = sqrt_etas ** 2
        etas_prev = np.append(0.0, etas[:-1])
        alpha = etas - etas_prev
        variance = s.kappa ** 2 * etas_prev / etas * alpha
        log_variance = np.log(np.append(variance[1], variance[1:]))   # clipped at t = 0, where no noise is added
        tables = {
            "sqrt_etas": sqrt_etas, "etas": etas, "prior_std": s.kappa * sqrt_etas,
            "mean_coef_xt": etas_prev / etas, "mean_coef_x0": alpha / etas, "log_variance": log_variance,
        }
        for name, values in tables.items():
            self.register_buffer(name, torch.from_numpy(values).float(), persistent=False)

    @property
    def steps(self) -> int:
        return self.schedule.steps

    def _at(self, table: Tensor, t: int, like: Tensor) -> Tensor:
        return table[t].to(like.device)

    def scale_input(self, z_t: Tensor, t: int) -> Tensor:
        """The network's input z_t / √(κ² η_t + 1) (``normalize_input`` with ``latent_flag``)."""
        return z_t / torch.sqrt(self._at(self.etas, t, z_t) * self.schedule.kappa ** 2 + 1)

    @torch.no_grad()
    def sample(self, unet: nn.Module, autoencoder: nn.Module, y: Tensor,
               generator: torch.Generator | None = None) -> Tensor:
        """One chain: y (B, 3, h, w) LR in [−1, 1] → (B, 3, sf·h, sf·w), not clamped.

        Noise is drawn on the CPU from ``generator`` (the global generator if None) in the official order: the
        prior's ε first, then one ε per step t > 0; a seed gives the same images on any device.
        """
        s = self.schedule
        net_dtype = _dtype(unet)   # a half-precision copy (``.half()``) runs in its dtype; the chain stays in y's
        y_up = F.interpolate(y, scale_factor=s.sf, mode="bicubic")
        z_y = autoencoder.encode(y_up.type(_dtype(autoencoder))).type(y.dtype) * s.scale_factor
        noise = torch.randn(z_y.shape, generator=generator, dtype=z_y.dtype).to(z_y.device)
        z = z_y + self._at(self.prior_std, s.steps - 1, z_y) * noise
        for t in reversed(range(s.steps)):
            ts = torch.full((y.shape[0],), t, device=y.device, dtype=torch.long)
            x0 = unet(self.scale_input(z, t).type(net_dtype), ts, lq=y.type(net_dtype)).type(z.dtype)
            if s.one_step:
                z = x0
                break
            z = self._at(self.mean_coef_xt, t, z) * z + self._at(self.mean_coef_x0, t, z) * x0
            if t > 0:
                eps = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
                z = z + torch.exp(0.5 * self._at(self.log_variance, t, z)) * eps
        out = autoencoder.decode((z / s.scale_factor).type(_dtype(autoencoder)))
        return out.type(y.dtype)


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype
