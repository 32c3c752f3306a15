"""The pipeline: ``RealESRGANDegradation``, the ``nn.Module`` that draws the parameters and runs the two orders and the
final step over the operations, in sub-batches of similar size. Package overview: :mod:`ctsr.data.degradations`."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctsr.data.degradations.config import DegradationConfig
from ctsr.data.degradations.operations import (
    SCALE,
    _add_noise,
    _groups,
    _pick,
    _pick_size,
    _to_8bit,
    blur,
    crop_to_scale,
    jpeg,
    resize,
)
from ctsr.data.degradations.params import (
    DegradationParams,
    _Draw,
    _sample_final,
    _sample_order,
    _select,
)
from ctsr.data.kernels import host_tensor
from ctsr.errors import check

# sub-batches of the first order when ``max_groups`` is None: a CPU gains little from large batches and much from
# tight canvases (16 × 512²: 8 groups 26 % faster than 4); an accelerator gains from fewer, larger launches
CPU_MAX_GROUPS, DEVICE_MAX_GROUPS = 8, 4


class RealESRGANDegradation(nn.Module):
    """HR (B, 3, H, W) in [0, 1] → LR (B, 3, H//4, W//4) in [0, 1], 8-bit quantised, on ``hr``'s device.

    Args:
        config: the ranges and probabilities (default: Real-ESRGAN x4plus, DESIGN §7).
        max_groups: at most this many sub-batches of similar intermediate size in the first order; more groups
            waste less work on canvas padding (1: one canvas for the batch). None: 8 on a CPU, 4 on an
            accelerator. Speed only, see the module docstring.
    """

    def __init__(self, config: DegradationConfig | None = None, max_groups: int | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else DegradationConfig()
        self.config.validate()
        check(max_groups is None or max_groups >= 1, "max_groups", f"need ≥ 1 or null, got {max_groups}")
        self.max_groups = max_groups

    def sample_params(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> DegradationParams:
        """Draw every random choice for ``batch`` samples, each its own, on ``device`` (default: the generator's)."""
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        d = _Draw(batch, generator, torch.device(device))
        return DegradationParams(
            first=_sample_order(d, self.config.first),
            second=_sample_order(d, self.config.second),
            final=_sample_final(d, self.config),
        )

    def forward(
        self,
        hr: Tensor,
        generator: torch.Generator | None = None,
        seeds: Tensor | Sequence[int] | None = None,
    ) -> Tensor:
        """Degrade a batch.

        Args:
            hr: (B, 3, H, W) in [0, 1], H, W ≥ 4 (cropped to multiples of 4, see ``crop_to_scale``).
            generator: draws the parameters and the noise; must live on ``hr``'s device. None: the global RNG.
            seeds: (B,) one seed per image instead of ``generator`` (validation): image b is degraded alone with
                ``torch.Generator(hr.device).manual_seed(seeds[b])``, so its LR does not depend on the batch.
        Returns:
            (B, 3, H//4, W//4) in [0, 1], multiples of 1/255, ``hr``'s dtype and device.
        """
        if seeds is None:
            return self.apply(hr, self.sample_params(hr.shape[0], generator, hr.device), generator)
        if generator is not None:
            raise ValueError("give either a generator or per-image seeds, not both")
        seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, Tensor) else seeds)]
        if len(seeds) != hr.shape[0]:
            raise ValueError(f"need one seed per image ({hr.shape[0]}), got {len(seeds)}")
        out = []
        for b, seed in enumerate(seeds):
            g = torch.Generator(device=hr.device).manual_seed(seed)
            out.append(self.apply(hr[b : b + 1], self.sample_params(1, g, hr.device), g))
        return torch.cat(out) if out else hr.new_zeros(0, 3, hr.shape[-2] // SCALE, hr.shape[-1] // SCALE)

    @torch.no_grad()
    def apply(self, hr: Tensor, params: DegradationParams, generator: torch.Generator | None = None) -> Tensor:
        """Degrade ``hr`` with fixed ``params`` (from ``sample_params`` or built by hand); noise from ``generator``.

        Args:
            hr: (B, 3, H, W) in [0, 1].
            params: B samples' parameters, on ``hr``'s device.
            generator: the noise's generator, on ``hr``'s device.
        Returns:
            (B, 3, H//4, W//4) in [0, 1], 8-bit quantised.
        """
        if hr.ndim != 4 or hr.shape[1] != 3 or hr.shape[-2] < SCALE or hr.shape[-1] < SCALE:
            raise ValueError(f"hr must be (B, 3, H, W) with H, W ≥ {SCALE}, got {tuple(hr.shape)}")
        if params.batch_size != hr.shape[0]:
            raise ValueError(f"params hold {params.batch_size} samples for a batch of {hr.shape[0]}")
        out_dtype = hr.dtype
        dtype = torch.float64 if hr.dtype == torch.float64 else torch.float32
        x = crop_to_scale(hr).to(dtype)
        batch, _, height, width = x.shape
        h_lr, w_lr = height // SCALE, width // SCALE
        if batch == 0:
            return hr.new_zeros(0, 3, h_lr, w_lr)
        device = x.device
        p1, p2, pf = params.first, params.second, params.final
        cfg = self.config
        levels = None if cfg.poisson_levels == "count" else int(cfg.poisson_levels)

        # One host sync for every size and branch: the canvases' shapes must be Python ints.
        host = torch.stack(
            [p1.resize_scale.double(), p2.resize_scale.double(), p1.resize_mode.double(), p2.resize_mode.double(),
             pf.resize_mode.double(), p1.gaussian_noise.double(), p2.gaussian_noise.double(), pf.jpeg_first.double()]
        ).cpu().tolist()  # fmt: skip
        s1, s2 = host[:2]
        mode1, mode2, mode_final = ([int(m) for m in v] for v in host[2:5])
        gauss1, gauss2, jpeg_first = ([bool(f) for f in v] for v in host[5:])
        # sizes (h, w) per sample: HR, after the first resize (F.interpolate(scale_factor=s1)'s ⌊H·s1⌋), after the
        # second (Real-ESRGAN's int(H / 4 · s2)), LR
        full = ([height] * batch, [width] * batch)
        size1 = ([max(1, math.floor(height * s)) for s in s1], [max(1, math.floor(width * s)) for s in s1])
        size2 = ([max(1, math.floor(h_lr * s)) for s in s2], [max(1, math.floor(w_lr * s)) for s in s2])
        lr = ([h_lr] * batch, [w_lr] * batch)

        # first order: blur → resize → noise → JPEG, then the second order's blur and resize, in sub-batches of
        # similar first-order size so the canvas padding stays small
        x = blur(x, p1.kernel.kernels(dtype), full)
        canvas2 = (max(size2[0]), max(size2[1]))
        parts, order = [], []
        max_groups = self.max_groups or (CPU_MAX_GROUPS if device.type == "cpu" else DEVICE_MAX_GROUPS)
        for group in _groups([a * b for a, b in zip(*size1)], max_groups):
            sel = host_tensor(group, device)
            g1, g2 = _select(p1, sel), _select(p2, sel)
            gsize1, gsize2 = _pick_size(size1, group), _pick_size(size2, group)
            scale = _pick(s1, group) if cfg.resize_sampling == "scale_factor" else None
            canvas1 = (max(gsize1[0]), max(gsize1[1]))
            y = resize(x[sel], _pick_size(full, group), gsize1, _pick(mode1, group), canvas1, scale)
            y = _add_noise(y, g1, _pick(gauss1, group), generator, gsize1, levels)
            y = jpeg(y, gsize1, g1.jpeg_quality, cfg.jpeg)
            y = blur(y, g2.kernel.kernels(dtype), gsize1)
            parts.append(resize(y, gsize1, gsize2, _pick(mode2, group), canvas2))
            order += group
        x = torch.cat(parts).index_select(0, host_tensor(sorted(range(len(order)), key=order.__getitem__), device))
        x = _add_noise(x, p2, gauss2, generator, size2, levels)

        # final step, each sample in its order: resize → sinc → JPEG, or JPEG → resize → sinc
        sinc = pf.sinc.kernels(dtype)
        out = torch.empty(batch, 3, h_lr, w_lr, device=device, dtype=dtype)
        for first in (False, True):
            index = [b for b, f in enumerate(jpeg_first) if f == first]
            if not index:
                continue
            sel = host_tensor(index, device)
            y, q = x[sel], p2.jpeg_quality[sel]
            if first:
                y = jpeg(y, _pick_size(size2, index), q, cfg.jpeg)
            y = resize(y, _pick_size(size2, index), _pick_size(lr, index), _pick(mode_final, index), (h_lr, w_lr))
            y = blur(y, sinc[sel], _pick_size(lr, index))
            if not first:
                y = jpeg(y, _pick_size(lr, index), q, cfg.jpeg)
            out[sel] = y
        return _to_8bit(out).to(out_dtype)
