"""Images of any size: overlapping tiles blended with Gaussian weights, over the latent grid.

Three networks are tiled, each on the latent grid (1 latent pixel = 8 output pixels):

    VAE encoder   image tiles of 8·tile px    → moments (mean, log-variance), blended in latent space
    UNet ε        latent tiles                → ε, blended
    VAE decoder   latent tiles                → image tiles of 8·tile px, blended in pixel space

Blending ε is blending the model's latents: ẑ0 = (z_L − √(1−ᾱ)·ε)/√ᾱ (DESIGN §3) and the control step
z(t) = z0 + t·ε_S(z0, τ(t)) (§6) are per-pixel affine maps of ε, and the weights of a pixel sum to 1.
:func:`tiled_inference` installs the tiled networks on a generator for the length of a ``with`` block, so the model's
own code (``generator.latent``, ``ControllableSR.z0``, ``controlled_latent``, ``sweep``) runs unchanged on top of
them: z0 from the UNet over overlapping tiles, then each control step over tiles of the blended z(t_k), then a
tiled decode.

Exactness. Where the whole latent fits in one tile the network is called as it is: the untiled model, bit for bit.
For networks whose receptive field fits in a quarter of the overlap the tiled result equals the untiled one to float
precision (``tests/test_tiling.py``: 3e-6 with local stand-ins in the tiny model). SD's networks are not local:
GroupNorm statistics and self-attention are computed per tile and the UNet's receptive field is wider than any
practical overlap, so tiles are an approximation whose error has to be judged on real weights. On the random-init
tiny model it is large everywhere (0.17 mean of a [0, 1] range at 8/4 tiles), because at that scale every
network spans the whole image; it is no larger along the seams than elsewhere (ratio 1.2). Tile sizes are options:
larger tiles, fewer approximations. Defaults: UNet 96/32 (OSEDiff's), VAE 256/32 latent px (2048 output px, so up
to 2048×2048 the VAE is not tiled; measured on the CPU, the SD VAE decoder peaks at 3 KB per output pixel in fp32:
about 6.4 GB in bf16 at 2048², encoder 2.5 KB).

Weights: a Gaussian, σ = 0.1·tile (MultiDiffusion, OSEDiff: e^-12.5 at the tile edge), cut to 0 on the outermost
overlap/4 of each side that borders another tile — the pixels a tile's edge spoils — so that its tail does not
let them back in.

Why not ``AutoencoderKL.enable_tiling()``: its tile size comes from the config's ``sample_size`` (768 px for
SD 2.1-base; changing it means setting undocumented attributes), the last row and column of tiles are cut short at
the image border (a thin sliver is encoded on its own, with its own GroupNorm statistics), it blends linearly over
a quarter of a tile, and it covers the VAE only. Here one routine serves the three networks, every tile is full
size (the grid is spread evenly, the last tile ends at the border), tile starts keep the UNet's downsampling phase,
and tile sizes are options. Neither shares GroupNorm statistics across tiles (the "tiled VAE" of
multidiffusion-upscaler does, at the cost of running the network layer by layer over all tiles).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import Tensor

from ctsr.errors import check

GAUSSIAN_SIGMA = 0.1  # σ of the blending weights, as a fraction of the tile side


def tile_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``[0, size)`` with at least ``overlap`` in common (up to
    ``align`` less where rounding needs it), spread evenly, the first at 0 and the last at ``size − tile``; every
    start a multiple of ``align``. ``tile ≤ 0`` or ``tile ≥ size``: one tile, [0]."""
    if tile <= 0 or tile >= size:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must lie in [0, {tile}), got {overlap}")
    stride = tile - overlap
    last = size - tile
    n = math.ceil(last / stride) + 1
    while True:
        starts = sorted({min(last, round(i * last / (n - 1) / align) * align) for i in range(n - 1)} | {last})
        if max(b - a for a, b in zip(starts, starts[1:])) <= stride + align - 1 or n > size:
            return starts
        n += 1


