"""The SD 2.1-base DDPM noise schedule and the few formulas every other module calls.

SD 2.1-base is an ε-prediction model trained with a ``scaled_linear`` β schedule from 0.00085 to 0.012 over
T = 1000 steps (DESIGN §2). ᾱ_τ is ``alphas_cumprod[τ]``. Fractional τ (the stage-2 map τ(t) = t·tau_max) is
interpolated linearly between the two neighbouring integer steps, which is what makes τ(t) continuous in t.
"""
from __future__ import annotations

import torch
from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
GENERATOR_TIMESTEP = NUM_TRAIN_TIMESTEPS - 1  # OSEDiff's one-step generator runs the UNet at τ_g = 999


def alphas_cumprod(
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    beta_start: float = BETA_START,
    beta_end: float = BETA_END,
) -> Tensor:
    """ᾱ_τ for τ = 0 … T−1 of the ``scaled_linear`` schedule, float64 (T,)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


class NoiseSchedule(torch.nn.Module):
    """Holds ᾱ as a buffer (so it follows the module's device) and evaluates the DDPM relations.

    Every ``tau`` argument is a tensor of shape (B,) (or a scalar), integer or float; the returned
    coefficients broadcast against latents of shape (B, C, h, w).
    """

    def __init__(self, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> None:
        super().__init__()
        self.num_train_timesteps = num_train_timesteps
        self.register_buffer("alphas_cumprod", alphas_cumprod(num_train_timesteps).float(), persistent=False)

    def alpha_bar(self, tau: Tensor | float, ndim: int = 4) -> Tensor:
        """ᾱ_τ, linearly interpolated for fractional τ, shaped (B, 1, …, 1) with ``ndim`` dims.

        τ must lie in [0, T−1]; it is not checked here (no host sync in the hot path): the user-facing entry
        points (t of the control model, τ ranges of the configs) validate it.
        """
        ac = self.alphas_cumprod
        tau = torch.as_tensor(tau, device=ac.device, dtype=torch.float32).reshape(-1)
        lo = tau.floor().long().clamp(max=self.num_train_timesteps - 1)
        hi = (lo + 1).clamp(max=self.num_train_timesteps - 1)
        frac = tau - lo.float()
        a = ac[lo] * (1 - frac) + ac[hi] * frac
        return a.reshape(-1, *([1] * (ndim - 1)))

    def add_noise(self, z0: Tensor, noise: Tensor, tau: Tensor | float) -> Tensor:
        """Forward process q(z_τ | z0): z_τ = √ᾱ_τ·z0 + √(1−ᾱ_τ)·n."""
        a = self.alpha_bar(tau, z0.ndim).to(z0.dtype)
        return a.sqrt() * z0 + (1 - a).sqrt() * noise

    def x0_from_eps(self, z_t: Tensor, eps: Tensor, tau: Tensor | float) -> Tensor:
        """ẑ0 = (z_τ − √(1−ᾱ_τ)·ε) / √ᾱ_τ."""
        a = self.alpha_bar(tau, z_t.ndim).to(z_t.dtype)
        return (z_t - (1 - a).sqrt() * eps) / a.sqrt()

    def eps_from_x0(self, z_t: Tensor, z0: Tensor, tau: Tensor | float) -> Tensor:
        """ε = (z_τ − √ᾱ_τ·z0) / √(1−ᾱ_τ): the exact ε of a denoiser whose clean estimate is z0."""
        a = self.alpha_bar(tau, z_t.ndim).to(z_t.dtype)
        return (z_t - a.sqrt() * z0) / (1 - a).sqrt()

    def sample_timesteps(
        self, batch: int, tau_min: int, tau_max: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """τ ~ U{tau_min, …, tau_max}, one per sample (B,) long."""
        return torch.randint(
            tau_min, tau_max + 1, (batch,), generator=generator, device=self.alphas_cumprod.device
        )


def tau_of_t(t: Tensor, tau_max: float = GENERATOR_TIMESTEP) -> Tensor:
    """Stage-2 timestep map τ(t) = t·tau_max, kept as a float (diffusers accepts float timesteps)."""
    return t.float() * tau_max
