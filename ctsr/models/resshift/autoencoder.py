"""ResShift's VQGAN-f4 autoencoder (``VQModelTorch``), written for this project.

Followed: zsyOAOA/ResShift ``ldm/models/autoencoder.py`` (``VQModelTorch``), ``ldm/modules/diffusionmodules/model.py``
(``Encoder``, ``Decoder``, ``ResnetBlock``, ``AttnBlock``, ``Downsample``, ``Upsample``) and
``ldm/modules/vqvae/quantize.py`` (``VectorQuantizer2``), at commit 3ce1d81e. Parameter names are the official ones;
the no-argument construction is the released ``autoencoder_vq_f4.pth`` configuration (ch 128, ch_mult 1-2-4, two
ResBlocks per level, no attention but the middle one, 3 latent channels, 8192 codes).

ResShift diffuses in the *unquantised* latent: ``encode`` stops after ``quant_conv``; ``decode`` quantises (nearest
code), then ``post_quant_conv`` and the decoder.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """norm–swish–conv ×2 with a 1×1 ``nin_shortcut`` when the width changes (no timestep input)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions (1×1 q, k, v, out)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, 1, c, h * w).transpose(-1, -2) for m in (self.q, self.k, self.v))
        # same maths as the official bmm/softmax (scale c^-1/2), without materialising the (hw)² matrix
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Pad right/bottom by one, then a stride-2 3×3 convolution (the official asymmetric padding)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution: ``block`` (ResnetBlocks), ``attn`` (empty unless the resolution has attention), a resampler."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run(self, h: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Middle(nn.Module):
    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions: Sequence[int],
                 resolution: int, in_channels: int, z_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, block_in = resolution, ch
        for i, mult in enumerate(ch_mult):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, ch * mult, dropout))
                block_in = ch * mult
                if res in attn_resolutions:
                    attns.append(AttnBlock(block_in))
            level = _Level(blocks, attns)
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)
        self.mid = _Middle(block_in, dropout)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions: Sequence[int],
                 resolution: int, out_ch: int, z_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Middle(block_in, dropout)
        levels: list[_Level] = []
        for i in reversed(range(len(ch_mult))):
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, ch * ch_mult[i], dropout))
                block_in = ch * ch_mult[i]
                if res in attn_resolutions:
                    attns.append(AttnBlock(block_in))
            level = _Level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            levels.insert(0, level)      # ``up[i]`` is resolution level i, as in the official layout
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-code quantiser (``VectorQuantizer2``'s distance and straight-through arithmetic)."""

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def forward(self, z: Tensor) -> Tensor:
        """(B, D, h, w) → (B, D, h, w), each vector replaced by its nearest code."""
        zp = z.permute(0, 2, 3, 1).contiguous()
        flat = zp.view(-1, zp.shape[-1])
        codes = self.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.t()
        zq = self.embedding(dist.argmin(dim=1)).view(zp.shape)
        zq = zp + (zq - zp).detach()   # the official straight-through form (same rounding)
        return zq.permute(0, 3, 1, 2).contiguous()


class VQAutoencoderF4(nn.Module):
    """ResShift's VQGAN, ×4 down. No arguments: the released ``autoencoder_vq_f4.pth``.

    ``encode``: (B, 3, H, W) in [−1, 1] → (B, embed_dim, H/4, W/4) unquantised latent; ``decode``: the inverse
    (quantise, then decode) → (B, 3, H, W), roughly [−1, 1].
    """

    def __init__(self, ch: int = 128, ch_mult: Sequence[int] = (1, 2, 4), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (), resolution: int = 256, in_channels: int = 3, out_ch: int = 3,
                 z_channels: int = 3, embed_dim: int = 3, n_embed: int = 8192, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, attn_resolutions, resolution, in_channels, z_channels,
                               dropout)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, attn_resolutions, resolution, out_ch, z_channels, dropout)
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.factor = 2 ** (len(ch_mult) - 1)

    def encode(self, x: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(self.quantize(z)))

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))