def gaussian_weights(height: int, width: int, sigma: float = GAUSSIAN_SIGMA, device=None) -> Tensor:
    """(height, width) float32 weights, exp(−d²/2σ²) with d the distance to the tile centre in tile sides."""

    def axis(n: int) -> Tensor:
        x = torch.arange(n, dtype=torch.float64)
        return torch.exp(-(((x - (n - 1) / 2) / n) ** 2) / (2 * sigma**2))

    return torch.outer(axis(height), axis(width)).float().to(device)


def tiled_map(
    fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    tile: int,
    overlap: int,
    *,
    scale_in: int = 1,
    scale_out: int = 1,
    align: int = 1,
    max_cells: int = 0,
    sigma: float = GAUSSIAN_SIGMA,
) -> Tensor:
    """Apply ``fn`` to overlapping tiles of ``x`` and blend the results with Gaussian weights.

    The tiles lie on a grid of (H/scale_in, W/scale_in) cells — the latent grid — with ``tile``, ``overlap`` and
    ``align`` counted in cells. ``fn(x_tiles, sample_index)`` maps (N, C, th·scale_in, tw·scale_in) to
    (N, C', th·scale_out, tw·scale_out); ``sample_index`` (N,) says which sample of ``x`` each tile comes from (for
    per-sample arguments such as τ). One call of ``fn`` gets as many tiles (or whole samples) as fit in
    ``max_cells`` grid cells, at least one (0: everything at once), which bounds its memory whatever the tile size.
    Returns (B, C', H/scale_in·scale_out, W/scale_in·scale_out) in the dtype of ``fn``'s output; the blend is
    accumulated in float32.

    Weights: a Gaussian over the tile (σ = ``sigma``·tile), set to 0 on the outermost ``overlap/4`` cells of each
    side that borders another tile (never more than half the narrowest overlap, so every pixel keeps a tile that
    counts). Those cells are the ones the tile's edge spoils; the Gaussian's tail would otherwise still let them in.
    """
    b, _, h_in, w_in = x.shape
    hc, wc = h_in // scale_in, w_in // scale_in
    check(hc * scale_in == h_in and wc * scale_in == w_in, "tile",
          f"input of {h_in}×{w_in} px is not a whole number of {scale_in}-px cells")
    rows, cols = tile_starts(hc, tile, overlap, align), tile_starts(wc, tile, overlap, align)
    th, tw = (min(tile, hc), min(tile, wc)) if tile > 0 else (hc, wc)
    batch = max(1, max_cells // (th * tw)) if max_cells > 0 else b * len(rows) * len(cols)
    if len(rows) == len(cols) == 1:  # one tile: the network as it is
        index = torch.arange(b, device=x.device)
        return torch.cat([fn(x[i : i + batch], index[i : i + batch]) for i in range(0, b, batch)])

    narrowest = min([th - (q - p) for p, q in zip(rows, rows[1:])] + [tw - (q - p) for p, q in zip(cols, cols[1:])])
    cut = min(overlap // 4, narrowest // 2) * scale_out
    gaussian = gaussian_weights(th * scale_out, tw * scale_out, sigma, x.device)

    def weight(r: int, c: int) -> Tensor:
        w = gaussian.clone()
        if cut:
            w[:cut] *= r == 0                # top side borders another tile unless at the image border
            w[-cut:] *= r + th == hc
            w[:, :cut] *= c == 0
            w[:, -cut:] *= c + tw == wc
        return w

    weights = {(r, c): weight(r, c) for r in rows for c in cols}
    jobs = [(r, c, i) for r in rows for c in cols for i in range(b)]
    out = weight_sum = None
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        tiles = torch.cat([x[i : i + 1, :, r * scale_in : (r + th) * scale_in, c * scale_in : (c + tw) * scale_in]
                           for r, c, i in chunk])
        y = fn(tiles, torch.tensor([i for _, _, i in chunk], device=x.device))
        if out is None:
            out = torch.zeros(b, y.shape[1], hc * scale_out, wc * scale_out, device=x.device, dtype=torch.float32)
            weight_sum = torch.zeros(hc * scale_out, wc * scale_out, device=x.device, dtype=torch.float32)
        for k, (r, c, i) in enumerate(chunk):
            ys = slice(r * scale_out, (r + th) * scale_out)
            xs = slice(c * scale_out, (c + tw) * scale_out)
            out[i, :, ys, xs] += y[k].float() * weights[r, c]
            if i == 0:
                weight_sum[ys, xs] += weights[r, c]
    return (out / weight_sum).to(y.dtype)


def unet_alignment(unet) -> int:
    """The UNet's total downsampling (8 for SD 2.1-base): latent sizes and tile starts keep to multiples of it."""
    return 2 ** (len(unet.config.block_out_channels) - 1)


def vae_factor(vae) -> int:
    """Pixels per latent pixel of the VAE (8)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@contextmanager
def tiled_inference(
    generator,
    tile: int = 96,
    overlap: int = 32,
    vae_tile: int = 256,
    vae_overlap: int = 32,
    max_cells: int = 0,
    sigma: float = GAUSSIAN_SIGMA,
) -> Iterator[None]:
    """Within the block, ``generator.eps``, ``generator.vae.encode`` and ``generator.vae.decode`` run over tiles.

    Args:
        generator: a ``OneStepGenerator`` (also the one inside a ``ControllableSR``).
        tile, overlap: UNet tiles, in latent pixels (OSEDiff: 96 and 32). 0: never tile the UNet.
        vae_tile, vae_overlap: VAE encoder and decoder tiles, in latent pixels (256 = 2048 output px). 0: never tile.
        max_cells: latent pixels per network call (tiles or whole images), at least one tile; 0: no limit.
    """
    align = unet_alignment(generator.unet)
    check(tile >= 0 and tile % align == 0, "tile", f"must be 0 or a positive multiple of {align} (the UNet's "
          f"downsampling), got {tile}")
    check(vae_tile >= 0, "vae_tile", f"must be ≥ 0, got {vae_tile}")
    check(0 <= overlap < max(tile, 1), "tile_overlap", f"must lie in [0, tile = {tile}), got {overlap}")
    check(0 <= vae_overlap < max(vae_tile, 1), "vae_overlap", f"must lie in [0, vae_tile = {vae_tile}), got "
          f"{vae_overlap}")
    from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
    from diffusers.models.modeling_outputs import AutoencoderKLOutput

    vae = generator.vae
    factor = vae_factor(vae)
    eps, encode, decode = generator.eps, vae.encode, vae.decode  # the networks as they are

    def tiled_eps(z_t: Tensor, tau, context: Tensor | None = None) -> Tensor:
        tau = torch.as_tensor(tau, device=z_t.device, dtype=torch.float32).reshape(-1).expand(z_t.shape[0])
        per_sample = context is not None and context.shape[0] > 1

        def one(z: Tensor, i: Tensor) -> Tensor:
            return eps(z, tau[i], context[i] if per_sample else context)

        return tiled_map(one, z_t, tile, overlap, align=align, max_cells=max_cells, sigma=sigma)

    def tiled_encode(x: Tensor, return_dict: bool = True):
        moments = tiled_map(lambda t, i: encode(t).latent_dist.parameters, x, vae_tile, vae_overlap,
                            scale_in=factor, max_cells=max_cells, sigma=sigma)
        dist = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def tiled_decode(z: Tensor, return_dict: bool = True, **kwargs):
        x = tiled_map(lambda t, i: decode(t, **kwargs).sample, z, vae_tile, vae_overlap, scale_out=factor,
                      max_cells=max_cells, sigma=sigma)
        return DecoderOutput(sample=x) if return_dict else (x,)

    generator.eps, vae.encode, vae.decode = tiled_eps, tiled_encode, tiled_decode
    try:
        yield
    finally:  # the instance attributes shadowed the methods; removing them restores the methods
        del generator.eps, vae.encode, vae.decode
