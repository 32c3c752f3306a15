"""Reti-Diff's Retinex-based latent diffusion (RLDM) and the Retinex decomposition, written for this project.

Followed: ChunmingHe/Reti-Diff (commit 577a117) —
``Reti-Diff/archs/common.py`` (``ResBlock``, l. 10), ``Reti-Diff/archs/S2_interface_arch.py`` (``CPEN`` l. 360, the
image prior encoder; ``RCPEN`` l. 399, the Retinex prior encoder; ``ResMLP`` l. 466; ``denoise`` l. 478;
``RetiDiffS2_Interface`` l. 500–564), ``Reti-Diff/ldm/ddpm.py`` (``DDPM.register_schedule`` l. 62–102, ``p_sample``
l. 143–151, the inference branch of ``forward`` l. 215–223), ``Reti-Diff/ldm/util2.py`` (``make_beta_schedule``,
``linear``: √β evenly spaced) and ``Reti-Diff/models/S2_Interface_model.py`` (``Decom`` l. 88–106, the test-time
``pad_test`` / ``test`` l. 379–414).

The sampler is the official one at test time: x_T ~ N(0, I) of shape (B, 256), then T steps
x_{t−1} = coef1_t·x̂_0 + coef2_t·x_t with x̂_0 the denoiser's output (x0-parameterised, no clipping) and **no added
noise** (``p_sample`` returns the posterior mean). The only randomness is x_T: the Retinex chain's first, then the
image chain's — though each step still draws one unused noise tensor (``noise_like``), which
:meth:`ctsr.models.retidiff.RetiDiffEnhancer.draw` reproduces so that seeded runs match the official ones.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

FEATS = 64   # the prior networks' width, fixed by RetiDiffS2_Interface (n_feats=64)

SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")


def _lrelu() -> nn.Module:
    return nn.LeakyReLU(0.1, True)


class ResBlock(nn.Module):
    """conv3 → LeakyReLU(0.1) → conv3, + x (``common.ResBlock``: ``body.0`` / ``body.2``)."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feats, n_feats, 3, padding=1), _lrelu(),
                                  nn.Conv2d(n_feats, n_feats, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + x


def _tail(n_feats: int, out: int) -> list[nn.Module]:
    return [nn.Conv2d(n_feats, n_feats * 2, 3, padding=1), _lrelu(), nn.Conv2d(n_feats * 2, n_feats * 2, 3, padding=1),
            _lrelu(), nn.Conv2d(n_feats * 2, out, 3, padding=1), _lrelu(), nn.AdaptiveAvgPool2d(1)]


def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), _lrelu(), nn.Linear(width, width), _lrelu())


class ImagePriorEncoder(nn.Module):
    """``CPEN``: pixel-unshuffle ×4 → convs and residual blocks → global average → MLP: (B, 4·n_feats)."""

    def __init__(self, input_channels: int = 48, n_feats: int = FEATS, n_encoder_res: int = 5) -> None:
        super().__init__()
        self.E = nn.Sequential(nn.Conv2d(input_channels, n_feats, 3, padding=1), _lrelu(),
                               *[ResBlock(n_feats) for _ in range(n_encoder_res)], *_tail(n_feats, n_feats * 4))
        self.mlp = _mlp(n_feats * 4)
        self.pixel_unshuffle = nn.PixelUnshuffle(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.E(self.pixel_unshuffle(x)).flatten(1))


