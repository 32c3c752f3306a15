"""The batched operations on a canvas of per-sample sizes: blur, resize, JPEG, Gaussian and Poisson noise, USM
sharpening, 8-bit quantisation — each equal to the per-sample operation of Real-ESRGAN / BasicSR (package
docstring, "Per-sample sizes"). Package overview: :mod:`ctsr.data.degradations`."""
from __future__ import annotations

from collections.abc import Sequence

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from ctsr.data.degradations.params import OrderParams
from ctsr.data.jpeg import diff_jpeg
from ctsr.data.kernels import host_tensor

SCALE = 4
# BasicSR counts the distinct 8-bit levels v of each image and uses 2^⌈log2 v⌉ photon levels (``poisson_levels:
# count``); for any natural image with more than 128 levels that is 256, the constant of ``poisson_levels: "256"``.
POISSON_LEVELS = 256
# pixels per kornia JPEG call on a CPU (see ``jpeg``)
JPEG_CPU_CHUNK_PIXELS = 1 << 18


def _reflect_index(q: Tensor, n: Tensor) -> Tensor:
    """Index into [0, n) of position q mirrored about the edges without repeating them (``np.pad`` 'reflect')."""
    period = (2 * (n - 1)).clamp(min=1)
    m = q.remainder(period)
    return torch.where(n == 1, torch.zeros_like(m), torch.where(m < n, m, period - m))


class _Lines:
    """The lines of ``x`` along ``dim`` laid out as the rows of one matrix, so that picking a line per (sample,
    output position) is one ``index_select`` of whole rows of memory (faster than ``gather`` on every element)."""

    def __init__(self, x: Tensor, dim: int) -> None:
        self.batch, self.length, self.dim = x.shape[0], x.shape[dim], dim
        lines = x.movedim(dim, 1)
        self.rest = lines.shape[2:]
        self.rows = lines.reshape(self.batch * self.length, -1)
        self.offset = (torch.arange(self.batch, device=x.device) * self.length)[:, None]

    def take(self, index: Tensor) -> Tensor:
        """The lines ``index`` (B, I) of each sample, (B, I, rest) with the other axes flattened into rest."""
        return self.rows.index_select(0, (index + self.offset).reshape(-1)).view(self.batch, index.shape[1], -1)

    def to_image(self, lines: Tensor) -> Tensor:
        """(B, I, rest) lines back to an image with I along ``dim``."""
        return lines.view(self.batch, lines.shape[1], *self.rest).movedim(1, self.dim)


