"""ResShift's denoiser: a UNet with Swin-transformer stages (``UNetModelSwin``), written for this project.

Followed: zsyOAOA/ResShift ``models/unet.py`` (``UNetModelSwin``, ``ResBlock``, ``Upsample``, ``Downsample``),
``models/swin_transformer.py`` (``BasicLayer``, ``SwinTransformerBlock``, ``WindowAttention``) and
``models/basic_ops.py`` (``GroupNorm32``, ``timestep_embedding``), at commit 3ce1d81e. Module and parameter names
are the official ones so that the released state dicts load strictly; the no-argument construction is the released
real-world ×4 configuration (``configs/realsr_swinunet_realesrgan256_journal.yaml``: v3, and SinSR's
``configs/SinSR.yaml``, whose network has the same parameters).

Kept quirks of the official code (a faithful port needs them, the parity fixtures check them):

* every GroupNorm is ``GroupNorm(32, C)`` computed in float32, also inside the Swin blocks (not LayerNorm), and the
  Swin blocks work on ``(B, C, H, W)`` maps with 1×1-conv MLPs;
* a stage whose resolution is ≤ the window uses one window of that size and no shift (decided at construction);
* the shifted-window mask (:func:`shifted_window_mask`) separates windows by rows only and lists a window's tokens
  column-major, see there;
* the stored ``attn_mask`` buffers (sized for ``image_size``) are part of the state dict but the forward pass
  recomputes the mask from the input size (the official test ``list == tuple`` is never true);
* the Swin stage follows only the first ResBlock of a level (``jj == 0`` / ``i == 0``); ``image_size`` is the latent
  resolution and ``attention_resolutions`` are resolutions (64, 32, 16, 8), not downsampling rates.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GroupNorm32(nn.GroupNorm):
    """``GroupNorm(32, C)`` evaluated in float32 and cast back (``basic_ops.GroupNorm32``)."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.weight.float(), self.bias.float()   # float32 also in a half-precision copy
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding, ``[cos, sin]`` order (``basic_ops.timestep_embedding``): (B,) → (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(timesteps.device)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepSequential(nn.Sequential):
    """A sequence whose :class:`ResBlock` members also receive the timestep embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ResBlock(nn.Module):
    """GroupNorm–SiLU–conv, FiLM (scale-shift) by the timestep embedding, GroupNorm–SiLU–conv, 1×1 skip if needed."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb_layers(emb).type(h.dtype)[..., None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        h = self.out_layers[1:](h)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Stride-2 3×3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest ×2, then a 3×3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


# -- Swin stage -------------------------------------------------------------------------------------------------------
def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, C, H, W) → (B·nW, window², C), windows row-major over the map, tokens row-major inside a window."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // window, window, w // window, window).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(-1, window * window, c)


def window_merge(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B·nW, window², C) → (B, C, H, W)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(-1, c, h, w)


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> Tensor:
    """The additive attention mask (nW, window², window²) of the shifted windows, as the official code computes it.

    ResShift's ``SwinTransformerBlock.calculate_mask`` fills a (1, 1, H, W) image with region labels through
    ``img_mask[:, h_slice, w_slice, :]``, i.e. indexing it as if it were (1, H, W, 1): only the last row slice hits
    the singleton channel axis, so the labels end up depending on the row alone (rows < H − window: one region,
    rows < H − shift: a second, the last ``shift`` rows: a third). Its windows are then flattened column-major
    (``permute(0, 2, 3, 1)`` of (nW, Wh, Ww, 1)), so token k of a window (row-major in the attention) gets the label of
    the window's row k mod window. Tokens with different labels get −100. Weights were trained with this mask.
    """
    rows = torch.arange(h)
    row_label = (rows >= h - window).long() + (rows >= h - shift).long()      # 0, 1, 2 per row
    n_rows, n_cols = h // window, w // window
    in_window = torch.arange(window * window) % window                          # the row k mod window, see above
    labels = row_label[(torch.arange(n_rows)[:, None] * window + in_window[None]).reshape(-1)].view(n_rows, -1)
    labels = labels[:, None, :].expand(n_rows, n_cols, window * window).reshape(n_rows * n_cols, -1)
    differ = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(differ.shape).masked_fill(differ, -100.0)


def relative_position_index(window: int) -> Tensor:
    """(window², window²) index into the (2·window − 1)² relative-position bias table (Swin's standard layout)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative-position bias."""

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B·nW, N, C); mask: (nW, N, N) of 0 / −100 or None."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0).to(attn.dtype)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]).view(-1, self.num_heads, n, n)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(out)


