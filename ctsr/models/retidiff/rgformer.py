"""Reti-Diff's RGformer: the Restormer-style image transformer guided by the Retinex priors, written for this project.

Followed: ChunmingHe/Reti-Diff ``Reti-Diff/archs/S2_interface_arch.py`` (commit 577a117), the network its LOL-v2-
synthetic test config builds (``options/test_LLIE_syn.yml``, ``network_g: RetiDiffS2_Interface``): ``WithBias_LayerNorm``
/ ``BiasFree_LayerNorm`` (l. 19–64), ``FeedForward`` (l. 67), ``Attention`` (l. 95, prior-modulated transposed
attention, used by the refinement blocks), ``Rttention`` (l. 134, reflectance → query, illumination → key/value),
``TransformerBlock`` / ``RransformerBlock`` (l. 186–219), ``OverlapPatchEmbed``, ``Downsample``, ``Upsample``
(l. 221–252) and ``RDIRformer`` (l. 263–358). Module names are the official ones (under ``G.``).

Priors: ``rex`` (B, 256) = [reflectance 192 | illumination 64] from the Retinex latent diffusion, ``img`` (B, 256)
from the image latent diffusion. The encoder/decoder levels use ``rex``; the refinement blocks use ``img``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PRIOR = 256          # the priors' width (4 × the prior networks' 64 features, fixed in the official code)
PRIOR_R, PRIOR_I = 192, 64


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at every pixel (``LayerNorm``: ``body.weight`` [+ ``body.bias``]), variance biased,
    ε = 1e-5 inside the square root; the bias-free kind scales x without centring it (as the official one)."""

    def __init__(self, dim: int, kind: str = "WithBias") -> None:
        super().__init__()
        self.body = _LayerNormBody(dim, kind != "BiasFree")

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.body(x.flatten(2).transpose(1, 2))
        return y.transpose(1, 2).reshape(b, c, h, w)


class _LayerNormBody(nn.Module):
    def __init__(self, dim: int, with_bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if with_bias else None

    def forward(self, x: Tensor) -> Tensor:
        var = x.var(-1, keepdim=True, unbiased=False)
        if self.bias is None:
            return x / torch.sqrt(var + 1e-5) * self.weight
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(var + 1e-5) * self.weight + self.bias


def _modulate(x: Tensor, kernel: nn.Module, prior: Tensor) -> Tensor:
    """x·(1 + W·prior) per channel, computed as the official x * k + x."""
    k = kernel(prior).view(-1, x.shape[1], 1, 1)
    return x * k + x


def _transposed_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, temperature: Tensor) -> Tensor:
    """Channel ("transposed") attention per head: softmax(q̂·k̂ᵀ·temperature)·v, q̂/k̂ L2-normalised over pixels."""
    b, c, h, w = v.shape
    q, k, v = (t.reshape(b, heads, c // heads, h * w) for t in (q, k, v))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    attn = ((q @ k.transpose(-2, -1)) * temperature).softmax(dim=-1)
    return (attn @ v).reshape(b, c, h, w)


class GatedFeedForward(nn.Module):
    """Prior-modulated gated-dconv feed-forward (``FeedForward``, l. 67–92)."""

    def __init__(self, dim: int, expansion: float, bias: bool) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)
        self.kernel = nn.Sequential(nn.Linear(PRIOR, dim, bias=False))

    def forward(self, x: Tensor, prior: Tensor) -> Tensor:
        x1, x2 = self.dwconv(self.project_in(_modulate(x, self.kernel, prior))).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class PriorAttention(nn.Module):
    """Prior-modulated transposed self-attention (``Attention``, l. 95–131)."""

    def __init__(self, dim: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.num_heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.kernel = nn.Sequential(nn.Linear(PRIOR, dim, bias=False))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: Tensor, prior: Tensor) -> Tensor:
        q, k, v = self.qkv_dwconv(self.qkv(_modulate(x, self.kernel, prior))).chunk(3, dim=1)
        return self.project_out(_transposed_attention(q, k, v, self.num_heads, self.temperature))


class RetinexAttention(nn.Module):
    """Retinex cross-attention (``Rttention``, l. 134–183): the first ¾ of the channels, modulated by the reflectance
    prior, give the query; the last ¼, modulated by the illumination prior, the key and value."""

    def __init__(self, dim: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.num_heads = heads
        self.layer_dim = dim
        r, i = int(dim / 4 * 3), int(dim / 4)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.kernel_R = nn.Sequential(nn.Linear(PRIOR_R, r, bias=False))
        self.kernel_I = nn.Sequential(nn.Linear(PRIOR_I, i, bias=False))
        self.q_R = nn.Conv2d(r, dim, 1, bias=bias)
        self.q_dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=bias)
        self.kv_I = nn.Conv2d(i, dim * 2, 1, bias=bias)
        self.kv_dwconv = nn.Conv2d(dim * 2, dim * 2, 3, padding=1, groups=dim * 2, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: Tensor, prior: Tensor) -> Tensor:
        r = int(self.layer_dim / 4 * 3)
        x_r = _modulate(x[:, :r], self.kernel_R, prior[:, :PRIOR_R])
        x_i = _modulate(x[:, r:], self.kernel_I, prior[:, PRIOR_R:])
        q = self.q_dwconv(self.q_R(x_r))
        k, v = self.kv_dwconv(self.kv_I(x_i)).chunk(2, dim=1)
        return self.project_out(_transposed_attention(q, k, v, self.num_heads, self.temperature))


class GuidedBlock(nn.Module):
    """x + attn(norm1 x, prior); x + ffn(norm2 x, prior) (``TransformerBlock`` / ``RransformerBlock``)."""

    def __init__(self, dim: int, heads: int, expansion: float, bias: bool, norm: str, retinex: bool) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, norm)
        self.attn = (RetinexAttention if retinex else PriorAttention)(dim, heads, bias)
        self.norm2 = ChannelLayerNorm(dim, norm)
        self.ffn = GatedFeedForward(dim, expansion, bias)

    def forward(self, x: Tensor, prior: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), prior)
        return x + self.ffn(self.norm2(x), prior)


