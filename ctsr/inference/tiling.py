"""Images of any size: overlapping tiles blended with Gaussian weights, over the latent grid.

Three networks are tiled, each on the latent grid (1 latent pixel = 8 output pixels):

    VAE encoder   image tiles of 8·tile px    → moments (mean, log-variance), blended in latent space
    UNet ε        latent tiles                → ε, blended
    VAE decoder   latent tiles                → image tiles of 8·tile px, blended in pixel space

Blending ε is blending the model's latents: ẑ0 = (z_L − √(1−ᾱ)·ε)/√ᾱ (DESIGN §3) and the control step
z(t) = z0 + t·ε_S(z0, τ(t)) (§6) are per-pixel affine maps of ε, and the weights of a pixel sum to 1.
A :class:`Tiling` set as ``generator.tiling`` (by the :class:`~ctsr.inference.upscale.Upscaler`, or for a ``with``
block by :func:`tiled_inference`) makes the generator run its networks over tiles, so the model's own code
(``generator.latent``, ``ControllableSR.z0``, ``controlled_latent``, ``sweep``) runs unchanged on top of them: z0
from the UNet over overlapping tiles, then each control step over tiles of the blended z(t_k), then a tiled decode.

Exactness. Where the whole latent fits in one tile the network is called as it is: the untiled model, bit for bit.
Otherwise three things separate a tiled network from the untiled one:

* GroupNorm statistics. Per tile, each tile is normalised by its own mean and variance: on the random-init tiny
  model that alone gives visible per-tile shifts. With ``shared_norms`` the tiles of a network call run in lock step
  and every GroupNorm uses the image's statistics, pooled over the cells each tile owns (:class:`_SharedGroupNorms`,
  the idea of the "tiled VAE" of multidiffusion-upscaler that OSEDiff ships, done here without re-writing the
  networks layer by layer). The price is memory: every tile's activations at the current layer stay alive, about
  the untiled network's. That is small for the UNet (latent resolution), so its tiles share by default
  (``"unet"``); the VAE is tiled precisely when its full-resolution activations do not fit, so its tiles keep
  their own statistics unless asked (``"all"``).
* Self-attention, computed within a tile.
* The receptive field beyond the part of a tile that counts in the blend (overlap/2 from its edge).

Measured on the tiny model (``tests/test_tiling.py``, LR 96×160, tiles 32/16 latent px, t = 0.5, mean |Δ| of a
[0, 1] image): per-tile norms 0.089, shared norms in both networks 0.022; without self-attention (same classes,
``only_cross_attention`` UNet, no VAE mid-block attention) the tiled VAE equals the untiled one to 3e-4 (max
2.3/255) and the UNet's error falls with the tile size as its receptive field fits (0.0087 at 32/16, 0.0014 at
64/48). SD's UNet has a receptive field wider than any practical overlap, so its tiles remain an approximation to be
judged on real weights; tile sizes are options (larger tiles, fewer approximations). Defaults: UNet 96/32 (OSEDiff's), VAE 256/32 latent px
(2048 output px, so up to 2048×2048 the VAE is not tiled; measured on the CPU, the SD VAE decoder peaks at 3 KB per
output pixel in fp32: about 6.4 GB in bf16 at 2048², encoder 2.5 KB).

Weights: a Gaussian, σ = 0.1·tile (MultiDiffusion, OSEDiff: e^-12.5 at the tile edge), cut to 0 on the outermost
overlap/4 of each side that borders another tile — the pixels a tile's edge spoils — so that its tail does not
let them back in.

Why not ``AutoencoderKL.enable_tiling()``: its tile size comes from the config's ``sample_size`` (768 px for
SD 2.1-base; changing it means setting undocumented attributes), the last row and column of tiles are cut short at
the image border (a thin sliver is encoded on its own, with its own GroupNorm statistics), it blends linearly over
a quarter of a tile, normalises per tile, and covers the VAE only. Here one routine serves the three networks, every
tile is full size (the grid is spread evenly, the last tile ends at the border), tile starts keep the UNet's
downsampling phase, the norms are shared, and tile sizes are options.
"""
from __future__ import annotations