def _gather_rows_cols(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """x[b, :, rows[b, i], cols[b, j]] for (B, I) rows and (B, J) cols."""
    by_row = _Lines(x, 2)
    x = by_row.to_image(by_row.take(rows))
    by_col = _Lines(x, 3)
    return by_col.to_image(by_col.take(cols))


def _sizes(size: tuple[Sequence[int], Sequence[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    return host_tensor(list(size[0]), device), host_tensor(list(size[1]), device)


def blur(x: Tensor, kernel: Tensor, size: tuple[Sequence[int], Sequence[int]]) -> Tensor:
    """Correlate each sample with its kernel, reflecting at its own edges (Real-ESRGAN ``filter2D``).

    Args:
        x: (B, C, H, W) canvas; sample b is valid in ``[:h[b], :w[b]]``.
        kernel: (B, k, k), k odd.
        size: (h, w), lists of the B valid sizes.
    Returns:
        (B, C, H, W); outside the valid regions the values are meaningless.
    """
    r = kernel.shape[-1] // 2
    hc, wc = x.shape[-2:]
    if min(hc, wc) > r and all(v == hc for v in size[0]) and all(v == wc for v in size[1]):
        # every sample fills the canvas: plain reflect padding does the same, faster
        return kornia.filters.filter2d(x, kernel.to(x.dtype), border_type="reflect")
    h, w = _sizes(size, x.device)
    rows = _reflect_index(torch.arange(-r, hc + r, device=x.device)[None], h[:, None])
    cols = _reflect_index(torch.arange(-r, wc + r, device=x.device)[None], w[:, None])
    return kornia.filters.filter2d(_gather_rows_cols(x, rows, cols), kernel.to(x.dtype), padding="valid")


def _cubic_weights(t: Tensor, a: float = -0.75) -> list[Tensor]:
    """Keys' cubic convolution weights of taps −1, 0, 1, 2 at fraction t (A = −0.75, as PyTorch's bicubic)."""

    def near(x):  # |x| ≤ 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def interpolation_taps(
    n_in: Tensor,
    n_out: Tensor,
    mode: Tensor,
    out_canvas: int,
    taps: int,
    dtype: torch.dtype = torch.float32,
    ratio: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sample 1-D resampling taps as ``F.interpolate(size=n_out)`` computes them (``align_corners=False``, no
    antialias, as Real-ESRGAN): output pixel i of sample b is Σ_t weight[b, i, t]·input[index[b, i, t]].

    Args:
        n_in, n_out: (B,) input and output lengths.
        mode: (B,) index into ``RESIZE_MODES``.
        out_canvas: output length of the canvas (≥ max n_out); rows i ≥ n_out[b] get weight 0.
        taps: number of taps T: 2 for bilinear, 4 for bicubic, the widest window ⌈n_in/n_out⌉ + 1 for area.
        ratio: (B,) input pixels per output pixel of the linear modes; None: n_in/n_out (``size=``). For
            ``F.interpolate(scale_factor=s)`` pass 1/s rounded once from double to ``dtype``, as ATen's
            ``compute_scales_value`` does (area always pools by the sizes, with or without a scale factor).
    Returns:
        index (B, out_canvas, T) long in [0, n_in), weight (B, out_canvas, T).
    """
    n_in, n_out, mode = n_in.view(-1, 1, 1), n_out.view(-1, 1, 1), mode.view(-1, 1, 1)
    i = torch.arange(out_canvas, device=n_in.device).view(1, -1, 1)
    t = torch.arange(taps, device=n_in.device).view(1, 1, -1)

    def to_taps(ws: list[Tensor]) -> Tensor:  # zero-padded to T taps (cut when T is smaller: then unused)
        return F.pad(torch.cat(ws, -1), (0, taps - len(ws)))

    # area = adaptive average pooling: output i averages the inputs [⌊i·n_in/n_out⌋, ⌈(i+1)·n_in/n_out⌉)
    start = torch.div(i * n_in, n_out, rounding_mode="floor")
    count = torch.div((i + 1) * n_in + n_out - 1, n_out, rounding_mode="floor") - start
    area_index, area_weight = start + t, (t < count).to(dtype) / count.to(dtype)
    # bilinear and bicubic sample the input at (i + ½)·n_in/n_out − ½
    ratio = n_in.to(dtype) / n_out.to(dtype) if ratio is None else ratio.to(dtype).view(-1, 1, 1)
    src = (i.to(dtype) + 0.5) * ratio - 0.5
    s = src.clamp(min=0)  # PyTorch clamps the linear modes' coordinate at 0, not the cubic one's
    i0 = s.floor()
    linear_index, linear_weight = i0.long() + t, to_taps([1 - (s - i0), s - i0])
    i0 = src.floor()
    cubic_index, cubic_weight = i0.long() - 1 + t, to_taps(_cubic_weights(src - i0))
    index = torch.where(mode == 0, area_index, torch.where(mode == 1, linear_index, cubic_index))
    weight = torch.where(mode == 0, area_weight, torch.where(mode == 1, linear_weight, cubic_weight))
    # taps beyond the edges repeat the edge pixel (PyTorch's clamped access)
    return torch.minimum(index.clamp(min=0), n_in - 1), weight * (i < n_out)


def _resample(x: Tensor, dim: int, index: Tensor, weight: Tensor) -> Tensor:
    """Σ_t weight[b, i, t]·x[b, …, index[b, i, t], …] along ``dim``: exact float arithmetic on any device (a
    matmul with interpolation matrices would run in TF32 wherever a script allows it)."""
    lines = _Lines(x, dim)
    weight = weight.to(x.dtype)[..., None]
    out = lines.take(index[..., 0]) * weight[:, :, 0]
    for t in range(1, index.shape[-1]):
        out.addcmul_(lines.take(index[..., t]), weight[:, :, t])
    return lines.to_image(out)


def resize(
    x: Tensor,
    size_in: tuple[Sequence[int], Sequence[int]],
    size_out: tuple[Sequence[int], Sequence[int]],
    mode: Sequence[int],
    canvas: tuple[int, int],
    scale: Sequence[float] | None = None,
) -> Tensor:
    """Resize each sample from its own size to its own size, mode per sample.

    Args:
        x: (B, C, H, W) canvas; sample b is valid in ``[:h_in[b], :w_in[b]]``.
        size_in, size_out: (h, w), lists of B ints each.
        mode: B indices into ``RESIZE_MODES``.
        canvas: (H', W') of the output, ≥ the largest output size.
        scale: B scale factors s: sample each as ``F.interpolate(scale_factor=s)`` does (then ``size_out`` must be
            ⌊size_in·s⌋); None: as ``F.interpolate(size=size_out)``.
    Returns:
        (B, C, H', W'), sample b valid in ``[:h_out[b], :w_out[b]]`` and 0 elsewhere.
    """
    device = x.device
    mode_t = host_tensor(list(mode), device)
    # ATen: static_cast<scalar_t>(1.0 / scale), the reciprocal in double rounded once to the tensor's type
    ratio = None if scale is None else host_tensor([1.0 / float(s) for s in scale], device, x.dtype)
    for dim, n_in, n_out, length in ((2, size_in[0], size_out[0], canvas[0]), (3, size_in[1], size_out[1], canvas[1])):
        # taps: bilinear 2, bicubic 4, area the widest window ⌈n_in/n_out⌉ + 1
        taps = max((-(-a // b) + 1, 2, 4)[m] for a, b, m in zip(n_in, n_out, mode))
        n_in_t, n_out_t = host_tensor(list(n_in), device), host_tensor(list(n_out), device)
        x = _resample(x, dim, *interpolation_taps(n_in_t, n_out_t, mode_t, length, taps, x.dtype, ratio))
    return x


def jpeg(
    x: Tensor, size: tuple[Sequence[int], Sequence[int]], quality: Tensor, codec: str = "diffjpeg"
) -> Tensor:
    """JPEG-code each sample at its quality, (B, 3, H, W) in [0, 1], clamped to [0, 1] first (Real-ESRGAN).

    ``size`` holds the valid (h, w) of each sample on the canvas ``x``.

    * ``diffjpeg`` (BasicSR's ``DiffJPEG(differentiable=False)``, ``ctsr.data.jpeg``): the canvas beyond each
      sample is zeroed, the padding BasicSR gives a lone image, so every sample is coded exactly as alone.
    * ``kornia`` (``jpeg_codec_differentiable``): the canvas beyond each sample is filled by replicating its last
      row and column, the padding kornia gives a lone image, so the 8×8 blocks are those of the sample coded alone
      (see the module docstring for the one edge effect of kornia's chroma filter).
    """
    hc, wc = x.shape[-2:]
    h, w = _sizes(size, x.device)
    if codec == "diffjpeg":
        inside = (torch.arange(hc, device=x.device)[None] < h[:, None])[:, :, None] & (
            torch.arange(wc, device=x.device)[None] < w[:, None]
        )[:, None, :]
        return diff_jpeg(x.clamp(0, 1) * inside[:, None].to(x.dtype), quality)
    if codec != "kornia":
        raise ValueError(f"unknown JPEG codec {codec!r} (diffjpeg, kornia)")
    rows = torch.minimum(torch.arange(hc, device=x.device)[None], h[:, None] - 1)
    cols = torch.minimum(torch.arange(wc, device=x.device)[None], w[:, None] - 1)
    x = _gather_rows_cols(x.clamp(0, 1), rows, cols)
    quality = quality.to(x.dtype)
    if x.device.type != "cpu":
        return kornia.enhance.jpeg_codec_differentiable(x, quality)
    # On a CPU the codec's many elementwise passes are bound by memory bandwidth: sub-batches of about
    # JPEG_CPU_CHUNK_PIXELS stay in cache (3× faster than one call at 16 × 512², docs/benchmarks.md). Each image is
    # coded on its own either way, so the chunking changes no value.
    step = max(1, JPEG_CPU_CHUNK_PIXELS // (hc * wc))
    return torch.cat(
        [kornia.enhance.jpeg_codec_differentiable(x[i : i + step], quality[i : i + step]) for i in range(0, len(x), step)]
    )


def add_gaussian_noise(img: Tensor, sigma: Tensor, gray: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """img + N(0, σ²), clipped to [0, 1] (Real-ESRGAN ``add_gaussian_noise_pt``, ``clip=True, rounds=False``).

    Args:
        img: (B, 3, H, W) in [0, 1].
        sigma: (B,) standard deviation in [0, 1] units (the config's σ / 255).
        gray: (B,) bool: one noise field shared by the three channels instead of one per channel.
        generator: on ``img``'s device.
    """
    z = torch.randn(img.shape, generator=generator, device=img.device, dtype=img.dtype)
    z = torch.where(gray.view(-1, 1, 1, 1), z[:, :1].expand_as(z), z)  # gray: channel 0's field for all three
    return (img + sigma.to(img.dtype).view(-1, 1, 1, 1) * z).clamp(0, 1)


def _to_8bit(x: Tensor) -> Tensor:
    return (x * 255).round().clamp(0, 255) / 255


def count_levels(value: Tensor, size: tuple[Sequence[int], Sequence[int]] | None = None) -> Tensor:
    """BasicSR's photon levels 2^⌈log2 v⌉ per sample, v = ``len(torch.unique(img[b]))`` of the 8-bit image.

    Args:
        value: (B, C, H, W), multiples of 1/255 in [0, 1]; all channels of a sample count together.
        size: the valid (h, w) of each sample on the canvas (None: the whole image); only those pixels count.
    Returns:
        (B,) in ``value``'s dtype, on its device; no host synchronisation (a per-sample histogram).
    """
    b = value.shape[0]
    level = (value * 255).round().long().clamp(0, 255)
    level = level + 256 * torch.arange(b, device=value.device).view(-1, 1, 1, 1)
    seen = torch.zeros(b * 256, device=value.device, dtype=torch.bool)
    if size is not None:  # pixels outside a sample go to a spare bin b·256 + 256 of no sample
        hc, wc = value.shape[-2:]
        h, w = _sizes(size, value.device)
        inside = (torch.arange(hc, device=value.device)[None] < h[:, None])[:, :, None] & (
            torch.arange(wc, device=value.device)[None] < w[:, None]
        )[:, None, :]
        level = torch.where(inside[:, None], level, b * 256)
        seen = torch.zeros(b * 256 + 1, device=value.device, dtype=torch.bool)
    seen.scatter_(0, level.reshape(-1), True)
    distinct = seen[: b * 256].view(b, 256).sum(1).clamp(min=1).double()
    return torch.exp2(torch.ceil(torch.log2(distinct))).to(value.dtype)


def _luma(img: Tensor) -> Tensor:
    """(B, 1, H, W): torchvision's ``rgb_to_grayscale`` (0.2989, 0.587, 0.114), which BasicSR's Poisson noise uses."""
    r, g, b = img.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b)[:, None]


def add_poisson_noise(
    img: Tensor,
    scale: Tensor,
    gray: Tensor,
    generator: torch.Generator | None = None,
    levels: int | None = POISSON_LEVELS,
    size: tuple[Sequence[int], Sequence[int]] | None = None,
) -> Tensor:
    """img + scale·(Poisson(L·v)/L − v), clipped to [0, 1] (BasicSR ``add_poisson_noise_pt``, ``clip=True,
    rounds=False``, as Real-ESRGAN calls it).

    v is the image rounded to 8 bits and L the photon levels at full scale; gray noise draws the counts once from
    the luma (rounded to 8 bits) and adds them to the three channels.

    Args:
        img: (B, 3, H, W) in [0, 1].
        scale: (B,) noise scale.
        gray: (B,) bool.
        generator: on ``img``'s device.
        levels: L, or None for BasicSR's count: L = 2^⌈log2 v⌉ with v the number of distinct 8-bit values of the
            image (of the luma for gray noise), see ``count_levels``.
        size: the valid (h, w) of each sample on a canvas, for the count (None: whole images).
    """
    gray = gray.view(-1, 1, 1, 1)
    value = _to_8bit(img)
    luma = _to_8bit(_luma(img))
    if levels is None:
        rgb_levels, luma_levels = count_levels(value, size).view(-1, 1, 1, 1), count_levels(luma, size).view(-1, 1, 1, 1)
    else:
        rgb_levels = luma_levels = levels
    # rate 0 draws 0 without using the generator, so each sample pays only for the counts it uses, and a lone
    # sample draws the same counts as BasicSR's (which draws the gray counts first, then the colour ones)
    counts = torch.poisson(value * rgb_levels * ~gray, generator=generator)
    noise = counts / rgb_levels - value
    counts = torch.poisson(luma * luma_levels * gray, generator=generator)
    noise = torch.where(gray, (counts / luma_levels - luma).expand_as(img), noise)
    return (img + noise * scale.to(img.dtype).view(-1, 1, 1, 1)).clamp(0, 1)


def _add_noise(
    x: Tensor,
    p: OrderParams,
    gaussian: list[bool],
    generator: torch.Generator | None,
    size: tuple[Sequence[int], Sequence[int]],
    levels: int | None,
) -> Tensor:
    """Gaussian noise on the samples flagged in ``gaussian``, Poisson noise (``levels``) on the others."""
    out = x.clone()
    for kind in (True, False):
        index = [b for b, g in enumerate(gaussian) if g == kind]
        if not index:
            continue
        sel = host_tensor(index, x.device)
        gray = p.gray_noise.index_select(0, sel)
        if kind:
            out[sel] = add_gaussian_noise(x[sel], p.noise_sigma.index_select(0, sel) / 255, gray, generator)
        else:
            scale = p.poisson_scale.index_select(0, sel)
            out[sel] = add_poisson_noise(x[sel], scale, gray, generator, levels, _pick_size(size, index))
    return out


def usm_sharp(img: Tensor, weight: float = 0.5, radius: int = 50, threshold: float = 10) -> Tensor:
    """Unsharp masking of the GT (Real-ESRGAN ``USMSharp``), (B, 3, H, W) in [0, 1] → same.

    sharp = img + weight·(img − blur(img)) where |img − blur(img)| > threshold/255, blended by a blurred mask so
    flat regions stay untouched. The blur is OpenCV's ``GaussianBlur`` with size ``radius`` (made odd) and σ from
    OpenCV's size rule, reflecting at the edges; the image needs sides longer than ``radius // 2``.
    """
    if radius % 2 == 0:
        radius += 1
    sigma = 0.3 * ((radius - 1) * 0.5 - 1) + 0.8  # cv2.getGaussianKernel's σ for ksize = radius, sigma = 0

    def gaussian(t: Tensor) -> Tensor:
        return kornia.filters.gaussian_blur2d(t, (radius, radius), (sigma, sigma), border_type="reflect")

    residual = img - gaussian(img)
    mask = ((residual.abs() * 255) > threshold).to(img.dtype)
    soft_mask = gaussian(mask)
    sharp = (img + weight * residual).clamp(0, 1)
    return soft_mask * sharp + (1 - soft_mask) * img


def crop_to_scale(hr: Tensor) -> Tensor:
    """``hr`` cropped top-left to a multiple of 4 in both sides: the GT that matches ``RealESRGANDegradation``'s LR."""
    h, w = hr.shape[-2] // SCALE, hr.shape[-1] // SCALE
    return hr[..., : SCALE * h, : SCALE * w]


def _pick(values: Sequence, index: Sequence[int]) -> list:
    return [values[b] for b in index]


def _pick_size(size: tuple[Sequence[int], Sequence[int]], index: Sequence[int]) -> tuple[list[int], list[int]]:
    return _pick(size[0], index), _pick(size[1], index)


def _groups(area: list[int], max_groups: int) -> list[list[int]]:
    """Split samples into ≤ max_groups sub-batches of similar size minimising Σ (size × largest area) (1-D DP)."""
    order = sorted(range(len(area)), key=lambda b: -area[b])
    n = len(order)
    k_max = max(1, min(max_groups, n))
    # best[k][j]: cost of the first j samples (largest first) in k groups; a group's canvas is its first sample's
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(k_max + 1)]
    cut = [[0] * (n + 1) for _ in range(k_max + 1)]
    best[0][0] = 0
    for k in range(1, k_max + 1):
        for j in range(1, n + 1):
            for i in range(j):
                cost = best[k - 1][i] + (j - i) * area[order[i]]
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    k = min(range(1, k_max + 1), key=lambda k: best[k][n])
    groups, j = [], n
    while j > 0:
        i = cut[k][j]
        groups.append(order[i:j])
        j, k = i, k - 1
    return groups[::-1]
