"""GSAD's denoiser: the SR3-style conditional UNet of jinnh/GSAD, written for this project.

Followed: jinnh/GSAD ``model/ddpm_modules/unet.py`` (commit da56971), classes ``PositionalEncoding`` (l. 12),
``FeatureWiseAffine`` (l. 27), ``Block`` (l. 76), ``ResnetBlock`` (l. 90), ``SelfAttention`` (l. 112),
``ResnetBlocWithAttn`` (l. 144) and ``UNet`` (l. 160–270), built as ``model/networks.py::define_G`` (l. 85) does.
The module names are the official ones, so a released ``*_gen.pth`` loads strictly (under ``denoise_fn.``, see
:class:`ctsr.models.gsad.GSADDiffusion`). Two modules are kept only for their names and never run at inference:
each residual block's ``mlp`` (built but unused by the official forward) and ``var_conv`` (the uncertainty head,
used by GSAD's training loss only).

Input: (B, 6, H, W) = [low-light image, x_t] in [−1, 1]; the noise level γ = √ᾱ as (B,) or (B, 1). Output: ε̂.
H and W must be multiples of 2^(levels−1). Attention is placed by the *configured* ``image_size`` (``attn_res``
compares against 128, 64, … regardless of the actual input size), as the official code does.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class NoiseLevelEncoding(nn.Module):
    """Sinusoidal features of the continuous noise level (unet.py l. 12–25): [sin(γ·ω_k), cos(γ·ω_k)],
    ω_k = 10⁴^(−k/(dim/2)), k < dim/2."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, level: Tensor) -> Tensor:
        half = self.dim // 2
        step = torch.arange(half, dtype=level.dtype, device=level.device) / half
        freqs = torch.exp(-math.log(1e4) * step)
        angle = level.reshape(-1, 1) * freqs
        return torch.cat([angle.sin(), angle.cos()], dim=-1)


class Swish(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


class NoiseShift(nn.Module):
    """x + W·emb per channel (``FeatureWiseAffine`` without its affine option, unet.py l. 27–43)."""

    def __init__(self, emb_dim: int, channels: int) -> None:
        super().__init__()
        self.noise_func = nn.Sequential(nn.Linear(emb_dim, channels))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return x + self.noise_func(emb).reshape(x.shape[0], -1, 1, 1)


class NormActConv(nn.Module):
    """GroupNorm → swish → (dropout) → 3×3 conv, stored as ``block.{0,3}`` (unet.py l. 76–87)."""

    def __init__(self, dim: int, dim_out: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.GroupNorm(groups, dim), Swish(),
                                   nn.Dropout(dropout) if dropout else nn.Identity(),
                                   nn.Conv2d(dim, dim_out, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class ResidualBlock(nn.Module):
    """block1 → + noise shift → block2, plus a 1×1 skip where the width changes (unet.py l. 90–109)."""

    def __init__(self, dim: int, dim_out: int, emb_dim: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(Swish(), nn.Linear(emb_dim, dim_out))  # in the checkpoint, unused (as officially)
        self.noise_func = NoiseShift(emb_dim, dim_out)
        self.block1 = NormActConv(dim, dim_out, groups)
        self.block2 = NormActConv(dim_out, dim_out, groups, dropout)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.block2(self.noise_func(self.block1(x), emb)) + self.res_conv(x)


class SpatialSelfAttention(nn.Module):
    """One-head attention over all positions, logits scaled by 1/√C (unet.py l. 112–141)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        out = torch.einsum("bij,bcj->bci", attn, v).reshape(b, c, h, w)
        return self.out(out) + x


class ResAttnBlock(nn.Module):
    """``ResnetBlocWithAttn`` (unet.py l. 144–157): a residual block, optionally followed by attention."""

    def __init__(self, dim: int, dim_out: int, emb_dim: int, groups: int, dropout: float = 0.0,
                 with_attn: bool = False) -> None:
        super().__init__()
        self.with_attn = with_attn
        self.res_block = ResidualBlock(dim, dim_out, emb_dim, groups, dropout)
        if with_attn:
            self.attn = SpatialSelfAttention(dim_out, groups)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.res_block(x, emb)
        return self.attn(x) if self.with_attn else x


class Downsample(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


class GSADUNet(nn.Module):
    """The denoiser ε̂(cat[x_low, x_t], γ). Defaults: the released LOL-v2-synthetic network
    (``config/lolv2_syn_test.json``: in 6, out 3, 64 channels, ×(1, 1, 2, 2, 4), attention at 16, 2 blocks, 32
    groups as ``define_G`` sets, image_size 128).

    Keyword arguments are the official ``UNet``'s (unet.py l. 161–173).
    """

    def __init__(self, in_channel: int = 6, out_channel: int = 3, inner_channel: int = 64, norm_groups: int = 32,
                 channel_mults: Sequence[int] = (1, 1, 2, 2, 4), attn_res: Sequence[int] = (16,),
                 res_blocks: int = 2, dropout: float = 0.0, image_size: int = 128) -> None:
        super().__init__()
        emb = inner_channel
        self.noise_level_mlp = nn.Sequential(NoiseLevelEncoding(inner_channel), nn.Linear(inner_channel, emb * 4),
                                             Swish(), nn.Linear(emb * 4, emb))
        levels = len(channel_mults)
        self.size_multiple = 2 ** (levels - 1)
        ch, res = inner_channel, image_size
        skips = [ch]
        downs: list[nn.Module] = [nn.Conv2d(in_channel, inner_channel, 3, padding=1)]
        for i, mult in enumerate(channel_mults):
            for _ in range(res_blocks):
                downs.append(ResAttnBlock(ch, inner_channel * mult, emb, norm_groups, dropout, res in attn_res))
                ch = inner_channel * mult
                skips.append(ch)
            if i != levels - 1:
                downs.append(Downsample(ch))
                skips.append(ch)
                res //= 2
        self.downs = nn.ModuleList(downs)
        self.mid = nn.ModuleList([ResAttnBlock(ch, ch, emb, norm_groups, dropout, True),
                                  ResAttnBlock(ch, ch, emb, norm_groups, dropout, False)])
        ups: list[nn.Module] = []
        for i in reversed(range(levels)):
            for _ in range(res_blocks + 1):
                ups.append(ResAttnBlock(ch + skips.pop(), inner_channel * channel_mults[i], emb, norm_groups,
                                        dropout, res in attn_res))
                ch = inner_channel * channel_mults[i]
            if i != 0:
                ups.append(Upsample(ch))
                res *= 2
        self.ups = nn.ModuleList(ups)
        self.final_conv = NormActConv(ch, out_channel, norm_groups)
        self.var_conv = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.ELU(), nn.Conv2d(ch, ch, 3, padding=1),
                                      nn.ELU(), nn.Conv2d(ch, 3, 3, padding=1), nn.ELU())

    def forward(self, x: Tensor, noise_level: Tensor, with_variance: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """ε̂ (and, with ``with_variance``, the uncertainty head's map, as the official tuple)."""
        emb = self.noise_level_mlp(noise_level)
        feats = []
        for layer in self.downs:
            x = layer(x, emb) if isinstance(layer, ResAttnBlock) else layer(x)
            feats.append(x)
        for layer in self.mid:
            x = layer(x, emb)
        for layer in self.ups:
            x = layer(torch.cat([x, feats.pop()], dim=1), emb) if isinstance(layer, ResAttnBlock) else layer(x)
        eps = self.final_conv(x)
        return (eps, self.var_conv(x)) if with_variance else eps
