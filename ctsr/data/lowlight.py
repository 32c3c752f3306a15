"""Synthetic darkening: low-light inputs made from normal-light photos on the device (``task: lle`` without pairs:
the tiny and mini worlds, validation folders of normal-light images).

Per sample, drawn from a ``torch.Generator``: x_low = k · x^γ (exposure k, a gamma that darkens the mid-tones more
than the highlights), then sensor noise — Poisson shot noise at ``photons`` electrons for a full-scale pixel, and
Gaussian read noise σ — and 8-bit quantisation. The ranges are a plausible low-light camera, not LOL-v2's own
synthesis (which adjusted RAW images' illumination histograms); use LOL-v2's pairs for the paper's numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from ctsr.errors import check


@dataclass
class DarkeningConfig:
    exposure: tuple[float, float] = (0.08, 0.35)  # k
    gamma: tuple[float, float] = (1.0, 2.0)        # γ ≥ 1 darkens the mid-tones
    photons: tuple[float, float] = (200.0, 2000.0)  # full-scale electrons of the shot noise (more: less noise)
    read_noise: tuple[float, float] = (0.0, 0.01)  # σ of the Gaussian read noise, in [0, 1] units

    def __post_init__(self) -> None:
        for name in ("exposure", "gamma", "photons", "read_noise"):
            lo, hi = getattr(self, name)
            check(0 <= lo <= hi, f"degradation.config.{name}", f"must be a range 0 ≤ low ≤ high, got {(lo, hi)}")
        check(self.exposure[1] <= 1 and self.exposure[0] > 0, "degradation.config.exposure", "must lie in (0, 1]")
        check(self.photons[0] > 0, "degradation.config.photons", "must be > 0")


class SyntheticDarkening(nn.Module):
    """Normal-light images (B, 3, H, W) in [0, 1] → low-light images of the same size, 8-bit levels.

    ``forward(hr, generator=…)`` in training (one stream for the batch), ``forward(hr, seeds=…)`` in evaluation
    (image b darkened alone with ``torch.Generator(device).manual_seed(seeds[b])``: independent of the batch).
    """

    def __init__(self, config: DarkeningConfig | None = None) -> None:
        super().__init__()
        self.config = config or DarkeningConfig()

    @staticmethod
    def _uniform(n: int, bounds: tuple[float, float], generator: torch.Generator | None, device) -> Tensor:
        lo, hi = bounds
        return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)

    def _darken(self, hr: Tensor, generator: torch.Generator | None) -> Tensor:
        c, b, dev = self.config, hr.shape[0], hr.device
        k = self._uniform(b, c.exposure, generator, dev).view(-1, 1, 1, 1)
        gamma = self._uniform(b, c.gamma, generator, dev).view(-1, 1, 1, 1)
        photons = self._uniform(b, c.photons, generator, dev).view(-1, 1, 1, 1)
        sigma = self._uniform(b, c.read_noise, generator, dev).view(-1, 1, 1, 1)
        clean = k * hr.float().clamp(0, 1).pow(gamma)
        shot = torch.poisson(clean * photons, generator=generator) / photons
        noisy = shot + sigma * torch.randn(hr.shape, generator=generator, device=dev)
        return (noisy.clamp(0, 1) * 255).round() / 255

    @torch.no_grad()
    def forward(self, hr: Tensor, generator: torch.Generator | None = None,
                seeds: Tensor | Sequence[int] | None = None) -> Tensor:
        if seeds is None:
            return self._darken(hr, generator)
        if generator is not None:
            raise ValueError("give either a generator or per-image seeds, not both")
        seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, Tensor) else seeds)]
        if len(seeds) != hr.shape[0]:
            raise ValueError(f"need one seed per image ({hr.shape[0]}), got {len(seeds)}")
        return torch.cat([self._darken(hr[i:i + 1], torch.Generator(hr.device).manual_seed(s))
                          for i, s in enumerate(seeds)])
