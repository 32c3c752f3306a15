"""Real-ESRGAN's second-order degradation model, batched on the device, every parameter drawn per sample.

The pipeline of Real-ESRGAN (Wang et al. 2021, https://arxiv.org/abs/2107.10833; ``RealESRGANModel.feed_data``),
with the default ranges of ``train_realesrgan_x4plus.yml`` (DESIGN §7)::

    first order    blur k1 → resize by s1 → noise (Gaussian or Poisson, colour or gray) → JPEG
    second order   blur k2 (prob 0.8) → resize to (H/4)·s2 → noise
    final          [resize to H/4 → sinc → JPEG]  or  [JPEG → resize to H/4 → sinc]   (prob ½ each)
    quantise to 8 bits: round(255·x)/255

Real-ESRGAN draws the resize scales, interpolation modes, noise types and the final order once per batch; here
every sample draws its own (DESIGN §7), so samples of one batch have different sizes in the middle of the pipeline.

**Parity with Real-ESRGAN.** By default each step is Real-ESRGAN's (``DegradationConfig``): the first resize samples
as ``F.interpolate(scale_factor=s1)`` (``resize_sampling``), the JPEG is BasicSR's ``DiffJPEG(differentiable=False)``
(``jpeg``, own implementation in ``ctsr.data.jpeg``), the Poisson noise counts the image's own 8-bit levels as
BasicSR's ``add_poisson_noise_pt`` (``poisson_levels``), and with ``usm_sharpen_gt`` the data module degrades the
sharpened GT. ``tests/fixtures/realesrgan/`` holds outputs of Real-ESRGAN's ``feed_data`` and BasicSR's functions
that the tests compare with. What stays different by design: the draws (per sample here, per batch there) and the
random streams of the noise.

**Per-sample sizes.** Each sample goes through exactly the sizes it would have alone: H×W → ⌊H·s1⌋×⌊W·s1⌋ →
⌊h·s2⌋×⌊w·s2⌋ → h×w with h, w = H/4, W/4, the first resize by ``F.interpolate(scale_factor=s1)`` semantics (or
``size=`` with ``resize_sampling: size``), the others by ``F.interpolate(size=…)`` (``align_corners=False``, no
antialias, as Real-ESRGAN). The noise grain and the JPEG 8×8 blocks therefore land at the sample's own
intermediate resolution, as in Real-ESRGAN, rather than at a resolution shared with the rest of the batch. To keep
one tensor per step, the samples sit top-left on a zero "canvas" of the largest size, each with its valid size
(h_b, w_b):

* a resize is separable: per sample and output row (then column) the taps and weights that ``F.interpolate``
  uses for area / bilinear / bicubic, applied as a few batched row gathers (no pixel outside the valid region
  is ever read; exact float arithmetic, unlike a matmul that a script may switch to TF32);
* a blur first fills each sample's border by reflection about its own edges (a gather, ``np.pad(mode="reflect")``
  semantics, which also holds when the image is smaller than the kernel), then runs one ``filter2d``;
* JPEG first fills the canvas beyond each sample with the padding the codec gives a lone image (zeros for
  BasicSR's DiffJPEG, the last row/column for kornia's), then codes the canvas with a per-sample quality;
* noise is per pixel, so the canvas changes nothing.

The result equals the per-sample pipeline (the plain loop in ``tests/test_degradations.py``) up to float rounding,
with one exception for ``jpeg: kornia`` only: when a sample's intermediate height or width is a multiple of 16 and
smaller than its canvas, kornia's codec, which filters the chroma over the whole image, sees the canvas fill beyond that edge where a lone
image ends, so the sample's last MCU row or column (16–17 px) moves by up to 2–3 8-bit levels (the JPEG stays a
JPEG; the module is then merely not bit-equal to the per-sample loop). To keep the canvases tight, the first order (whose sizes
range over 0.15–1.5×H) runs in up to ``max_groups`` sub-batches of similar sizes, the largest sample of each
setting its canvas; the grouping changes only the speed and that JPEG edge effect.

**Sizes not divisible by 4.** The HR is cropped top-left to ⌊H/4⌋·4 × ⌊W/4⌋·4 first, so the LR is exactly the ×4
degradation of ``hr[..., :4*h, :4*w]``; callers crop their GT the same way (``crop_to_scale``).

**Randomness.** ``forward(hr, generator)`` draws the parameters (``sample_params``) and the noise from one
``torch.Generator`` living on ``hr``'s device: the same seed gives bit-identical LR on the same device. For
validation, ``forward(hr, seeds=…)`` gives each image its own generator ``torch.Generator(device).manual_seed(seed)``
for its parameters and noise and degrades the images one at a time, so an image's LR bytes depend on its seed
only, never on the batch it came in (a loop over samples is fine for validation; training uses the batched path).
``apply(hr, params, generator)`` runs the pipeline with fixed parameters (tests, figures).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctsr.data.jpeg import diff_jpeg
from ctsr.data.kernels import (
    IDENTITY, ISOTROPIC_TYPES, MAX_KERNEL_SIZE, PLATEAU_TYPES, SINC, host_tensor, mixed_kernels
)
from ctsr.errors import check

SCALE = 4
RESIZE_MODES: tuple[str, ...] = ("area", "bilinear", "bicubic")
RESIZE_DIRECTIONS: tuple[str, ...] = ("up", "down", "keep")
UP, DOWN, KEEP = range(3)
# BasicSR counts the distinct 8-bit levels v of each image and uses 2^⌈log2 v⌉ photon levels (``poisson_levels:
# count``); for any natural image with more than 128 levels that is 256, the constant of ``poisson_levels: "256"``.
POISSON_LEVELS = 256
RESIZE_SAMPLING: tuple[str, ...] = ("scale_factor", "size")
JPEG_CODECS: tuple[str, ...] = ("diffjpeg", "kornia")
POISSON_LEVEL_MODES: tuple[str, ...] = ("count", "256")
# sub-batches of the first order when ``max_groups`` is None: a CPU gains little from large batches and much from
# tight canvases (16 × 512²: 8 groups 26 % faster than 4); an accelerator gains from fewer, larger launches
CPU_MAX_GROUPS, DEVICE_MAX_GROUPS = 8, 4
# pixels per kornia JPEG call on a CPU (see ``jpeg``)
JPEG_CPU_CHUNK_PIXELS = 1 << 18


# ---------------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class KernelProbs:
    """Probability of each blur-kernel type when the kernel is not a sinc (Real-ESRGAN ``kernel_prob``)."""

    iso: float = 0.45
    aniso: float = 0.25
    generalized_iso: float = 0.12
    generalized_aniso: float = 0.03
    plateau_iso: float = 0.12
    plateau_aniso: float = 0.03

    def as_list(self) -> list[float]:
        """In the order of ``kernels.KERNEL_TYPES``."""
        return [
            self.iso, self.aniso, self.generalized_iso, self.generalized_aniso, self.plateau_iso, self.plateau_aniso
        ]


@dataclass
class OrderConfig:
    """One order of the degradation: blur → resize → noise → JPEG. Defaults: Real-ESRGAN's first order."""

    kernel_size: tuple[int, int] = (7, 21)
    """Smallest and largest kernel size; each sample draws an odd size in this range uniformly."""
    kernel_prob: KernelProbs = field(default_factory=KernelProbs)
    """Probabilities of the six Gaussian-family kernel types (they must sum to 1)."""
    sinc_prob: float = 0.1
    """Probability that the kernel is a sinc instead (ω_c ∈ [π/3, π] if size < 13, else [π/5, π])."""
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    """Range of σ_x and σ_y of the Gaussian-family kernels, in pixels."""
    betag_range: tuple[float, float] = (0.5, 4.0)
    """β of the generalized Gaussian: with prob ½ uniform in [lo, 1], else in [1, hi] (needs lo ≤ 1 ≤ hi)."""
    betap_range: tuple[float, float] = (1.0, 2.0)
    """β of the plateau kernel, drawn by the same rule (so with the default half of them have β = 1)."""
    blur_prob: float = 1.0
    """Probability that this order blurs at all (Real-ESRGAN ``second_blur_prob`` for the second order)."""
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)
    """Probabilities of resizing up, down, or keeping the size."""
    resize_range: tuple[float, float] = (0.15, 1.5)
    """Scale range: up draws s ∈ [1, hi], down s ∈ [lo, 1]."""
    gaussian_noise_prob: float = 0.5
    """Probability of Gaussian noise; otherwise Poisson noise (every sample gets one of the two)."""
    noise_range: tuple[float, float] = (1.0, 30.0)
    """σ of the Gaussian noise, in 8-bit levels (of 255)."""
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    """Scale of the Poisson noise."""
    gray_noise_prob: float = 0.4
    """Probability that the noise is gray (one field shared by the three channels)."""
    jpeg_range: tuple[float, float] = (30.0, 95.0)
    """JPEG quality range. The second order's JPEG is the final one."""

    def validate(self, prefix: str) -> None:
        """Raise ``ConfigError`` naming ``prefix.field`` for the first invalid value."""
        lo, hi = self.kernel_size
        check(
            1 <= lo <= hi <= MAX_KERNEL_SIZE and lo % 2 == 1 and hi % 2 == 1,
            f"{prefix}.kernel_size",
            f"need odd sizes 1 ≤ lo ≤ hi ≤ {MAX_KERNEL_SIZE}, got {self.kernel_size}",
        )
        probs = self.kernel_prob.as_list()
        check(
            min(probs) >= 0 and abs(sum(probs) - 1) < 1e-6,
            f"{prefix}.kernel_prob",
            f"need probabilities ≥ 0 that sum to 1, got {probs}",
        )
        for name in ("sinc_prob", "blur_prob", "gaussian_noise_prob", "gray_noise_prob"):
            value = getattr(self, name)
            check(0 <= value <= 1, f"{prefix}.{name}", f"need a probability in [0, 1], got {value}")
        check(
            min(self.resize_prob) >= 0 and abs(sum(self.resize_prob) - 1) < 1e-6,
            f"{prefix}.resize_prob",
            f"need (up, down, keep) probabilities ≥ 0 that sum to 1, got {self.resize_prob}",
        )
        lo, hi = self.resize_range
        check(0 < lo <= 1 <= hi, f"{prefix}.resize_range", f"need 0 < lo ≤ 1 ≤ hi, got {self.resize_range}")
        lo, hi = self.blur_sigma
        check(0 < lo <= hi, f"{prefix}.blur_sigma", f"need 0 < lo ≤ hi, got {self.blur_sigma}")
        for name in ("betag_range", "betap_range"):
            lo, hi = getattr(self, name)
            check(0 < lo <= 1 <= hi, f"{prefix}.{name}", f"need 0 < lo ≤ 1 ≤ hi, got {(lo, hi)}")
        for name in ("noise_range", "poisson_scale_range"):
            lo, hi = getattr(self, name)
            check(0 <= lo <= hi, f"{prefix}.{name}", f"need 0 ≤ lo ≤ hi, got {(lo, hi)}")
        lo, hi = self.jpeg_range
        check(1 <= lo <= hi <= 100, f"{prefix}.jpeg_range", f"need 1 ≤ lo ≤ hi ≤ 100, got {self.jpeg_range}")


