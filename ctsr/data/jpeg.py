"""The JPEG of Real-ESRGAN's degradation: BasicSR's ``DiffJPEG(differentiable=False)``, batched, own implementation.

Real-ESRGAN's ``RealESRGANModel`` codes with ``basicsr.utils.diffjpeg.DiffJPEG(differentiable=False)``
(``basicsr/utils/diffjpeg.py``). This module computes the same codec with the same arithmetic, so that its output
agrees with BasicSR's to float rounding (``tests/test_degradations.py`` compares with outputs of BasicSR's own code,
``tests/fixtures/realesrgan/``)::

    pad the image with zeros (F.pad, value 0) at the bottom and right to multiples of 16
    RGB·255 → YCbCr (JFIF matrix, Cb/Cr + 128), no rounding
    Cb, Cr: 2×2 mean (4:2:0; the mean of each 2×2 cell, no filter)
    8×8 blocks − 128 → DCT-II (orthonormal, as the 64×64 matrix of cosine products)
    ÷ (table · f), round half to even (torch.round), × (table · f)          tables: Annex K luma / chroma
    inverse DCT + 128, chroma repeated 2×2, YCbCr → RGB, clamp to [0, 255], ÷ 255, crop the padding off

with f = (5000 / q) / 100 for q < 50 and (200 − 2q) / 100 otherwise, the quality q a float per sample (not rounded
to an integer, and the table not clamped to [1, 255] as libjpeg would; that is BasicSR's codec, not libjpeg's).

A batch may be a canvas of samples of different sizes (``degradations.jpeg``): the canvas beyond a sample must then
hold zeros; as no step mixes pixels of different 16×16 macroblocks, each sample is then coded exactly as alone.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

# JPEG Annex K tables as BasicSR stores them (``y_table`` and ``c_table`` are transposed there, (u, v) = (col, row)
# of the Annex; we keep the Annex layout and transpose the same way)
_LUMA = [
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99],
]
_CHROMA_TOP = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]
_RGB_TO_YCBCR = [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
_YCBCR_TO_RGB = [[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]]
MACROBLOCK = 16

_CACHE: dict[tuple, tuple[Tensor, ...]] = {}


def _constants(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """(luma table, chroma table) flattened to 64, DCT matrix (64, 64), DCT scale and IDCT α (64,), colour matrices.

    Built in float64 and rounded once to float32 as BasicSR builds them (numpy float64 → float32 parameters).
    """
    key = (device, dtype)
    if key not in _CACHE:
        luma = torch.tensor(_LUMA, dtype=torch.float64).T
        chroma = torch.full((8, 8), 99.0, dtype=torch.float64)
        chroma[:4, :4] = torch.tensor(_CHROMA_TOP, dtype=torch.float64).T
        k = torch.arange(8, dtype=torch.float64)
        # c[x, u] = cos((2x + 1)·u·π / 16); the 2-D basis is the product over (x, y) × (u, v)
        c = torch.cos((2 * k[:, None] + 1) * k[None, :] * math.pi / 16)
        basis = (c[:, None, :, None] * c[None, :, None, :]).reshape(64, 64)  # [(x, y), (u, v)]
        alpha = torch.tensor([1 / math.sqrt(2)] + [1.0] * 7, dtype=torch.float64)
        alpha2 = torch.outer(alpha, alpha).reshape(64)
        f32 = torch.float32
        consts = (
            luma.reshape(64).to(f32), chroma.reshape(64).to(f32), basis.to(f32), (alpha2 * 0.25).to(f32),
            alpha2.to(f32), torch.tensor(_RGB_TO_YCBCR, dtype=f32).T, torch.tensor(_YCBCR_TO_RGB, dtype=f32).T,
        )
        _CACHE[key] = tuple(t.to(device=device, dtype=dtype) for t in consts)
    return _CACHE[key]


def quality_to_factor(quality: Tensor) -> Tensor:
    """BasicSR ``quality_to_factor`` per sample, with its float operations: (5000/q)/100 below 50, (200 − 2q)/100."""
    q = quality.float()
    return (torch.where(q < 50, 5000.0 / q, 200.0 - q * 2) / 100.0).to(quality.dtype)


def _to_blocks(plane: Tensor) -> Tensor:
    """(B, H, W) → (B, H/8·W/8, 64), blocks in raster order, each row-major."""
    b, h, w = plane.shape
    return plane.view(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(b, -1, 64)


def _from_blocks(blocks: Tensor, h: int, w: int) -> Tensor:
    b = blocks.shape[0]
    return blocks.view(b, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(b, h, w)


def _code_plane(plane: Tensor, table: Tensor, factor: Tensor, consts: tuple[Tensor, ...]) -> Tensor:
    """One plane (B, H, W) in levels [0, 255] through DCT → quantise → dequantise → IDCT."""
    basis, dct_scale, alpha = consts[2], consts[3], consts[4]
    h, w = plane.shape[-2:]
    step = table.view(1, 1, 64) * factor.view(-1, 1, 1)
    coeff = dct_scale * ((_to_blocks(plane) - 128) @ basis)
    coeff = torch.round(coeff / step) * step
    return _from_blocks(0.25 * ((coeff * alpha) @ basis.T) + 128, h, w)


@contextmanager
def _full_float32_matmul():
    """The DCT and colour matrices as full float32 products even where a script allows TF32 (``"high"``): TF32's
    10-bit mantissa would move coefficients across quantisation steps."""
    before = torch.get_float32_matmul_precision()
    if before == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def diff_jpeg(x: Tensor, quality: Tensor) -> Tensor:
    """JPEG-code each image at its quality, as BasicSR's ``DiffJPEG(differentiable=False)``.

    Args:
        x: (B, 3, H, W) RGB in [0, 1] (Real-ESRGAN clamps before coding; values outside are coded as given).
        quality: (B,) JPEG quality, any float in (0, 100].
    Returns:
        (B, 3, H, W) in [0, 1], ``x``'s dtype (float32 arithmetic for float32 inputs, as BasicSR).
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be (B, 3, H, W), got {tuple(x.shape)}")
    with _full_float32_matmul():
        return _diff_jpeg(x, quality)


def _diff_jpeg(x: Tensor, quality: Tensor) -> Tensor:
    b, _, h, w = x.shape
    consts = _constants(x.device, x.dtype)
    luma_table, chroma_table, to_ycbcr, to_rgb = consts[0], consts[1], consts[5], consts[6]
    factor = quality_to_factor(quality.to(device=x.device, dtype=x.dtype).reshape(b))
    x = F.pad(x, (0, -w % MACROBLOCK, 0, -h % MACROBLOCK), mode="constant", value=0)
    ycc = (x * 255).permute(0, 2, 3, 1) @ to_ycbcr + x.new_tensor([0.0, 128.0, 128.0])
    y = _code_plane(ycc[..., 0], luma_table, factor, consts)
    chroma = F.avg_pool2d(ycc[..., 1:].permute(0, 3, 1, 2), 2)  # (B, 2, H/2, W/2)
    cb, cr = (_code_plane(chroma[:, i], chroma_table, factor, consts) for i in range(2))
    chroma = torch.stack((cb, cr), 1).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    ycc = torch.cat((y[:, None], chroma), 1).permute(0, 2, 3, 1) + x.new_tensor([0.0, -128.0, -128.0])
    rgb = (ycc @ to_rgb).permute(0, 3, 1, 2).clamp(0, 255) / 255
    return rgb[..., :h, :w].contiguous()
