"""Fidelity metrics as plain functions: the Y channel of BT.601 YCbCr, border crop, per-image PSNR and SSIM.

The protocol follows BasicSR (``rgb2ycbcr_pt(y_only=True)``, ``calculate_psnr_pt``/``calculate_ssim_pt``) as used by
OSEDiff: Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255 on [0, 1] inputs, an 11x11 Gaussian window with
sigma 1.5 for SSIM, scores per image then averaged over images. PSNR and SSIM themselves come from torchmetrics.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

ColorSpace = Literal["y", "rgb"]

# ITU-R BT.601 luma for [0, 1] RGB, studio swing (Y in [16, 235] / 255) — MATLAB's rgb2ycbcr, BasicSR's rgb2ycbcr_pt.
_Y_WEIGHTS = (65.481, 128.553, 24.966)
# Half-width of the SSIM window: torchmetrics builds int(3.5 * sigma + 0.5) * 2 + 1 = 11 taps for sigma 1.5.
_SSIM_RADIUS = 5


def rgb_to_y(img: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) Y of YCbCr (BT.601) in [16/255, 235/255]."""
    w = torch.tensor(_Y_WEIGHTS, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    return ((img * w).sum(dim=1, keepdim=True) + 16.0) / 255.0


def quantize_8bit(img: Tensor) -> Tensor:
    """Clamp to [0, 1] and round to the 256 levels of an 8-bit PNG, so scores equal those of the saved images."""
    return img.clamp(0.0, 1.0).mul(255.0).round().div(255.0)


def prepare(img: Tensor, color_space: ColorSpace = "y", crop_border: int = 0) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> float64 (B, C, H - 2c, W - 2c): the channels PSNR/SSIM are measured on."""
    img = img.double()
    if color_space == "y":
        img = rgb_to_y(img)
    elif color_space != "rgb":
        raise ValueError(f"color_space must be 'y' or 'rgb', got {color_space!r}")
    if crop_border > 0:
        img = img[..., crop_border:-crop_border, crop_border:-crop_border]
    return img


def psnr(sr: Tensor, hr: Tensor, color_space: ColorSpace = "y", crop_border: int = 0) -> Tensor:
    """Per-image PSNR in dB, (B,); data range 1 (identical images give +inf)."""
    x, y = prepare(sr, color_space, crop_border), prepare(hr, color_space, crop_border)
    return peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(sr: Tensor, hr: Tensor, color_space: ColorSpace = "y", crop_border: int = 0) -> Tensor:
    """Per-image SSIM, (B,): Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, data range 1; the SSIM map is
    averaged over channels and over the valid region only, i.e. the windows that lie inside the image (Wang et al.'s
    ssim.m, BasicSR, skimage). torchmetrics' own mean also counts the 5-pixel border it fills by reflection."""
    x, y = prepare(sr, color_space, crop_border), prepare(hr, color_space, crop_border)
    _, ssim_map = structural_similarity_index_measure(
        x, y, gaussian_kernel=True, sigma=1.5, data_range=1.0, k1=0.01, k2=0.03, return_full_image=True
    )
    r = _SSIM_RADIUS
    return ssim_map[..., r:-r, r:-r].mean(dim=(1, 2, 3))
