"""Fidelity metrics as plain functions: the Y channel of BT.601 YCbCr, border crop, per-image PSNR and SSIM.

The protocol is OSEDiff's ``test_metrics.py``, i.e. pyiqa's ``create_metric('psnr'|'ssim', test_y_channel=True,
color_space='ycbcr')`` (pyiqa 0.1.x: ``archs/psnr_arch.py``, ``archs/ssim_arch.py``, ``utils/color_util.py``,
``archs/func_util.py``), re-implemented here with the same arithmetic:

- Y = (RGB · [65.481, 128.553, 24.966] + 16) / 255 on [0, 1] inputs, computed as a (…, 3) × (3, 3) matmul in the
  input's dtype (float32), as pyiqa's ``rgb2ycbcr`` does, so that the rounding below lands on the same levels.
- PSNR: on that float Y (not rounded), ``10 log10(1 / (MSE + 1e-8))`` per image (identical images: 80 dB).
- SSIM: on Y scaled to [0, 255] and **rounded to integer levels** (MATLAB's uint8 Y), in float64; an 11×11 Gaussian
  window with σ = 1.5 (MATLAB ``fspecial``), K1 = 0.01, K2 = 0.03, data range 255, 'valid' filtering (no padding),
  the contrast–structure map **clipped at 0** (``relu``), the map averaged per image; no downsampling.
- ``rgb``: the same on the three RGB channels (SSIM on RGB rounded to 8-bit levels), as pyiqa with
  ``test_y_channel=False``.

Scores are per image; the suite averages them over images (as OSEDiff's script does).
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ColorSpace = Literal["y", "rgb"]

# ITU-R BT.601 YCbCr for [0, 1] RGB, studio swing (MATLAB's rgb2ycbcr); pyiqa's weights_rgb_to_ycbcr. The whole
# matrix is kept (not only the Y column) so the matmul is the same operation as pyiqa's, bit for bit.
_YCBCR = ((65.481, -37.797, 112.0), (128.553, -74.203, -93.786), (24.966, 112.0, -18.214))
_YCBCR_BIAS = (16.0, 128.0, 128.0)
_Y_WEIGHTS = tuple(row[0] for row in _YCBCR)
PSNR_EPS = 1e-8  # pyiqa psnr(): 10·log10(1 / (mse + eps))
SSIM_WINDOW, SSIM_SIGMA, SSIM_RANGE = 11, 1.5, 255.0


def rgb_to_y(img: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) Y of YCbCr (BT.601) in [16/255, 235/255], in ``img``'s dtype."""
    w = torch.tensor(_YCBCR, dtype=img.dtype, device=img.device)
    bias = torch.tensor(_YCBCR_BIAS, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    ycbcr = (torch.matmul(img.permute(0, 2, 3, 1), w).permute(0, 3, 1, 2) + bias) / 255.0
    return ycbcr[:, :1]


def quantize_8bit(img: Tensor) -> Tensor:
    """Clamp to [0, 1] and round to the 256 levels of an 8-bit PNG, so scores equal those of the saved images."""
    return img.clamp(0.0, 1.0).mul(255.0).round().div(255.0)


def _crop(img: Tensor, crop_border: int) -> Tensor:
    return img[..., crop_border:-crop_border, crop_border:-crop_border] if crop_border > 0 else img


def prepare(img: Tensor, color_space: ColorSpace = "y", crop_border: int = 0) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> float64 (B, C, H - 2c, W - 2c) in [0, 1]: the channels PSNR is measured on."""
    if color_space not in ("y", "rgb"):
        raise ValueError(f"color_space must be 'y' or 'rgb', got {color_space!r}")
    img = _crop(img, crop_border)
    if img.dtype not in (torch.float32, torch.float64):
        img = img.float()
    return (rgb_to_y(img) if color_space == "y" else img).double()


def ssim_levels(img: Tensor, color_space: ColorSpace = "y", crop_border: int = 0) -> Tensor:
    """What SSIM is measured on: Y (or RGB) × 255 rounded to integer levels, float64 (pyiqa ``preprocess_rgb``)."""
    if color_space not in ("y", "rgb"):
        raise ValueError(f"color_space must be 'y' or 'rgb', got {color_space!r}")
    img = _crop(img, crop_border)
    if img.dtype not in (torch.float32, torch.float64):
        img = img.float()
    x = rgb_to_y(img) * SSIM_RANGE if color_space == "y" else img * SSIM_RANGE
    return x.round().double()


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """The normalised 1-D Gaussian whose outer product is MATLAB's ``fspecial('gaussian', size, sigma)`` (pyiqa's
    window; for 11 taps at σ 1.5 no tap falls under fspecial's eps cut-off), float64."""
    m = (size - 1) / 2
    g = np.exp(-(np.arange(size) - m) ** 2 / (2.0 * sigma * sigma))
    return torch.from_numpy(g / g.sum())


def psnr(sr: Tensor, hr: Tensor, color_space: ColorSpace = "y", crop_border: int = 0) -> Tensor:
    """Per-image PSNR in dB, (B,): data range 1, ``10 log10(1 / (MSE + 1e-8))`` (identical images: 80 dB)."""
    x, y = prepare(sr, color_space, crop_border), prepare(hr, color_space, crop_border)
    mse = (x - y).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(1.0 / (mse + PSNR_EPS))


def ssim(sr: Tensor, hr: Tensor, color_space: ColorSpace = "y", crop_border: int = 0) -> Tensor:
    """Per-image SSIM, (B,), on 8-bit levels (see the module docstring): Gaussian 11×11, σ 1.5, 'valid' windows
    only, contrast–structure term clipped at 0, mean over the map and the channels."""
    x, y = ssim_levels(sr, color_space, crop_border), ssim_levels(hr, color_space, crop_border)
    c1, c2 = (0.01 * SSIM_RANGE) ** 2, (0.03 * SSIM_RANGE) ** 2
    # The five local moments in one separable 'valid' Gaussian filtering (rows, then columns): the same window as
    # pyiqa's 2-D one, 22 taps a pixel instead of 121.
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    g = gaussian_window_1d().to(maps)
    n = maps.shape[1]
    maps = F.conv2d(maps, g.view(1, 1, 1, -1).expand(n, 1, 1, g.numel()), groups=n)
    maps = F.conv2d(maps, g.view(1, 1, -1, 1).expand(n, 1, g.numel(), 1), groups=n)
    mu_x, mu_y, e_xx, e_yy, e_xy = maps.chunk(5, dim=1)
    var_x, var_y = e_xx - mu_x.pow(2), e_yy - mu_y.pow(2)
    cov = e_xy - mu_x * mu_y
    cs = F.relu((2 * cov + c2) / (var_x + var_y + c2))  # Wang et al.'s cs term, clipped at 0 as pyiqa does
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x.pow(2) + mu_y.pow(2) + c1) * cs
    return ssim_map.mean(dim=(1, 2, 3))
