"""Colour correction after decoding, as OSEDiff and StableSR do it: the SR output keeps its detail and takes its
colours from the bicubic-upscaled LR image.

- ``adain`` (OSEDiff's default): per image and channel, match the output's mean and standard deviation to the
  reference's (adaptive instance normalisation, Huang & Belongie 2017).
- ``wavelet`` (StableSR's ``wavelet_color_fix``): a 5-level à-trous decomposition with a 3×3 binomial kernel;
  the output's high frequencies plus the reference's lowest band.
- ``none``.

Functions take (B, 3, H, W) in [0, 1] of the same size and return (B, 3, H, W) clamped to [0, 1]; they compute in
float32 whatever the input dtype.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ctsr.choices import COLOR_FIXES

ColorFix = Literal["adain", "wavelet", "none"]


def _mean_std(x: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    flat = x.flatten(2)
    return flat.mean(-1)[..., None, None], (flat.var(-1) + eps).sqrt()[..., None, None]


def adain(sr: Tensor, reference: Tensor) -> Tensor:
    """``sr`` with each channel's mean and std replaced by those of ``reference`` (OSEDiff ``adain_color_fix``)."""
    sr, reference = sr.float(), reference.float()
    mean_sr, std_sr = _mean_std(sr)
    mean_ref, std_ref = _mean_std(reference)
    return ((sr - mean_sr) / std_sr * std_ref + mean_ref).clamp(0, 1)


def _wavelet_blur(x: Tensor, radius: int) -> Tensor:
    kernel = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=x.dtype, device=x.device) / 16
    kernel = kernel.expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (radius,) * 4, mode="replicate"), kernel, groups=x.shape[1], dilation=radius)


def wavelet_decomposition(x: Tensor, levels: int = 5) -> tuple[Tensor, Tensor]:
    """(high, low) with high + low = x: ``levels`` à-trous blurs at dilations 1, 2, 4, …"""
    high = torch.zeros_like(x)
    for i in range(levels):
        low = _wavelet_blur(x, 2**i)
        high += x - low
        x = low
    return high, x


def wavelet(sr: Tensor, reference: Tensor, levels: int = 5) -> Tensor:
    """High frequencies of ``sr`` + low frequencies of ``reference`` (StableSR ``wavelet_reconstruction``)."""
    high, _ = wavelet_decomposition(sr.float(), levels)
    _, low = wavelet_decomposition(reference.float(), levels)
    return (high + low).clamp(0, 1)


def color_fix(sr: Tensor, reference: Tensor, method: ColorFix = "adain") -> Tensor:
    """Dispatch on ``method``; ``none`` returns ``sr`` as float32, clamped."""
    if method == "adain":
        return adain(sr, reference)
    if method == "wavelet":
        return wavelet(sr, reference)
    if method == "none":
        return sr.float().clamp(0, 1)
    raise ValueError(f"color: unknown method {method!r} (one of {', '.join(COLOR_FIXES)})")