def _second_order() -> OrderConfig:
    return OrderConfig(
        blur_sigma=(0.2, 1.5),
        blur_prob=0.8,
        resize_prob=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        noise_range=(1.0, 25.0),
        poisson_scale_range=(0.05, 2.5),
    )


@dataclass
class DegradationConfig:
    """The Real-ESRGAN x4plus degradation (DESIGN §7); every default is the paper's."""

    first: OrderConfig = field(default_factory=OrderConfig)
    """First order: blur, resize of the HR size, noise, JPEG."""
    second: OrderConfig = field(default_factory=_second_order)
    """Second order: blur, resize of the LR size, noise; its ``jpeg_range`` is the final JPEG's."""
    final_sinc_prob: float = 0.8
    """Probability of the final sinc filter (size from ``final_kernel_size``, ω_c ∈ [π/3, π]); else no filter."""
    final_kernel_size: tuple[int, int] = (7, 21)
    """Size range of the final sinc kernel (odd)."""
    final_jpeg_first_prob: float = 0.5
    """Probability of the final order JPEG → resize → sinc; otherwise resize → sinc → JPEG."""
    usm_sharpen_gt: bool = False
    """Sharpen the GT with ``usm_sharp`` and degrade the sharpened GT, which is also the training target (Real-ESRGAN
    ``feed_data`` degrades ``gt_usm``; OSEDiff does not sharpen). Read by the data module; the degradation itself
    never sharpens."""
    resize_sampling: str = "scale_factor"
    """How the first order's random resize samples: ``scale_factor`` as Real-ESRGAN's ``F.interpolate(out,
    scale_factor=s)`` (output ⌊H·s⌋, source coordinate (i + ½)/s − ½), or ``size``: ``F.interpolate(size=⌊H·s⌋)``
    (coordinate (i + ½)·H/⌊H·s⌋ − ½, the grid stretched to the whole image). The second and final resizes use
    ``size`` in Real-ESRGAN and here."""
    jpeg: str = "diffjpeg"
    """The JPEG codec: ``diffjpeg``, BasicSR's ``DiffJPEG(differentiable=False)`` that Real-ESRGAN uses
    (``ctsr.data.jpeg``, zero padding to 16), or ``kornia``'s ``jpeg_codec_differentiable`` (a different colour
    conversion, chroma filter and table rounding: mean 2.8/255 apart at q = 30)."""
    poisson_levels: str = "count"
    """Photon levels L of the Poisson noise: ``count``, BasicSR's ``add_poisson_noise_pt`` (L = 2^⌈log2 v⌉, v the
    number of distinct 8-bit values of the image, or of its luma for gray noise), or ``256`` (a constant: the
    same as ``count`` for any image with more than 128 distinct values)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        self.first.validate("first")
        self.second.validate("second")
        for name in ("final_sinc_prob", "final_jpeg_first_prob"):
            value = getattr(self, name)
            check(0 <= value <= 1, name, f"need a probability in [0, 1], got {value}")
        lo, hi = self.final_kernel_size
        check(
            1 <= lo <= hi <= MAX_KERNEL_SIZE and lo % 2 == 1 and hi % 2 == 1,
            "final_kernel_size",
            f"need odd sizes 1 ≤ lo ≤ hi ≤ {MAX_KERNEL_SIZE}, got {self.final_kernel_size}",
        )
        for name, allowed in (("resize_sampling", RESIZE_SAMPLING), ("jpeg", JPEG_CODECS),
                              ("poisson_levels", POISSON_LEVEL_MODES)):  # fmt: skip
            value = getattr(self, name)
            check(value in allowed, name, f"need one of {', '.join(allowed)}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# per-sample parameters
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class KernelParams:
    """One blur kernel per sample; every field is (B,). ``kind`` indexes ``kernels.KERNEL_TYPES``."""

    kind: Tensor
    size: Tensor
    sigma_x: Tensor
    sigma_y: Tensor
    theta: Tensor
    beta: Tensor
    omega_c: Tensor

    def kernels(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The kernels, (B, 21, 21), each summing to 1."""
        shape = (self.sigma_x, self.sigma_y, self.theta, self.beta, self.omega_c)
        return mixed_kernels(self.kind, self.size, *(t.to(dtype) for t in shape))