class SwinMlp(nn.Module):
    """1×1 conv – GELU – 1×1 conv on (B, C, H, W)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """One (shifted-)window transformer block on (B, C, H, W), GroupNorm instead of LayerNorm."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        if resolution <= window:   # the whole map is one window, nothing to shift
            window, shift = resolution, 0
        self.window, self.shift = window, shift
        self.register_buffer("attn_mask", shifted_window_mask(resolution, resolution, window, shift) if shift else None)
        self.norm1 = GroupNorm32(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = GroupNorm32(dim)
        self.mlp = SwinMlp(dim, int(dim * mlp_ratio))
        self._masks: dict[tuple[int, int], Tensor] = {}

    def _mask(self, h: int, w: int, like: Tensor) -> Tensor | None:
        if not self.shift:
            return None
        if (h, w) not in self._masks:
            self._masks[(h, w)] = shifted_window_mask(h, w, self.window, self.shift)
        return self._masks[(h, w)].to(like.device, like.dtype)

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w = x.shape
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(2, 3))
        y = window_merge(self.attn(window_partition(y, self.window), self._mask(h, w, y)), self.window, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(2, 3))
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchConv(nn.Module):
    """A 1×1 projection (``patch_embed`` / ``patch_unembed`` at patch size 1, no patch norm)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class SwinStage(nn.Module):
    """``BasicLayer``: 1×1 in, ``depth`` blocks alternating plain and shifted windows, 1×1 out (no residual)."""

    def __init__(self, channels: int, embed_dim: int, num_heads: int, window: int, depth: int, resolution: int,
                 mlp_ratio: float) -> None:
        super().__init__()
        self.patch_embed = PatchConv(channels, embed_dim)
        self.patch_unembed = PatchConv(embed_dim, channels)
        self.blocks = nn.ModuleList(
            SwinBlock(embed_dim, resolution, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio)
            for i in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        for block in self.blocks:
            x = block(x)
        return self.patch_unembed(x)


# -- the UNet ---------------------------------------------------------------------------------------------------------
class ResShiftUNet(nn.Module):
    """x0-predicting UNet of ResShift. No arguments: the released real-world ×4 network (v3; SinSR's is the same).

    Call ``unet(z_t, t, lq)``: z_t (B, out_channels, h, w) the (normalised) latent, t (B,) integer timesteps,
    lq (B, lq_channels, h, w) the low-resolution image in [−1, 1] at the latent's size (ResShift's f4 latent of the ×4
    bicubic upsample has the LR's size). Returns (B, out_channels, h, w), the predicted clean latent. h and w must be
    multiples of 2^(levels−1)·window (64 for the released network).

    Args:
        image_size: the training latent size; sets the stored mask buffers and which stages use a full-map window.
        in_channels / lq_channels: latent and condition channels, concatenated at the input.
        model_channels / channel_mult / num_res_blocks: widths and depth per level.
        attention_resolutions: the resolutions (in latent pixels) whose levels have a Swin stage.
        swin_*: the Swin stages' width, depth, head width (``num_head_channels``), window and MLP ratio.
    """

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 3,
        lq_channels: int = 3,
        model_channels: int = 160,
        out_channels: int = 3,
        num_res_blocks: Sequence[int] = (2, 2, 2, 2),
        attention_resolutions: Sequence[int] = (64, 32, 16, 8),
        channel_mult: Sequence[int] = (1, 2, 2, 4),
        num_head_channels: int = 32,
        swin_depth: int = 2,
        swin_embed_dim: int = 192,
        window_size: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(num_res_blocks) != len(channel_mult):
            raise ValueError("num_res_blocks and channel_mult must have one entry per level")
        self.model_channels = model_channels
        self.levels = len(channel_mult)
        self.window_size = window_size
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self._multiple = 2 ** (self.levels - 1)

        def swin(ch: int, res: int) -> SwinStage:
            # the level's windows must tile its map: the latent size is a multiple of (downsampling × window)
            self._multiple = max(self._multiple, (image_size // res) * min(res, window_size))
            return SwinStage(ch, swin_embed_dim, swin_embed_dim // num_head_channels, window_size, swin_depth, res,
                             mlp_ratio)

        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels + lq_channels, ch, 3, padding=1))])
        skips = [ch]
        res = image_size
        for level, mult in enumerate(channel_mult):
            for j in range(num_res_blocks[level]):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, int(mult * model_channels), dropout)]
                ch = int(mult * model_channels)
                if res in attention_resolutions and j == 0:
                    layers.append(swin(ch, res))
                self.input_blocks.append(TimestepSequential(*layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(ch)))
                skips.append(ch)
                res //= 2
        self.middle_block = TimestepSequential(ResBlock(ch, emb_dim, dropout=dropout), swin(ch, res),
                                               ResBlock(ch, emb_dim, dropout=dropout))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks[level] + 1):
                layers = [ResBlock(ch + skips.pop(), emb_dim, int(model_channels * mult), dropout)]
                ch = int(model_channels * mult)
                if res in attention_resolutions and i == 0:
                    layers.append(swin(ch, res))
                if level and i == num_res_blocks[level]:
                    layers.append(Upsample(ch))
                    res *= 2
                self.output_blocks.append(TimestepSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    @property
    def size_multiple(self) -> int:
        """Latent sizes must be multiples of this (the coarsest level must tile into windows)."""
        return self._multiple

    def forward(self, x: Tensor, timesteps: Tensor, lq: Tensor) -> Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).type(self.time_embed[0].weight.dtype))
        h = torch.cat([x, lq.type(x.dtype)], dim=1)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