class RetinexPriorEncoder(nn.Module):
    """``RCPEN``: the unshuffled Retinex map split into reflectance (first 48 channels) and illumination (last 16),
    one branch each — their residual blocks are the *same* modules (the official code puts one list in both
    ``E_R`` and ``E_I``) — to (B, 3·n_feats) and (B, n_feats), concatenated."""

    def __init__(self, input_channels: int = 64, n_feats: int = FEATS, n_encoder_res: int = 5) -> None:
        super().__init__()
        shared = [ResBlock(n_feats) for _ in range(n_encoder_res)]
        self.E_R = nn.Sequential(nn.Conv2d(int(input_channels / 4 * 3), n_feats, 3, padding=1), _lrelu(), *shared,
                                 *_tail(n_feats, n_feats * 3))
        self.E_I = nn.Sequential(nn.Conv2d(int(input_channels / 4), n_feats, 3, padding=1), _lrelu(), *shared,
                                 *_tail(n_feats, n_feats))
        self.mlp_R = _mlp(n_feats * 3)
        self.mlp_I = _mlp(n_feats)
        self.pixel_unshuffle = nn.PixelUnshuffle(4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pixel_unshuffle(x)
        r = self.mlp_R(self.E_R(x[:, :48]).flatten(1))
        i = self.mlp_I(self.E_I(x[:, 48:]).flatten(1))
        return torch.cat([r, i], dim=1)


class PriorDenoiser(nn.Module):
    """``denoise``: an MLP on [condition, t / (10·T), x_t] predicting x̂_0 (``resmlp.0``, then ResMLP blocks)."""

    def __init__(self, n_feats: int = FEATS, n_denoise_res: int = 1, timesteps: int = 4) -> None:
        super().__init__()
        self.max_period = timesteps * 10
        width = 4 * n_feats
        self.resmlp = nn.Sequential(nn.Linear(width * 2 + 1, width), _lrelu(),
                                    *[_ResMLP(width) for _ in range(n_denoise_res)])

    def forward(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        t = (t.float() / self.max_period).view(-1, 1)
        return self.resmlp(torch.cat([c, t, x], dim=1))


class _ResMLP(nn.Module):
    """``ResMLP``: Linear → LeakyReLU(0.1) (no skip, despite the name)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.resmlp = nn.Sequential(nn.Linear(width, width), _lrelu())

    def forward(self, x: Tensor) -> Tensor:
        return self.resmlp(x)


def linear_betas(timesteps: int, linear_start: float, linear_end: float) -> np.ndarray:
    """``make_beta_schedule('linear')`` of LDM: √β evenly spaced in float64, squared."""
    return (torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64,
                           device="cpu") ** 2).numpy()


class LatentDDPM(nn.Module):
    """The prior diffusion (``ldm/ddpm.py::DDPM``) in the official layout: ``model`` (the denoiser), ``condition``
    (the prior encoder) and the schedule buffers; :meth:`sample` is its inference ``forward``."""

    def __init__(self, denoise: PriorDenoiser, condition: nn.Module, n_feats: int = FEATS, timesteps: int = 4,
                 linear_start: float = 0.1, linear_end: float = 0.99) -> None:
        super().__init__()
        self.model = denoise
        self.condition = condition
        self.channels = n_feats
        self.num_timesteps = timesteps
        betas = linear_betas(timesteps, linear_start, linear_end)
        alphas = 1.0 - betas
        ac = np.cumprod(alphas, axis=0)
        ac_prev = np.append(1.0, ac[:-1])
        var = betas * (1.0 - ac_prev) / (1.0 - ac)   # v_posterior = 0
        tables = {
            "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev, "sqrt_alphas_cumprod": np.sqrt(ac),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac), "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac), "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
            "posterior_variance": var, "posterior_log_variance_clipped": np.log(np.maximum(var, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        }
        for name in SCHEDULE_BUFFERS:
            self.register_buffer(name, torch.tensor(tables[name], dtype=torch.float32))

    def sample(self, source: Tensor, x_T: Tensor) -> Tensor:
        """The prior (B, 4·n_feats) for ``source`` (the image or its Retinex map) from the start ``x_T``."""
        c = self.condition(source)
        x = x_T
        b = x.shape[0]
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((b,), i, device=x.device, dtype=torch.long)
            x0 = self.model(x, t, c)
            x = self.posterior_mean_coef1[t].view(b, 1) * x0 + self.posterior_mean_coef2[t].view(b, 1) * x
        return x


class RetinexDecomposition(nn.Module):
    """The frozen decomposition net of the test model (``Decom``, ``retinex_decomnet.pth``): four 3×3 convs (32
    channels, LeakyReLU(0.2)), ReLU → reflectance R (3 channels) and illumination L (1)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        act = nn.LeakyReLU(0.2, inplace=True)
        self.decom = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), act, nn.Conv2d(width, width, 3, padding=1), act,
                                   nn.Conv2d(width, width, 3, padding=1), act, nn.Conv2d(width, 4, 3, padding=1),
                                   nn.ReLU())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.decom(x)
        return out[:, :3], out[:, 3:4]
