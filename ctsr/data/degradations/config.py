"""The degradation's configuration: the ranges and probabilities of each order (``OrderConfig``, its kernel
types ``KernelProbs``) and of the whole pipeline (``DegradationConfig``; Real-ESRGAN x4plus by default, DESIGN §7),
validated, with the step choices that decide the parity with Real-ESRGAN (``resize_sampling``, ``jpeg``,
``poisson_levels``). Package overview: :mod:`ctsr.data.degradations`."""
from __future__ import annotations

from dataclasses import dataclass, field

from ctsr.data.kernels import MAX_KERNEL_SIZE
from ctsr.errors import check

RESIZE_SAMPLING: tuple[str, ...] = ("scale_factor", "size")
JPEG_CODECS: tuple[str, ...] = ("diffjpeg", "kornia")
POISSON_LEVEL_MODES: tuple[str, ...] = ("count", "256")


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
