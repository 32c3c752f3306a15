"""The Swin Transformer image encoder of RAM (``visual_encoder``), written for this project.

Same computation and the same state-dict names as the official RAM / DAPE code (github.com/xinyu1205/recognize-anything
``ram/models/swin_transformer.py``; OSEDiff's ``ram/models/swin_transformer_lora.py``, whose ``qkv`` is a loralib
``MergedLinear`` — the LoRA is folded into ``qkv.weight`` when the weights are loaded, :mod:`ctsr.models.ram`):

* patch embedding: a stride-``patch`` convolution, then LayerNorm;
* per stage: ``depth`` blocks, x = x + W-MSA(LN(x)), x = x + MLP(LN(x)); odd blocks shift the windows by half a
  window (cyclic roll) and mask attention across the rolled seams with −100, as the official ``attn_mask``;
  attention is q·scale @ kᵀ + the relative position bias (+ mask), softmax, @ v, then ``proj``;
  a stage whose grid is not larger than the window attends over the whole grid without shift;
* patch merging between stages (2×2 neighbours concatenated in the official order x00, x10, x01, x11; LN; linear);
* a final LayerNorm; the output is [mean token, tokens]: (B, 1 + N, C_last).

The buffers ``relative_position_index`` and ``attn_mask`` are derived from the configuration and not persistent:
the official loader deletes them from checkpoints too.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MASKED = -100.0  # the official mask value between regions of a shifted window (not −inf)


def relative_position_index(window: int) -> Tensor:
    """(w², w²) index into the (2w−1)² bias table: (Δrow + w − 1)·(2w − 1) + (Δcol + w − 1)."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # (2, w²)
    delta = coords[:, :, None] - coords[:, None, :]  # (2, w², w²)
    return (delta[0] + window - 1) * (2 * window - 1) + (delta[1] + window - 1)


def to_windows(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) → (B·H/w·W/w, w·w, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def from_windows(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`to_windows`: (B·n, w·w, C) → (B, H, W, C)."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> Tensor:
    """(n_windows, w², w²): 0 within one region of the rolled grid, −100 across regions (3 × 3 regions)."""
    region = torch.zeros(1, h, w, 1)
    label = 0
    for rows in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for cols in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            region[:, rows, cols, :] = label
            label += 1
    ids = to_windows(region, window).squeeze(-1)  # (n, w²)
    differs = ids[:, None, :] != ids[:, :, None]
    return torch.zeros(differs.shape).masked_fill(differs, MASKED)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias."""

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.window, self.heads = window, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)  # official: always with bias (loralib's MergedLinear default)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B·n, w², C); mask (n, w², w²) or None."""
        bn, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bn, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bn // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(bn, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, grid: tuple[int, int], heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.grid = grid
        if min(grid) <= window:  # the whole grid is one window: no shift (official)
            window, shift = min(grid), 0
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = shifted_window_mask(*grid, window, shift) if shift else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        h, w = self.grid
        b, n, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(to_windows(y, self.window), self.attn_mask)
        y = from_windows(y, self.window, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """(B, H·W, C) → (B, H/2·W/2, 2C)."""

    def __init__(self, grid: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.grid = grid
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        h, w = self.grid
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    def __init__(self, dim: int, grid: tuple[int, int], depth: int, heads: int, window: int, mlp_ratio: float,
                 downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, grid, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio) for i in range(depth)
        )
        self.downsample = PatchMerging(grid, dim) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, image_size: int, patch: int, dim: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"the tagger reads {self.image_size}×{self.image_size} images, got {tuple(x.shape[-2:])}")
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinEncoder(nn.Module):
    """RAM's Swin image encoder: (B, 3, S, S) normalised → (B, 1 + (S/32)², C·2^(L−1)), the first token the mean.

    Defaults: Swin-L at 384² (RAM's ``config_swinL_384.json``: embed 192, depths 2-2-18-2, heads 6-12-24-48,
    window 12), as the released ``ram_swin_large_14m.pth``.
    """

    def __init__(self, image_size: int = 384, patch: int = 4, embed_dim: int = 192,
                 depths: Sequence[int] = (2, 2, 18, 2), num_heads: Sequence[int] = (6, 12, 24, 48),
                 window_size: int = 12, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(image_size, patch, embed_dim)
        side = image_size // patch
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            grid = (side >> i, side >> i)
            self.layers.append(SwinStage(embed_dim * 2 ** i, grid, depth, heads, window_size, mlp_ratio,
                                         downsample=i < len(depths) - 1))
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        mean = F.adaptive_avg_pool1d(x.transpose(1, 2), 1).transpose(1, 2)  # the official AdaptiveAvgPool1d(1)
        return torch.cat([mean, x], dim=1)