import math
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctsr.choices import (
    SHARED_NORMS,  # whose tiles share each image's GroupNorm statistics
)
from ctsr.errors import check

GAUSSIAN_SIGMA = 0.1  # σ of the blending weights, as a fraction of the tile side
LOCKSTEP_TIMEOUT_S = 3600.0  # the longest a tile call waits for the others at a shared norm


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


def owned_spans(starts: list[int], tile: int, size: int) -> list[tuple[int, int]]:
    """Tile-local [lo, hi) of the cells each tile owns: the overlaps are split at their middle, so the spans of all
    tiles partition [0, size) and each cell is counted once in statistics pooled over tiles."""
    cuts = [0] + [(b + a + tile) // 2 for a, b in zip(starts, starts[1:])] + [size]
    return [(lo - a, hi - a) for a, lo, hi in zip(starts, cuts, cuts[1:])]


class _TileGroup:
    """The tiles of one network call in a lock-step run: their samples and owned spans (in tile-local cells)."""

    def __init__(self, samples: list[int], spans: list[tuple[int, int, int, int]], cells: tuple[int, int]) -> None:
        self.samples, self.spans, self.cells = samples, spans, cells
        self._masks: dict[tuple[int, int, torch.device], Tensor] = {}
        self._index: dict[torch.device, Tensor] = {}

    def sample_index(self, device: torch.device) -> Tensor:
        if device not in self._index:
            self._index[device] = torch.tensor(self.samples, device=device)
        return self._index[device]

    def mask(self, height: int, width: int, device: torch.device) -> Tensor:
        """``_mask``, kept per layer size (the decoder's layers repeat sizes)."""
        key = (height, width, device)
        if key not in self._masks:
            self._masks[key] = self._mask(height, width, device)
        return self._masks[key]

    def _mask(self, height: int, width: int, device: torch.device) -> Tensor:
        """(N, height·width) float32: 1 on each tile's owned cells, at a layer of height × width over the tile.

        A layer at s× the cell grid maps cell span [lo, hi) to [⌊lo·s⌋, ⌊hi·s⌋): tile starts are multiples of the
        UNet's downsampling (and of 1 for the VAE, whose layers lie at 1–8 px per cell), so ``start·s`` is whole and
        the spans of neighbouring tiles still meet exactly."""
        sy, sx = height / self.cells[0], width / self.cells[1]
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        out = []
        for r0, r1, c0, c1 in self.spans:
            in_rows = (rows >= math.floor(r0 * sy)) & (rows < math.floor(r1 * sy))
            in_cols = (cols >= math.floor(c0 * sx)) & (cols < math.floor(c1 * sx))
            out.append((in_rows[:, None] & in_cols[None, :]).reshape(-1))
        return torch.stack(out).float()


class _SharedGroupNorms:
    """Runs several network calls over tiles in lock step so that every ``nn.GroupNorm`` of ``network`` normalises
    with the statistics of the whole image — pooled over the cells each tile owns — instead of each tile's own.

    Each call runs in its own thread holding a baton, so one computes at a time (memory for temporaries is that of
    one call). At a GroupNorm a call contributes its tiles' partial sums (count, Σx and Σx² over the owned cells,
    per sample and group), hands the baton on and waits at a barrier; the last to arrive adds them up per image (in
    float64), and all go on with the image's mean and variance.
    The activations of every call stay alive meanwhile: memory about that of the untiled network's activations at
    one layer, the price of consistent normalisation.
    """

    def __init__(self, network: nn.Module, groups: list[_TileGroup]) -> None:
        self.norms = [m for m in network.modules() if isinstance(m, nn.GroupNorm)]
        self.groups = groups
        self.images = max(max(g.samples) for g in groups) + 1  # known on the host: pooling never waits for the device
        self.local = threading.local()
        self.baton = threading.Lock()
        self.barrier = threading.Barrier(len(groups), action=self._pool)
        self.partials: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        self._last: tuple[Tensor, Tensor] | None = None
        self.finished = 0

    # -- the norms ----------------------------------------------------------------------------------------------
    def _norm(self, norm: nn.GroupNorm, x: Tensor) -> Tensor:
        k = getattr(self.local, "call", None)
        if k is None or x.ndim not in (3, 4):  # another thread, or a shape without a tile grid: as it is
            return nn.GroupNorm.forward(norm, x)
        group = self.groups[k]
        n, c = x.shape[:2]
        if x.ndim == 4:
            height, width = x.shape[2:]
        else:  # attention's (N, C, H·W) tokens, row-major over the tile
            scale = math.sqrt(x.shape[2] / (group.cells[0] * group.cells[1]))
            height, width = round(group.cells[0] * scale), round(group.cells[1] * scale)
            if height * width != x.shape[2]:
                return nn.GroupNorm.forward(norm, x)
        g = norm.num_groups
        # per tile and group: count, Σx and Σx² over the owned cells (float32 elementwise sums, not a matmul that
        # TF32 could round), pooled in float64
        mask = group.mask(height, width, x.device)
        v = x.reshape(n, c, height * width).float()
        vm = v * mask[:, None, :]
        s1 = vm.sum(-1).view(n, g, -1).sum(-1).double()
        s2 = (vm * v).sum(-1).view(n, g, -1).sum(-1).double()
        del v, vm
        count = (mask.sum(-1).double() * (c // g))[:, None].expand(n, g)
        samples = group.sample_index(x.device)
        self.partials[k] = (samples, count, s1, s2)
        if self.finished:  # another call ended without this norm: the calls do not run the same network
            raise RuntimeError("tiles with shared norms fell out of lock step: the tile calls ran different numbers "
                               "of GroupNorms (use shared_norms='none' / --shared-norms none)")
        self.baton.release()
        try:
            self.barrier.wait(timeout=LOCKSTEP_TIMEOUT_S)  # a backstop: a call that never comes breaks it
        finally:
            self.baton.acquire()
        image_mean, image_var = self._last  # stays until every call has read it: the next pool waits for all
        # y = (x − μ)/√(σ² + ε)·γ + β as one x·a + b per channel, computed in float32
        a = torch.rsqrt(image_var[samples] + norm.eps).repeat_interleave(c // g, dim=1)   # (n, C)
        b = -image_mean[samples].repeat_interleave(c // g, dim=1) * a
        if norm.affine:
            a, b = a * norm.weight.double(), b * norm.weight.double() + norm.bias.double()
        shape = (n, c) + (1,) * (x.ndim - 2)
        return torch.addcmul(b.float().view(shape), x, a.float().view(shape)).to(x.dtype)

    def _pool(self) -> None:
        """Barrier action: the image statistics from every call's partials (per sample and group)."""
        samples, *parts = (torch.cat([self.partials[k][i] for k in sorted(self.partials)]) for i in range(4))
        zeros = parts[0].new_zeros(self.images, parts[0].shape[1])
        total, s1, s2 = (zeros.index_add(0, samples, part) for part in parts)
        image_mean = s1 / total.clamp(min=1)
        self._last = (image_mean, (s2 / total.clamp(min=1) - image_mean**2).clamp(min=0))
        self.partials.clear()

    # -- the run ------------------------------------------------------------------------------------------------
    def run(self, calls: list[Callable[[], Tensor]]) -> list[Tensor]:
        """Results of ``calls`` (one per tile group), each run with the shared norms."""
        # grad, inference and autocast modes are per thread: the calls run in the caller's
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
        autocast = [(d, torch.get_autocast_dtype(d)) for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]
        results: list[Tensor | None] = [None] * len(calls)
        errors: list[BaseException] = []

        def worker(k: int) -> None:
            self.local.call = k
            with self.baton, torch.inference_mode(inference), torch.set_grad_enabled(grad), ExitStack() as modes:
                for device_type, dtype in autocast:
                    modes.enter_context(torch.autocast(device_type, dtype=dtype))
                try:
                    results[k] = calls[k]()
                    self.finished += 1
                    if self.barrier.n_waiting:  # others wait at a norm this call never reached
                        raise RuntimeError("tiles with shared norms fell out of lock step: the tile calls ran "
                                           "different numbers of GroupNorms (use shared_norms='none' / "
                                           "--shared-norms none)")
                except BaseException as error:  # noqa: BLE001 — re-raised in the caller's thread below
                    errors.append(error)
                    self.barrier.abort()

        with ExitStack() as stack:
            # an instance attribute shadows nn.GroupNorm.forward for this block: the one place where a network is
            # intercepted, inside its own run. A forward hook would do it without shadowing, but only after the
            # norm has computed its per-tile output for nothing (measured 1.3× the tiny model's time, all norms)
            for norm in self.norms:
                norm.forward = lambda x, norm=norm: self._norm(norm, x)
                stack.callback(delattr, norm, "forward")
            # compiled graphs cannot wait at a barrier: run the networks eagerly (no-op when nothing is compiled)
            stack.enter_context(torch.compiler.set_stance("force_eager"))
            threads = [threading.Thread(target=worker, args=(k,), name=f"ctsr-tile-{k}") for k in range(len(calls))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if errors:
            raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
        return results  # type: ignore[return-value]


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
    shared_norms: nn.Module | None = None,
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

    ``shared_norms``: the network ``fn`` runs; its GroupNorms then use each image's statistics pooled over all its
    tiles (see :class:`_SharedGroupNorms`) instead of each tile's own.
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
    chunks = [jobs[start : start + batch] for start in range(0, len(jobs), batch)]

    def call(chunk: list[tuple[int, int, int]]) -> Tensor:
        tiles = torch.cat([x[i : i + 1, :, r * scale_in : (r + th) * scale_in, c * scale_in : (c + tw) * scale_in]
                           for r, c, i in chunk])
        return fn(tiles, torch.tensor([i for _, _, i in chunk], device=x.device))

    if shared_norms is not None:
        row_span = dict(zip(rows, owned_spans(rows, th, hc)))
        col_span = dict(zip(cols, owned_spans(cols, tw, wc)))
        groups = [_TileGroup([i for _, _, i in chunk], [(*row_span[r], *col_span[c]) for r, c, _ in chunk], (th, tw))
                  for chunk in chunks]
        ys = iter(_SharedGroupNorms(shared_norms, groups).run([lambda chunk=chunk: call(chunk) for chunk in chunks]))
    else:
        ys = (call(chunk) for chunk in chunks)
    out = weight_sum = None
    for chunk, y in zip(chunks, ys):
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


def lr_multiple(unet, scale: int = 4) -> int:
    """LR sides are padded to a multiple of this: latent sides (LR·scale/8: LR/2 at ×4) a multiple of the UNet's
    downsampling, and at least 8."""
    return max(8, 8 * unet_alignment(unet) // scale)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad (B, C, h, w) at the bottom and right to sides that are multiples of ``multiple`` (reflect; replicate
    where the image is too small to reflect). Crop the ×s output back to (s·h, s·w)."""
    h, w = x.shape[-2:]
    pad = (0, (-w) % multiple, 0, (-h) % multiple)
    if not any(pad):
        return x
    return F.pad(x, pad, mode="reflect" if pad[1] < w and pad[3] < h else "replicate")


def vae_factor(vae) -> int:
    """Pixels per latent pixel of the VAE (8)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@dataclass(frozen=True)
class Tiling:
    """How a generator's networks run over tiles: its state while set as ``generator.tiling`` (``eps``, the encoder
    and the decoder of :class:`~ctsr.models.generator.OneStepGenerator` read it at every call), so the model's own
    code (``latent``, ``ControllableSR.z0``, ``controlled_latent``, ``sweep``) runs unchanged over tiles. Set by
    :class:`~ctsr.inference.upscale.Upscaler` for its model, or for a ``with`` block by :func:`tiled_inference`.

    Args:
        tile, overlap: UNet tiles, in latent pixels (OSEDiff: 96 and 32). 0: never tile the UNet.
        vae_tile, vae_overlap: VAE encoder and decoder tiles, in latent pixels (256 = 2048 output px). 0: never tile.
        max_cells: latent pixels per network call (tiles or whole images), at least one tile; 0: no limit.
        sigma: σ of the blending weights, a fraction of the tile side.
        shared_norms: whose GroupNorms use each image's statistics pooled over its tiles, as the untiled network
            does (no per-tile shifts of contrast and colour): ``unet`` (default), ``all`` (the VAE's too: memory
            about that of the untiled VAE), ``none`` (each tile its own; see :class:`_SharedGroupNorms`).
        align: the UNet's downsampling (:func:`unet_alignment`): tile sides and starts are multiples of it.
    """

    tile: int = 96
    overlap: int = 32
    vae_tile: int = 256
    vae_overlap: int = 32
    max_cells: int = 0
    sigma: float = GAUSSIAN_SIGMA
    shared_norms: str = "unet"
    align: int = 1

    def __post_init__(self) -> None:
        check(self.shared_norms in SHARED_NORMS, "shared_norms",
              f"one of {', '.join(SHARED_NORMS)}; got {self.shared_norms!r}")
        check(self.tile >= 0 and self.tile % self.align == 0, "tile",
              f"must be 0 or a positive multiple of {self.align} (the UNet's downsampling), got {self.tile}")
        check(self.vae_tile >= 0, "vae_tile", f"must be ≥ 0, got {self.vae_tile}")
        check(0 <= self.overlap < max(self.tile, 1), "tile_overlap",
              f"must lie in [0, tile = {self.tile}), got {self.overlap}")
        check(0 <= self.vae_overlap < max(self.vae_tile, 1), "vae_overlap",
              f"must lie in [0, vae_tile = {self.vae_tile}), got {self.vae_overlap}")

    @classmethod
    def for_generator(cls, generator, **options) -> "Tiling":
        """The tiling of ``generator``'s networks (its UNet's downsampling sets ``align``), options checked."""
        return cls(**options, align=unet_alignment(generator.unet))

    def eps(self, generator, unet: nn.Module, z_t: Tensor, tau, context: Tensor | None = None) -> Tensor:
        """``generator.unet_eps(unet, …)`` over latent tiles, blended: ε (B, 4, h, w)."""
        tau = torch.as_tensor(tau, device=z_t.device, dtype=torch.float32).reshape(-1).expand(z_t.shape[0])
        context = generator.context if context is None else context  # per-image prompts: one context per sample
        per_sample = context.shape[0] > 1

        def one(z: Tensor, i: Tensor) -> Tensor:
            return generator.unet_eps(unet, z, tau[i], context[i] if per_sample else context)

        return tiled_map(one, z_t, self.tile, self.overlap, align=self.align, max_cells=self.max_cells,
                         sigma=self.sigma, shared_norms=unet if self.shared_norms != "none" else None)

    def encode(self, vae, x: Tensor):
        """The encoder's latent distribution of x (B, 3, H, W), its moments blended in latent space."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        moments = tiled_map(lambda t, i: vae.encode(t).latent_dist.parameters, x, self.vae_tile, self.vae_overlap,
                            scale_in=vae_factor(vae), max_cells=self.max_cells, sigma=self.sigma,
                            shared_norms=vae if self.shared_norms == "all" else None)
        return DiagonalGaussianDistribution(moments)

    def decode(self, vae, z: Tensor) -> Tensor:
        """The decoder's image of z (B, 4, h, w) (already divided by the scaling factor), blended in pixel space."""
        return tiled_map(lambda t, i: vae.decode(t).sample, z, self.vae_tile, self.vae_overlap,
                         scale_out=vae_factor(vae), max_cells=self.max_cells, sigma=self.sigma,
                         shared_norms=vae if self.shared_norms == "all" else None)


@contextmanager
def tiled_inference(generator, **options) -> Iterator[Tiling]:
    """Within the block, ``generator`` runs its UNet, VAE encoder and decoder over tiles: ``generator.tiling`` is
    ``Tiling.for_generator(generator, **options)`` (see :class:`Tiling` for the options), and what it was before
    comes back after the block, however it ends."""
    tiling = Tiling.for_generator(generator, **options)
    previous = generator.tiling
    generator.tiling = tiling
    try:
        yield tiling
    finally:
        generator.tiling = previous