@dataclass
class OrderParams:
    """One order's draws; every field is (B,)."""

    kernel: KernelParams
    resize: Tensor
    """Index into ``RESIZE_DIRECTIONS`` (up, down, keep)."""
    resize_scale: Tensor
    resize_mode: Tensor
    """Index into ``RESIZE_MODES`` (area, bilinear, bicubic)."""
    gaussian_noise: Tensor
    """True: Gaussian noise; False: Poisson noise."""
    noise_sigma: Tensor
    """σ of the Gaussian noise in 8-bit levels (of 255)."""
    poisson_scale: Tensor
    gray_noise: Tensor
    jpeg_quality: Tensor


@dataclass
class FinalParams:
    """The final step's draws; every field is (B,)."""

    sinc: KernelParams
    """The final sinc (kind ``sinc``) or no filter (kind ``identity``)."""
    resize_mode: Tensor
    jpeg_first: Tensor
    """True: JPEG → resize → sinc; False: resize → sinc → JPEG (quality: ``second.jpeg_quality``)."""


@dataclass
class DegradationParams:
    """Every random choice of the degradation, one value per sample (see ``RealESRGANDegradation.sample_params``)."""

    first: OrderParams
    second: OrderParams
    final: FinalParams

    @property
    def batch_size(self) -> int:
        return self.first.resize_scale.shape[0]

    def select(self, index: Tensor | Sequence[int]) -> DegradationParams:
        """The parameters of the samples ``index`` (in that order)."""
        device = self.first.resize_scale.device
        index = index.to(device) if isinstance(index, Tensor) else host_tensor(list(index), device, torch.long)
        return _select(self, index)

    def to(self, device: torch.device | str) -> DegradationParams:
        return _map_tensors(self, lambda t: t.to(device))

    @staticmethod
    def cat(params: Sequence[DegradationParams]) -> DegradationParams:
        return _zip_tensors(params, lambda ts: torch.cat(ts, 0))


