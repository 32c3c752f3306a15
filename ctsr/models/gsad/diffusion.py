"""GSAD's diffusion: the beta schedules and the conditional ancestral sampler, written for this project.

Followed: jinnh/GSAD ``model/ddpm_modules/diffusion.py`` (commit da56971): ``make_beta_schedule`` (l. 27, the
``linear`` case), ``GaussianDiffusion.set_new_noise_schedule`` (l. 98–144), ``predict_start_from_noise`` (l. 146),
``q_posterior`` (l. 150), ``p_mean_variance`` (l. 156–172), ``p_sample`` (l. 175–182) and the conditional branch of
``p_sample_loop`` (l. 184–210), as ``test.py`` (l. 104–148) runs it: the schedule switched to the config's ``val``
one, ``super_resolution(LQ)``, the last image kept.

The checkpoint is the state dict of the official ``GaussianDiffusion``: the UNet under ``denoise_fn.`` and the
twelve schedule buffers of the *training* schedule (500 steps; ``model/model.py`` sets it before loading, l. 39).
:class:`GSADDiffusion` has exactly that layout; sampling uses the test schedule (:data:`LOLV2_SYN_TEST`, 10 steps).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ctsr.models.gsad.unet import GSADUNet

BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
           "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
           "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")


@dataclass(frozen=True)
class BetaSchedule:
    """A ``beta_schedule`` block of GSAD's configs (only ``linear`` and ``quad`` are ported)."""

    schedule: str = "linear"
    n_timestep: int = 10
    linear_start: float = 2e-3
    linear_end: float = 8.4e-1

    def betas(self) -> np.ndarray:
        if self.schedule == "linear":
            return np.linspace(self.linear_start, self.linear_end, self.n_timestep, dtype=np.float64)
        if self.schedule == "quad":
            return np.linspace(self.linear_start ** 0.5, self.linear_end ** 0.5, self.n_timestep,
                               dtype=np.float64) ** 2
        raise ValueError(f"GSAD beta schedule '{self.schedule}' is not ported (linear, quad)")

    def tables(self) -> dict[str, np.ndarray]:
        """The official buffers (float64; stored as float32) and ``sqrt_alphas_cumprod_prev`` (the noise levels)."""
        betas = self.betas()
        alphas = 1.0 - betas
        ac = np.cumprod(alphas, axis=0)
        ac_prev = np.append(1.0, ac[:-1])
        var = betas * (1.0 - ac_prev) / (1.0 - ac)
        return {
            "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": np.sqrt(ac), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
            "log_one_minus_alphas_cumprod": np.log(1.0 - ac), "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1), "posterior_variance": var,
            "posterior_log_variance_clipped": np.log(np.maximum(var, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
            "sqrt_alphas_cumprod_prev": np.sqrt(np.append(1.0, ac)),
        }


TRAIN_SCHEDULE = BetaSchedule("linear", 500, 1e-4, 2e-2)      # every GSAD config's "train" block
LOLV2_SYN_TEST = BetaSchedule("linear", 10, 2e-3, 8.4e-1)     # config/lolv2_syn_test.json, "val"


class GSADDiffusion(nn.Module):
    """The official ``GaussianDiffusion`` layout (``denoise_fn`` + the schedule buffers) and its sampler.

    Args:
        denoise_fn: the UNet (default: the released LOL-v2-synthetic network).
        schedule: the schedule the buffers hold (the checkpoint's: :data:`TRAIN_SCHEDULE`).
        sampling: the schedule :meth:`sample` runs (:data:`LOLV2_SYN_TEST`), as the test script switches to it.
    """

    def __init__(self, denoise_fn: GSADUNet | None = None, schedule: BetaSchedule = TRAIN_SCHEDULE,
                 sampling: BetaSchedule = LOLV2_SYN_TEST) -> None:
        super().__init__()
        self.denoise_fn = denoise_fn if denoise_fn is not None else GSADUNet()
        for name, value in schedule.tables().items():
            if name in BUFFERS:
                self.register_buffer(name, torch.tensor(value, dtype=torch.float32))
        self.sampling = sampling
        self._tables = {k: torch.tensor(v, dtype=torch.float32) for k, v in sampling.tables().items()}

    @torch.no_grad()
    def sample(self, condition: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x_0 for the low-light ``condition`` (B, 3, H, W) in [−1, 1]: x_T ~ N(0, I), then T ancestral steps
        x_{t−1} = μ(x̂_0, x_t) + σ_t·z (no noise at the last step), x̂_0 from ε̂ clamped to [−1, 1].

        Noise is drawn on the CPU from ``generator`` (None: the global generator) in the official order — x_T,
        then one z per step t > 0 — and moved to the condition's device.
        """
        tab = {k: v.tolist() for k, v in self._tables.items()}
        b = condition.shape[0]

        def randn() -> Tensor:
            return torch.randn(condition.shape, generator=generator).to(condition.device, condition.dtype)

        x = randn()
        for t in reversed(range(self.sampling.n_timestep)):
            level = torch.full((b, 1), tab["sqrt_alphas_cumprod_prev"][t + 1], device=x.device, dtype=x.dtype)
            eps = self.denoise_fn(torch.cat([condition, x], dim=1), level)
            x0 = (tab["sqrt_recip_alphas_cumprod"][t] * x - tab["sqrt_recipm1_alphas_cumprod"][t] * eps).clamp(-1, 1)
            mean = tab["posterior_mean_coef1"][t] * x0 + tab["posterior_mean_coef2"][t] * x
            if t > 0:
                x = mean + randn() * torch.exp(0.5 * self._tables["posterior_log_variance_clipped"][t])
            else:
                x = mean
        return x