class GuidedStage(nn.Sequential):
    """Blocks in sequence, stored as ``0.…``, ``1.…`` (the official ``nn.Sequential`` of blocks)."""

    def forward(self, x: Tensor, prior: Tensor) -> Tensor:  # type: ignore[override]
        for block in self:
            x = block(x, prior)
        return x


class PatchEmbed(nn.Module):
    def __init__(self, in_c: int, dim: int, bias: bool) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_c, dim, 3, padding=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Resample(nn.Module):
    """``Downsample``: 3×3 conv to C/2, pixel-unshuffle ×2; ``Upsample``: 3×3 conv to 2C, pixel-shuffle ×2."""

    def __init__(self, dim: int, down: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim // 2 if down else dim * 2, 3, padding=1, bias=False),
                                  nn.PixelUnshuffle(2) if down else nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class RGformer(nn.Module):
    """The Retinex-guided transformer (``RDIRformer``): a 4-level U-shaped network of guided blocks, the output a
    residual on the input image. Defaults: the released LOL-v2-synthetic configuration (dim 64, blocks (3, 3, 3, 3),
    3 refinement blocks, heads (1, 2, 4, 8), expansion 2.66, no conv bias, WithBias norms). H, W: multiples of 8."""

    def __init__(self, inp_channels: int = 3, out_channels: int = 3, dim: int = 64,
                 num_blocks: Sequence[int] = (3, 3, 3, 3), num_refinement_blocks: int = 3,
                 heads: Sequence[int] = (1, 2, 4, 8), ffn_expansion_factor: float = 2.66, bias: bool = False,
                 LayerNorm_type: str = "WithBias") -> None:  # noqa: N803 (the official keyword)
        super().__init__()

        def stage(width: int, n: int, h: int, retinex: bool = True) -> GuidedStage:
            return GuidedStage(*[GuidedBlock(width, h, ffn_expansion_factor, bias, LayerNorm_type, retinex)
                                 for _ in range(n)])

        self.patch_embed = PatchEmbed(inp_channels, dim, bias)
        self.encoder_level1 = stage(dim, num_blocks[0], heads[0])
        self.down1_2 = Resample(dim, down=True)
        self.encoder_level2 = stage(dim * 2, num_blocks[1], heads[1])
        self.down2_3 = Resample(dim * 2, down=True)
        self.encoder_level3 = stage(dim * 4, num_blocks[2], heads[2])
        self.down3_4 = Resample(dim * 4, down=True)
        self.latent = stage(dim * 8, num_blocks[3], heads[3])
        self.up4_3 = Resample(dim * 8, down=False)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=bias)
        self.decoder_level3 = stage(dim * 4, num_blocks[2], heads[2])
        self.up3_2 = Resample(dim * 4, down=False)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=bias)
        self.decoder_level2 = stage(dim * 2, num_blocks[1], heads[1])
        self.up2_1 = Resample(dim * 2, down=False)
        self.decoder_level1 = stage(dim * 2, num_blocks[0], heads[0])
        self.img_refinement = stage(dim * 2, num_refinement_blocks, heads[0], retinex=False)
        self.img_output = nn.Conv2d(dim * 2, out_channels, 3, padding=1, bias=bias)

    def forward(self, img: Tensor, rex: Tensor, prior_img: Tensor) -> Tensor:
        e1 = self.encoder_level1(self.patch_embed(img), rex)
        e2 = self.encoder_level2(self.down1_2(e1), rex)
        e3 = self.encoder_level3(self.down2_3(e2), rex)
        x = self.latent(self.down3_4(e3), rex)
        x = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(x), e3], 1)), rex)
        x = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(x), e2], 1)), rex)
        x = self.decoder_level1(torch.cat([self.up2_1(x), e1], 1), rex)
        x = self.img_refinement(x, prior_img)
        return self.img_output(x) + img