def _map_tensors(obj, fn):
    if is_dataclass(obj):
        return type(obj)(**{f.name: _map_tensors(getattr(obj, f.name), fn) for f in fields(obj)})
    return fn(obj)


def _select(obj, index: Tensor):
    return _map_tensors(obj, lambda t: t.index_select(0, index))


def _zip_tensors(objs, fn):
    first = objs[0]
    if is_dataclass(first):
        return type(first)(**{f.name: _zip_tensors([getattr(o, f.name) for o in objs], fn) for f in fields(first)})
    return fn(list(objs))


class _Draw:
    """Uniform draws of shape (B,) from one generator on one device."""

    def __init__(self, batch: int, generator: torch.Generator | None, device: torch.device) -> None:
        self.batch, self.generator, self.device = batch, generator, device

    def rand(self) -> Tensor:
        return torch.rand(self.batch, generator=self.generator, device=self.device)

    def uniform(self, lo: float | Tensor, hi: float | Tensor) -> Tensor:
        return lo + (hi - lo) * self.rand()

    def odd(self, lo: int, hi: int) -> Tensor:
        """An odd integer in [lo, hi], uniformly (Real-ESRGAN's ``random.choice(kernel_range)``)."""
        steps = torch.randint(0, (hi - lo) // 2 + 1, (self.batch,), generator=self.generator, device=self.device)
        return lo + 2 * steps

    def choice(self, probs: Sequence[float]) -> Tensor:
        """An index i with probability probs[i] (Real-ESRGAN's ``random.choices``)."""
        edges = torch.tensor(probs, dtype=torch.float64).cumsum(0)[:-1].float().to(self.device, non_blocking=True)
        return (self.rand()[:, None] >= edges).sum(1)


def _sample_kernel(d: _Draw, cfg: OrderConfig) -> KernelParams:
    """Real-ESRGAN's ``random_mixed_kernels`` / sinc choice of ``RealESRGANDataset.__getitem__``, per sample."""
    kind = d.choice(cfg.kernel_prob.as_list())
    kind = torch.where(d.rand() < cfg.sinc_prob, SINC, kind)
    size = d.odd(*cfg.kernel_size)
    sigma_x = d.uniform(*cfg.blur_sigma)
    sigma_y = d.uniform(*cfg.blur_sigma)
    theta = d.uniform(-math.pi, math.pi)
    # β: with prob ½ in [lo, 1], else in [1, hi] (random_bivariate_generalized_Gaussian / _plateau)
    lower_half, v = d.rand() < 0.5, d.rand()
    plateau = torch.isin(kind, host_tensor(PLATEAU_TYPES, kind.device))
    lo = torch.where(plateau, cfg.betap_range[0], cfg.betag_range[0]).to(v)
    hi = torch.where(plateau, cfg.betap_range[1], cfg.betag_range[1]).to(v)
    beta = torch.where(lower_half, lo + (1 - lo) * v, 1 + (hi - 1) * v)
    # the sinc's cutoff: ω_c ∈ [π/3, π] for sizes < 13, else [π/5, π]
    omega_lo = torch.where(size < 13, math.pi / 3, math.pi / 5).to(v)
    omega_c = d.uniform(omega_lo, math.pi)
    kind = torch.where(d.rand() < cfg.blur_prob, kind, IDENTITY)
    # an isotropic kernel has σ_y = σ_x and θ = 0; record that, so the parameters describe the kernel
    iso = torch.isin(kind, host_tensor(ISOTROPIC_TYPES, kind.device))
    sigma_y = torch.where(iso, sigma_x, sigma_y)
    theta = torch.where(iso, torch.zeros_like(theta), theta)
    return KernelParams(kind, size, sigma_x, sigma_y, theta, beta, omega_c)


def _sample_order(d: _Draw, cfg: OrderConfig) -> OrderParams:
    kernel = _sample_kernel(d, cfg)
    resize = d.choice(cfg.resize_prob)
    lo, hi = cfg.resize_range
    scale = torch.where(resize == UP, d.uniform(1.0, hi), d.uniform(lo, 1.0))
    scale = torch.where(resize == KEEP, torch.ones_like(scale), scale)
    return OrderParams(
        kernel=kernel,
        resize=resize,
        resize_scale=scale,
        resize_mode=d.choice([1 / 3] * 3),
        gaussian_noise=d.rand() < cfg.gaussian_noise_prob,
        noise_sigma=d.uniform(*cfg.noise_range),
        poisson_scale=d.uniform(*cfg.poisson_scale_range),
        gray_noise=d.rand() < cfg.gray_noise_prob,
        jpeg_quality=d.uniform(*cfg.jpeg_range),
    )


def _sample_final(d: _Draw, cfg: DegradationConfig) -> FinalParams:
    kind = torch.where(d.rand() < cfg.final_sinc_prob, SINC, IDENTITY)
    size, omega_c = d.odd(*cfg.final_kernel_size), d.uniform(math.pi / 3, math.pi)
    unused = [torch.zeros(d.batch, device=d.device) for _ in range(4)]  # a sinc has no σ_x, σ_y, θ, β
    sinc = KernelParams(kind, size, *unused, omega_c)
    return FinalParams(sinc=sinc, resize_mode=d.choice([1 / 3] * 3), jpeg_first=d.rand() < cfg.final_jpeg_first_prob)


# ---------------------------------------------------------------------------------------------------------------
# batched operations on a canvas of per-sample sizes
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# the module
# ---------------------------------------------------------------------------------------------------------------


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
