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

Modules, along the pipeline's own sections: :mod:`~ctsr.data.degradations.config` (``DegradationConfig``,
``OrderConfig``, ``KernelProbs``), :mod:`~ctsr.data.degradations.params` (the per-sample draws,
``DegradationParams``), :mod:`~ctsr.data.degradations.operations` (blur, resize, JPEG, noise, sharpening on a
canvas of per-sample sizes) and :mod:`~ctsr.data.degradations.pipeline` (``RealESRGANDegradation``). Everything
public is importable from here: ``from ctsr.data.degradations import RealESRGANDegradation, DegradationConfig``.
"""
from ctsr.data.degradations.config import (
    JPEG_CODECS,
    POISSON_LEVEL_MODES,
    RESIZE_SAMPLING,
    DegradationConfig,
    KernelProbs,
    OrderConfig,
)
from ctsr.data.degradations.operations import (
    JPEG_CPU_CHUNK_PIXELS,
    POISSON_LEVELS,
    SCALE,
    add_gaussian_noise,
    add_poisson_noise,
    blur,
    count_levels,
    crop_to_scale,
    interpolation_taps,
    jpeg,
    resize,
    usm_sharp,
)
from ctsr.data.degradations.params import (
    DOWN,
    KEEP,
    RESIZE_DIRECTIONS,
    RESIZE_MODES,
    UP,
    DegradationParams,
    FinalParams,
    KernelParams,
    OrderParams,
)
from ctsr.data.degradations.pipeline import (
    CPU_MAX_GROUPS,
    DEVICE_MAX_GROUPS,
    RealESRGANDegradation,
)

__all__ = [
    "CPU_MAX_GROUPS",
    "DEVICE_MAX_GROUPS",
    "DOWN",
    "JPEG_CODECS",
    "JPEG_CPU_CHUNK_PIXELS",
    "KEEP",
    "POISSON_LEVELS",
    "POISSON_LEVEL_MODES",
    "RESIZE_DIRECTIONS",
    "RESIZE_MODES",
    "RESIZE_SAMPLING",
    "SCALE",
    "UP",
    "DegradationConfig",
    "DegradationParams",
    "FinalParams",
    "KernelParams",
    "KernelProbs",
    "OrderConfig",
    "OrderParams",
    "RealESRGANDegradation",
    "add_gaussian_noise",
    "add_poisson_noise",
    "blur",
    "count_levels",
    "crop_to_scale",
    "interpolation_taps",
    "jpeg",
    "resize",
    "usm_sharp",
]
