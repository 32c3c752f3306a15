"""The batched Real-ESRGAN degradation: draw frequencies, kernel shapes, noise levels, JPEG, determinism, a plain
per-sample reference loop (numpy kernels, ``np.pad`` + ``conv2d`` blur, ``F.interpolate`` with ``scale_factor`` or
``size``, BasicSR-style DiffJPEG or kornia's JPEG one image at a time) that the batched module must reproduce for
fixed parameters, and outputs of Real-ESRGAN's and BasicSR's own code (``tests/fixtures/realesrgan/``)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import kornia
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage, special
from skimage import data as skdata

from ctsr.data.degradations import (
    RESIZE_DIRECTIONS,
    RESIZE_MODES,
    DegradationConfig,
    KernelProbs,
    OrderConfig,
    RealESRGANDegradation,
    add_gaussian_noise,
    add_poisson_noise,
    blur,
    count_levels,
    crop_to_scale,
    jpeg,
    resize,
    usm_sharp,
)
from ctsr.data.jpeg import diff_jpeg
from ctsr.data.kernels import (
    ANISO,
    GENERALIZED_ANISO,
    GENERALIZED_ISO,
    IDENTITY,
    ISO,
    KERNEL_TYPES,
    PLATEAU_ANISO,
    PLATEAU_ISO,
    SINC,
    mixed_kernels,
)
from ctsr.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "realesrgan"))  # make_fixtures.CASES

SIGMAS = 5  # binomial tolerance of the frequency tests, in standard deviations


def assert_frequency(hits: torch.Tensor, p: float) -> None:
    n = hits.numel()
    freq = hits.float().mean().item()
    tol = SIGMAS * math.sqrt(max(p * (1 - p), 1e-12) / n)
    assert abs(freq - p) <= tol, f"frequency {freq:.4f} vs {p:.4f} ± {tol:.4f} (n={n})"


def photo(h: int, w: int, which: str = "astronaut", top: int = 40, left: int = 150) -> torch.Tensor:
    """A crop of a colour photo shipped with scikit-image, (3, h, w) in [0, 1]."""
    img = getattr(skdata, which)()[top : top + h, left : left + w]
    return torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255


def hr_batch(h: int = 64, w: int = 48) -> torch.Tensor:
    crops = [
        ("astronaut", 40, 150), ("coffee", 100, 200), ("chelsea", 60, 120), ("rocket", 150, 250), ("astronaut", 250, 60)
    ]
    return torch.stack([photo(h, w, *c) for c in crops])


# ---------------------------------------------------------------------------------------------------------------
# an independent per-sample reference: plain loops, numpy kernels, np.pad + conv2d, F.interpolate
# ---------------------------------------------------------------------------------------------------------------


def ref_kernel(kind: int, k: int, sx: float, sy: float, theta: float, beta: float, omega: float) -> np.ndarray:
    """BasicSR's formulas, one k×k kernel in float64, then zero-padded to 21×21 (RealESRGANDataset)."""
    c = (k - 1) / 2
    kern = np.zeros((k, k))
    if kind == IDENTITY:
        kern[k // 2, k // 2] = 1
    elif kind == SINC:
        for r in range(k):
            for q in range(k):
                d = math.hypot(q - c, r - c)
                kern[r, q] = omega**2 / (4 * math.pi) if d == 0 else omega * special.j1(omega * d) / (2 * math.pi * d)
    else:
        if kind in (ISO, GENERALIZED_ISO, PLATEAU_ISO):
            sy, theta = sx, 0.0
        u = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        inv = np.linalg.inv(u @ np.diag([sx**2, sy**2]) @ u.T)
        for r in range(k):
            for q in range(k):
                p = np.array([q - c, r - c])  # (x = column, y = row), BasicSR's mesh_grid
                m = p @ inv @ p
                if kind in (ISO, ANISO):
                    kern[r, q] = math.exp(-0.5 * m)
                elif kind in (GENERALIZED_ISO, GENERALIZED_ANISO):
                    kern[r, q] = math.exp(-0.5 * m**beta)
                else:
                    kern[r, q] = 1 / (m**beta + 1)
    kern /= kern.sum()
    pad = (21 - k) // 2
    return np.pad(kern, pad)


def ref_kernels_of(kp, b: int) -> np.ndarray:
    shape = (float(t[b]) for t in (kp.sigma_x, kp.sigma_y, kp.theta, kp.beta, kp.omega_c))
    return ref_kernel(int(kp.kind[b]), int(kp.size[b]), *shape)


def ref_blur(img: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """(3, h, w): reflect-pad by 10 with numpy (any size), correlate each channel with conv2d."""
    padded = torch.from_numpy(np.pad(img.numpy(), ((0, 0), (10, 10), (10, 10)), mode="reflect"))
    weight = torch.from_numpy(kernel).float()[None, None].expand(3, 1, 21, 21)
    return F.conv2d(padded[None], weight, groups=3)[0]


def ref_resize(img: torch.Tensor, size: tuple[int, int], mode: int, scale: float | None = None) -> torch.Tensor:
    if scale is not None:  # Real-ESRGAN's first resize
        out = F.interpolate(img[None], scale_factor=scale, mode=RESIZE_MODES[mode])[0]
        assert out.shape[-2:] == size
        return out
    return F.interpolate(img[None], size=size, mode=RESIZE_MODES[mode])[0]


def ref_jpeg(img: torch.Tensor, quality: float, codec: str = "kornia") -> torch.Tensor:
    """One image alone through the codec (``diff_jpeg`` is checked against BasicSR's own outputs below)."""
    if codec == "diffjpeg":
        return diff_jpeg(img.clamp(0, 1)[None], torch.tensor([quality]))[0]
    return kornia.enhance.jpeg_codec_differentiable(img.clamp(0, 1)[None], torch.tensor([quality]))[0]


def ref_degrade(hr: torch.Tensor, params, b: int, config: DegradationConfig | None = None) -> torch.Tensor:
    """Sample b alone, its noise switched off (σ = 0 or Poisson scale 0): the pipeline of the module docstring,
    with the config's resize sampling and JPEG codec (default: Real-ESRGAN's)."""
    config = config or DegradationConfig()
    codec = config.jpeg
    p1, p2, pf = params.first, params.second, params.final
    assert float(p1.noise_sigma[b]) == 0 and float(p1.poisson_scale[b]) == 0
    assert float(p2.noise_sigma[b]) == 0 and float(p2.poisson_scale[b]) == 0
    h, w = hr.shape[-2] // 4, hr.shape[-1] // 4
    x = hr[:, : 4 * h, : 4 * w]
    x = ref_blur(x, ref_kernels_of(p1.kernel, b))
    s1 = float(p1.resize_scale[b])
    scale = s1 if config.resize_sampling == "scale_factor" else None
    x = ref_resize(x, (math.floor(4 * h * s1), math.floor(4 * w * s1)), int(p1.resize_mode[b]), scale)
    x = ref_jpeg(x.clamp(0, 1), float(p1.jpeg_quality[b]), codec)  # the noise step clips
    x = ref_blur(x, ref_kernels_of(p2.kernel, b))
    s2 = float(p2.resize_scale[b])
    x = ref_resize(x, (math.floor(h * s2), math.floor(w * s2)), int(p2.resize_mode[b])).clamp(0, 1)
    q, mode, sinc = float(p2.jpeg_quality[b]), int(pf.resize_mode[b]), ref_kernels_of(pf.sinc, b)
    if bool(pf.jpeg_first[b]):
        x = ref_blur(ref_resize(ref_jpeg(x, q, codec), (h, w), mode), sinc)
    else:
        x = ref_jpeg(ref_blur(ref_resize(x, (h, w), mode), sinc), q, codec)
    return (x * 255).round().clamp(0, 255) / 255


def fixed_params(module: RealESRGANDegradation, batch: int = 5, seed: int = 0):
    """Drawn parameters with the noise switched off and every kind, mode and order covered by hand."""
    params = module.sample_params(batch, torch.Generator().manual_seed(seed))
    p1, p2, pf = params.first, params.second, params.final
    t = torch.tensor
    # intermediate sizes of a 64×48 HR: none a multiple of 16 below its canvas (the JPEG edge effect)
    p1.resize_scale = t([1.3, 0.6, 0.2, 0.4, 1.15])  # → 83×62, 38×28, 12×9, 25×19, 73×55
    p2.resize_scale = t([1.2, 0.5, 0.3, 0.9, 0.8])  # → 19×14, 8×6, 4×3, 14×10, 12×9
    p1.resize_mode, p2.resize_mode, pf.resize_mode = t([0, 1, 2, 0, 1]), t([2, 0, 1, 1, 2]), t([1, 2, 0, 2, 0])
    p1.kernel.kind = t([ISO, ANISO, GENERALIZED_ISO, PLATEAU_ANISO, SINC])
    p2.kernel.kind = t([GENERALIZED_ANISO, PLATEAU_ISO, IDENTITY, SINC, ANISO])
    pf.sinc.kind = t([SINC, IDENTITY, SINC, SINC, IDENTITY])
    p1.kernel.size, p2.kernel.size, pf.sinc.size = t([21, 7, 13, 9, 11]), t([9, 21, 7, 15, 21]), t([7, 21, 13, 9, 11])
    pf.jpeg_first = t([True, False, True, False, True])
    for p in (p1, p2):
        p.gaussian_noise = t([True, False, True, False, True])
        p.gray_noise = t([False, True, True, False, False])
        p.noise_sigma = torch.zeros(batch)
        p.poisson_scale = torch.zeros(batch)
    return params


def kernels_of(k, sel: torch.Tensor) -> torch.Tensor:
    """The module's kernels of the samples ``sel`` of the kernel parameters ``k``."""
    return mixed_kernels(*(t[sel] for t in (k.kind, k.size, k.sigma_x, k.sigma_y, k.theta, k.beta, k.omega_c)))


def zero_noise(params):
    for p in (params.first, params.second):
        p.noise_sigma = torch.zeros_like(p.noise_sigma)
        p.poisson_scale = torch.zeros_like(p.poisson_scale)
    return params


# ---------------------------------------------------------------------------------------------------------------
# draws
# ---------------------------------------------------------------------------------------------------------------

N = 40_000


@pytest.fixture(scope="module")
def many_params():
    return RealESRGANDegradation().sample_params(N, torch.Generator().manual_seed(1))


def test_kernel_type_frequencies(many_params):
    cfg = DegradationConfig()
    for order, c in ((many_params.first, cfg.first), (many_params.second, cfg.second)):
        kind = order.kernel.kind
        assert_frequency(kind == IDENTITY, 1 - c.blur_prob)
        assert_frequency(kind == SINC, c.blur_prob * c.sinc_prob)
        for index, p in enumerate(c.kernel_prob.as_list()):
            assert_frequency(kind == index, c.blur_prob * (1 - c.sinc_prob) * p)
    final = many_params.final.sinc.kind
    assert set(final.unique().tolist()) == {SINC, IDENTITY}
    assert_frequency(final == SINC, cfg.final_sinc_prob)


def test_choice_frequencies_and_ranges(many_params):
    cfg = DegradationConfig()
    for order, c in ((many_params.first, cfg.first), (many_params.second, cfg.second)):
        for direction, p in enumerate(c.resize_prob):
            assert_frequency(order.resize == direction, p)
        scale, lo, hi = order.resize_scale, *c.resize_range
        assert ((scale >= 1) & (scale <= hi))[order.resize == 0].all()
        assert ((scale >= lo) & (scale <= 1))[order.resize == 1].all()
        assert (scale == 1)[order.resize == 2].all()
        for mode in range(3):
            assert_frequency(order.resize_mode == mode, 1 / 3)
        assert_frequency(order.gaussian_noise, c.gaussian_noise_prob)
        assert_frequency(order.gray_noise, c.gray_noise_prob)
        for size in range(7, 22, 2):
            assert_frequency(order.kernel.size == size, 1 / 8)
        k = order.kernel
        gaussian_family = k.kind < SINC
        assert ((k.sigma_x >= c.blur_sigma[0]) & (k.sigma_x <= c.blur_sigma[1])).all()
        assert ((k.sigma_y >= c.blur_sigma[0]) & (k.sigma_y <= c.blur_sigma[1])).all()
        iso = (k.kind == ISO) | (k.kind == GENERALIZED_ISO) | (k.kind == PLATEAU_ISO)
        assert (k.sigma_x == k.sigma_y)[iso].all() and (k.theta == 0)[iso].all()
        assert ((k.theta.abs() <= math.pi) & gaussian_family).sum() == gaussian_family.sum()
        # β: half in [lo, 1], half in [1, hi] (BasicSR's rule), per family
        generalized, plateau = (GENERALIZED_ISO, GENERALIZED_ANISO), (PLATEAU_ISO, PLATEAU_ANISO)
        for kinds, (lo, hi) in ((generalized, c.betag_range), (plateau, c.betap_range)):
            beta = k.beta[(k.kind == kinds[0]) | (k.kind == kinds[1])]
            assert ((beta >= lo) & (beta <= hi)).all()
            assert_frequency(beta < 1 if lo < 1 else beta == 1, 0.5)
        # the sinc's cutoff range depends on its size
        omega, size = k.omega_c[k.kind == SINC], k.size[k.kind == SINC]
        small = size < 13
        assert ((omega >= math.pi / 3 - 1e-6) & (omega <= math.pi))[small].all()
        assert ((omega >= math.pi / 5 - 1e-6) & (omega <= math.pi))[~small].all()
        assert (omega < math.pi / 3)[~small].any()
        sigma, q = order.noise_sigma, order.jpeg_quality
        assert ((sigma >= c.noise_range[0]) & (sigma <= c.noise_range[1])).all()
        assert ((q >= c.jpeg_range[0]) & (q <= c.jpeg_range[1])).all()
        assert abs(q.mean().item() - sum(c.jpeg_range) / 2) < 0.5
    assert_frequency(many_params.final.jpeg_first, cfg.final_jpeg_first_prob)
    for mode in range(3):
        assert_frequency(many_params.final.resize_mode == mode, 1 / 3)
    omega = many_params.final.sinc.omega_c
    assert ((omega >= math.pi / 3 - 1e-6) & (omega <= math.pi)).all()


def test_configured_probabilities_are_followed():
    cfg = DegradationConfig(
        first=OrderConfig(
            kernel_prob=KernelProbs(0.0, 0.0, 0.5, 0.0, 0.0, 0.5), sinc_prob=0.3, resize_prob=(0.0, 0.0, 1.0)
        ),
        final_sinc_prob=0.0,
    )
    params = RealESRGANDegradation(cfg).sample_params(N, torch.Generator().manual_seed(2))
    kind = params.first.kernel.kind
    assert_frequency(kind == SINC, 0.3)
    assert_frequency(kind == GENERALIZED_ISO, 0.35)
    assert_frequency(kind == PLATEAU_ANISO, 0.35)
    assert (params.first.resize_scale == 1).all()
    assert (params.final.sinc.kind == IDENTITY).all()


def test_samples_in_a_batch_draw_their_own_parameters():
    params = RealESRGANDegradation().sample_params(8, torch.Generator().manual_seed(3))
    for t in (params.first.kernel.sigma_x, params.first.resize_scale, params.first.jpeg_quality,
              params.second.noise_sigma, params.second.jpeg_quality, params.final.sinc.omega_c):  # fmt: skip
        assert t.unique().numel() == 8
    # two copies of one image in a batch come out different
    hr = photo(64, 64)[None].repeat(2, 1, 1, 1)
    lr = RealESRGANDegradation()(hr, torch.Generator().manual_seed(4))
    assert not torch.equal(lr[0], lr[1])


# ---------------------------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------------------------


def test_kernels_sum_to_one_inside_their_window(many_params):
    k = many_params.first.kernel
    sel = torch.arange(2000)
    kernels = kernels_of(k, sel)
    assert kernels.shape == (2000, 21, 21)
    torch.testing.assert_close(kernels.sum((1, 2)), torch.ones(2000), atol=1e-5, rtol=0)
    offset = (torch.arange(21) - 10).abs()
    half = k.size[sel, None, None] // 2
    outside = (offset[None, :, None] > half) | (offset[None, None, :] > half)
    assert (kernels[outside] == 0).all()
    assert torch.isfinite(kernels).all()
    # every kernel is symmetric under a half turn (so correlation = convolution)
    torch.testing.assert_close(kernels, kernels.flip(1, 2), atol=1e-6, rtol=0)


def test_gaussian_kernels_have_the_requested_covariance():
    # σ ≥ 1 and size 21: the truncation at ±10 px (≥ 4σ) and the sampling on the integer grid are negligible
    sx = torch.tensor([1.0, 2.0, 2.5, 2.0, 1.2])
    sy = torch.tensor([1.0, 1.0, 1.5, 2.0, 2.4])
    theta = torch.tensor([0.0, 0.4, -2.0, 1.0, 3.0])
    kind = torch.tensor([ISO, ANISO, ANISO, ANISO, ANISO])
    kernels = mixed_kernels(kind, torch.full((5,), 21), sx, sy, theta, torch.ones(5), torch.ones(5)).double()
    ax = torch.arange(21, dtype=torch.float64) - 10
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    for b in range(5):
        k = kernels[b]
        assert abs((k * x).sum()) < 1e-9 and abs((k * y).sum()) < 1e-9
        xy = (k * x * y).sum()
        measured = torch.stack([torch.stack([(k * x * x).sum(), xy]), torch.stack([xy, (k * y * y).sum()])])
        c, s = math.cos(theta[b]), math.sin(theta[b])
        u = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        expected = u @ torch.diag(torch.tensor([sx[b] ** 2, sy[b] ** 2], dtype=torch.float64)) @ u.T
        torch.testing.assert_close(measured, expected, atol=2e-3, rtol=1e-3)


def test_kernels_match_the_numpy_reference(many_params):
    k = many_params.first.kernel
    picked = []
    for kind in range(len(KERNEL_TYPES) - 1):  # identity does not occur in the first order
        picked += (k.kind == kind).nonzero().flatten()[:4].tolist()
    sel = torch.tensor(picked)
    kernels = kernels_of(k, sel)
    for row, b in enumerate(picked):
        np.testing.assert_allclose(kernels[row].numpy(), ref_kernels_of(k, b), atol=2e-6)
    others = (k.size, k.sigma_x, k.sigma_y, k.theta, k.beta, k.omega_c)
    ident = mixed_kernels(torch.tensor([IDENTITY]), *(t[:1] for t in others))
    assert ident[0, 10, 10] == 1 and ident.sum() == 1


# ---------------------------------------------------------------------------------------------------------------
# noise and JPEG
# ---------------------------------------------------------------------------------------------------------------


def test_gaussian_noise_level_of_a_flat_image():
    flat = torch.full((4, 3, 128, 128), 0.5)
    sigma = torch.tensor([1.0, 10.0, 25.0, 10.0]) / 255
    gray = torch.tensor([False, False, False, True])
    noise = add_gaussian_noise(flat, sigma, gray, torch.Generator().manual_seed(5)) - flat
    torch.testing.assert_close(noise.std(dim=(1, 2, 3)), sigma, rtol=0.02, atol=0)
    assert noise.mean(dim=(1, 2, 3)).abs().max() < 3 * sigma.max() / 128
    assert torch.equal(noise[3, 0], noise[3, 1]) and torch.equal(noise[3, 0], noise[3, 2])  # gray: one field
    corr = torch.corrcoef(noise[1].reshape(3, -1))
    assert corr[0, 1].abs() < 0.03 and corr[0, 2].abs() < 0.03  # colour: independent channels


def test_poisson_noise_level_of_a_flat_image():
    value = torch.tensor([0.2, 0.5, 0.8, 0.5])
    flat = value.view(-1, 1, 1, 1).expand(4, 3, 128, 128).contiguous()
    flat = (flat * 255).round() / 255
    scale = torch.tensor([1.0, 2.0, 0.5, 1.0])
    gray = torch.tensor([False, False, False, True])
    noise = add_poisson_noise(flat, scale, gray, torch.Generator().manual_seed(6)) - flat
    # counts ~ Poisson(256·v): std of counts/256 is √(v/256); gray noise counts the luma (= v on a gray image)
    expected = scale * (flat[:, 0, 0, 0] / 256).sqrt()
    torch.testing.assert_close(noise.std(dim=(1, 2, 3)), expected, rtol=0.03, atol=0)
    assert noise.mean(dim=(1, 2, 3)).abs().max() < 4 * expected.max() / 128
    assert torch.equal(noise[3, 0], noise[3, 1]) and torch.equal(noise[3, 0], noise[3, 2])
    assert not torch.equal(noise[1, 0], noise[1, 1])


def test_noise_is_clipped():
    img = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 3, 32, 32).contiguous()
    g = torch.Generator().manual_seed(7)
    for out in (add_gaussian_noise(img, torch.full((2,), 0.2), torch.zeros(2, dtype=torch.bool), g),
                add_poisson_noise(img, torch.full((2,), 3.0), torch.zeros(2, dtype=torch.bool), g)):  # fmt: skip
        assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("codec", ["diffjpeg", "kornia"])
def test_lower_jpeg_quality_gives_larger_error(codec):
    img = photo(64, 96)[None].repeat(4, 1, 1, 1)
    quality = torch.tensor([10.0, 30.0, 60.0, 95.0])
    out = jpeg(img, ([64] * 4, [96] * 4), quality, codec)
    error = (out - img).abs().mean(dim=(1, 2, 3))
    assert (error[:-1] > error[1:]).all(), error


@pytest.mark.parametrize("codec", ["diffjpeg", "kornia"])
def test_jpeg_on_a_canvas_codes_each_sample_as_alone(codec):
    img = photo(64, 80)
    sizes = ([45, 30, 64, 32], [37, 80, 50, 48])
    quality = torch.tensor([40.0, 70.0, 50.0, 60.0])
    canvas = torch.rand(4, 3, 64, 80)
    for b in range(4):
        canvas[b, :, : sizes[0][b], : sizes[1][b]] = img[:, : sizes[0][b], : sizes[1][b]]
    out = jpeg(canvas, sizes, quality, codec)
    for b in range(4):
        h, w = sizes[0][b], sizes[1][b]
        diff = (out[b, :, :h, :w] - ref_jpeg(img[:, :h, :w], float(quality[b]), codec)).abs()
        if b < 3 or codec == "diffjpeg":  # the same blocks, the same bytes (DiffJPEG has no cross-block filter)
            assert diff.max() < 1e-5
        else:  # kornia, 32×48 on 64×80: only the last MCU row and column (16 px, +1) move, by a few levels
            assert diff[:, : h - 17, : w - 17].max() < 1e-5
            assert 0 < diff.max() < 6 / 255


def test_host_tensor_values_and_devices():
    from ctsr.data.kernels import host_tensor

    t = host_tensor([3, 1, 2], "cpu", torch.long)
    assert t.dtype == torch.long and t.tolist() == [3, 1, 2]
    m = host_tensor([0.5, 1.5], torch.device("meta"))  # the non-blocking path to another device
    assert m.device.type == "meta" and m.dtype == torch.float32 and m.shape == (2,)


def test_cpu_jpeg_chunks_change_no_value(monkeypatch):
    """On a CPU ``jpeg`` codes the batch in cache-sized chunks: the bytes equal those of one call."""
    from ctsr.data.degradations import operations  # where jpeg reads its chunk size

    img = torch.stack([photo(48, 64, *c) for c in (("astronaut", 0, 0), ("coffee", 30, 90), ("rocket", 80, 40))])
    sizes, quality = ([48, 40, 33], [64, 64, 50]), torch.tensor([35.0, 60.0, 90.0])
    monkeypatch.setattr(operations, "JPEG_CPU_CHUNK_PIXELS", 1 << 40)
    whole = jpeg(img, sizes, quality, "kornia")
    monkeypatch.setattr(operations, "JPEG_CPU_CHUNK_PIXELS", 2 * 48 * 64)  # chunks of 2, then 1
    chunked = jpeg(img, sizes, quality, "kornia")
    assert chunked.shape == whole.shape and (chunked - whole).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# batched operations on a ragged canvas against per-sample PyTorch / numpy
# ---------------------------------------------------------------------------------------------------------------


def test_ragged_resize_matches_interpolate_per_sample():
    torch.manual_seed(8)
    size_in = ([40, 33, 7, 40], [29, 40, 5, 40])
    size_out = ([12, 50, 21, 6], [61, 9, 3, 40])
    x = torch.rand(4, 3, 40, 40)
    for mode in range(3):
        modes = [mode, (mode + 1) % 3, (mode + 2) % 3, mode]
        out = resize(x, size_in, size_out, modes, (50, 61))
        for b in range(4):
            hi, wi, ho, wo = size_in[0][b], size_in[1][b], size_out[0][b], size_out[1][b]
            expected = ref_resize(x[b, :, :hi, :wi], (ho, wo), modes[b])
            torch.testing.assert_close(out[b, :, :ho, :wo], expected, atol=1e-5, rtol=0)
            assert (out[b, :, ho:] == 0).all() and (out[b, :, :, wo:] == 0).all()


def test_ragged_blur_matches_numpy_reflect_per_sample():
    torch.manual_seed(9)
    x = torch.rand(3, 3, 30, 30)
    size = ([30, 12, 4], [25, 30, 9])  # smaller than the 21-tap kernel too: numpy's repeated reflection
    params = RealESRGANDegradation().sample_params(3, torch.Generator().manual_seed(10)).first.kernel
    params.kind = torch.tensor([ANISO, SINC, PLATEAU_ISO])
    params.size = torch.tensor([21, 21, 15])
    out = blur(x, params.kernels(), size)
    for b in range(3):
        h, w = size[0][b], size[1][b]
        expected = ref_blur(x[b, :, :h, :w], ref_kernels_of(params, b))
        torch.testing.assert_close(out[b, :, :h, :w], expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# the whole module
# ---------------------------------------------------------------------------------------------------------------


LEGACY = dict(resize_sampling="size", jpeg="kornia", poisson_levels="256")  # the suite's modes before parity


@pytest.mark.parametrize("max_groups, modes", [(1, {}), (5, {}), (None, {}), (None, LEGACY), (3, LEGACY)])
def test_reference_loop_agrees_for_fixed_parameters(max_groups, modes):
    config = DegradationConfig(**modes)
    module = RealESRGANDegradation(config, max_groups=max_groups)
    hr = hr_batch(64, 48)
    params = fixed_params(module)
    out = module.apply(hr, params, torch.Generator().manual_seed(11))
    assert out.shape == (5, 3, 16, 12)
    for b in range(5):
        expected = ref_degrade(hr[b], params, b, config)
        diff = (out[b] - expected).abs()
        # float rounding can flip a value across a rounding boundary of the final 8-bit quantisation
        assert diff.max() <= 1 / 255 + 1e-6, (b, diff.max())
        assert (diff > 0).float().mean() < 0.01, (b, (diff > 0).float().mean())


def test_reference_loop_agrees_for_drawn_parameters():
    """Drawn sizes: this seed keeps one sample at 64 px (a multiple of 16) below a larger canvas, so with kornia's
    codec the JPEG edge effect of the module docstring shows up: a few levels on the last MCU rows, nothing on
    average. BasicSR's DiffJPEG (the default) has no such effect: only final 8-bit rounding flips remain."""
    hr = hr_batch(64, 64)
    for modes in ({}, LEGACY):
        config = DegradationConfig(**modes)
        module = RealESRGANDegradation(config)
        params = zero_noise(module.sample_params(5, torch.Generator().manual_seed(14)))
        assert (params.first.resize_scale == 1).sum() == 1 and (params.first.resize_scale > 1).any()
        out = module.apply(hr, params)
        expected = torch.stack([ref_degrade(hr[b], params, b, config) for b in range(5)])
        diff = (out - expected).abs()
        if modes:
            assert diff.mean() < 0.5 / 255 and diff.max() < 12 / 255, (diff.mean() * 255, diff.max() * 255)
        else:
            assert diff.max() <= 1 / 255 + 1e-6 and (diff > 0).float().mean() < 0.01, diff.max() * 255


@pytest.mark.parametrize("size", [(68, 68), (100, 84), (70, 85), (4, 9)])
def test_output_shape_range_and_quantisation(size):
    h, w = size
    hr = torch.rand(3, 3, h, w, generator=torch.Generator().manual_seed(13))
    lr = RealESRGANDegradation()(hr, torch.Generator().manual_seed(14))
    assert lr.shape == (3, 3, h // 4, w // 4)
    assert lr.min() >= 0 and lr.max() <= 1
    assert torch.equal(lr * 255, (lr * 255).round())


def test_sizes_not_divisible_by_4_crop_the_hr_top_left():
    module = RealESRGANDegradation()
    hr = torch.rand(2, 3, 70, 87, generator=torch.Generator().manual_seed(15))
    params = module.sample_params(2, torch.Generator().manual_seed(16))
    a = module.apply(hr, params, torch.Generator().manual_seed(17))
    b = module.apply(crop_to_scale(hr), params, torch.Generator().manual_seed(17))
    assert crop_to_scale(hr).shape[-2:] == (68, 84)
    assert torch.equal(a, b)


def test_same_seed_is_bit_identical_and_other_seeds_differ():
    module = RealESRGANDegradation()
    hr = hr_batch(48, 48)
    a = module(hr, torch.Generator().manual_seed(18))
    b = module(hr, torch.Generator().manual_seed(18))
    c = module(hr, torch.Generator().manual_seed(19))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_per_image_seeds_do_not_depend_on_the_batch():
    module = RealESRGANDegradation()
    hr = hr_batch(48, 48)
    full = module(hr, seeds=torch.tensor([101, 102, 103, 104, 105]))
    part = module(hr[[3, 1]], seeds=[104, 102])
    assert torch.equal(full[[3, 1]], part)
    assert torch.equal(module(hr[2:3], seeds=[103]), full[2:3])
    with pytest.raises(ValueError, match="seeds"):
        module(hr, generator=torch.Generator(), seeds=[1, 2, 3, 4, 5])


def test_dtype_and_device_follow_the_input():
    module = RealESRGANDegradation()
    hr = hr_batch(32, 32)
    params = module.sample_params(5, torch.Generator().manual_seed(20), device=hr.device)
    assert params.first.resize_scale.device == hr.device
    params = zero_noise(params)  # the noise draws differ between dtypes; everything else agrees
    lr64 = module.apply(hr.double(), params)
    lr32 = module.apply(hr, params)
    assert lr64.dtype == torch.float64 and lr32.dtype == torch.float32
    assert lr64.device == hr.device
    assert (lr64 - lr32.double()).abs().max() <= 1 / 255 + 1e-6
    assert module(hr.to(torch.bfloat16), torch.Generator().manual_seed(22)).dtype == torch.bfloat16


def test_params_select_and_cat_round_trip():
    module = RealESRGANDegradation()
    params = module.sample_params(6, torch.Generator().manual_seed(23))
    joined = type(params).cat([params.select([0, 1, 2]), params.select([3, 4, 5])])
    assert joined.batch_size == 6
    assert torch.equal(joined.second.kernel.omega_c, params.second.kernel.omega_c)
    assert torch.equal(params.select([4]).final.jpeg_first, params.final.jpeg_first[4:5])


# ---------------------------------------------------------------------------------------------------------------
# USM sharpening
# ---------------------------------------------------------------------------------------------------------------


def test_usm_sharp_matches_a_scipy_reference():
    img = photo(64, 72)[None]
    out = usm_sharp(img)
    # OpenCV's GaussianBlur(ksize=51, σ=0) as scipy: σ = 0.3·((51−1)/2 − 1) + 0.8 = 8, border 'mirror' (reflect-101)
    ax = np.arange(51) - 25
    g = np.exp(-(ax**2) / (2 * 8.0**2))
    g /= g.sum()

    def gblur(a):
        return ndimage.convolve1d(ndimage.convolve1d(a, g, axis=-1, mode="mirror"), g, axis=-2, mode="mirror")

    x = img[0].double().numpy()
    residual = x - gblur(x)
    mask = (np.abs(residual) * 255 > 10).astype(np.float64)
    soft = gblur(mask)
    sharp = np.clip(x + 0.5 * residual, 0, 1)
    expected = soft * sharp + (1 - soft) * x
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-5)
    flat = torch.full((1, 3, 40, 40), 0.3)
    torch.testing.assert_close(usm_sharp(flat), flat)


# ---------------------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, flag",
    [
        (lambda: OrderConfig(resize_range=(1.2, 1.5)), "first.resize_range"),
        (lambda: OrderConfig(kernel_size=(8, 21)), "first.kernel_size"),
        (lambda: OrderConfig(kernel_prob=KernelProbs(iso=0.9)), "first.kernel_prob"),
        (lambda: OrderConfig(betap_range=(1.5, 2.0)), "first.betap_range"),
        (lambda: OrderConfig(gray_noise_prob=1.5), "first.gray_noise_prob"),
    ],
)
def test_invalid_config_names_the_field(make, flag):
    with pytest.raises(ConfigError, match=flag.replace(".", r"\.")):
        DegradationConfig(first=make())
    with pytest.raises(ConfigError, match="second.jpeg_range"):
        DegradationConfig(second=OrderConfig(jpeg_range=(30, 101)))
    with pytest.raises(ConfigError, match="final_kernel_size"):
        DegradationConfig(final_kernel_size=(7, 23))


def test_defaults_are_real_esrgan_x4plus():
    cfg = RealESRGANDegradation().config
    assert cfg.first.blur_sigma == (0.2, 3.0) and cfg.second.blur_sigma == (0.2, 1.5)
    assert cfg.first.resize_prob == (0.2, 0.7, 0.1) and cfg.second.resize_prob == (0.3, 0.4, 0.3)
    assert cfg.first.resize_range == (0.15, 1.5) and cfg.second.resize_range == (0.3, 1.2)
    assert cfg.first.noise_range == (1.0, 30.0) and cfg.second.noise_range == (1.0, 25.0)
    assert cfg.first.poisson_scale_range == (0.05, 3.0) and cfg.second.poisson_scale_range == (0.05, 2.5)
    assert cfg.first.blur_prob == 1.0 and cfg.second.blur_prob == 0.8
    assert cfg.final_sinc_prob == 0.8 and cfg.usm_sharpen_gt is False


def test_jsonargparse_builds_the_module_from_yaml():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(RealESRGANDegradation, "degradation")
    cfg = parser.parse_string(
        "degradation:\n"
        "  config:\n"
        "    usm_sharpen_gt: true\n"
        "    second:\n"
        "      blur_prob: 0.5\n"
        "      jpeg_range: [40, 90]\n"
        "      kernel_prob: {iso: 0.5, aniso: 0.2}\n"
        "  max_groups: 2\n"
    )
    module = parser.instantiate(cfg).degradation
    assert isinstance(module, RealESRGANDegradation) and module.max_groups == 2
    assert module.config.usm_sharpen_gt is True
    assert module.config.second.blur_prob == 0.5 and tuple(module.config.second.jpeg_range) == (40, 90)
    assert module.config.second.kernel_prob.iso == 0.5 and module.config.second.kernel_prob.plateau_iso == 0.12
    assert module.config.first == OrderConfig()


# ---------------------------------------------------------------------------------------------------------------
# parity with Real-ESRGAN's and BasicSR's own code (outputs in tests/fixtures/realesrgan/, see its README)
# ---------------------------------------------------------------------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures" / "realesrgan"
MODE_INDEX = {m: i for i, m in enumerate(RESIZE_MODES)}
KIND_INDEX = {k: i for i, k in enumerate(KERNEL_TYPES)}


def fixture(name: str) -> dict:
    with np.load(FIXTURES / f"{name}.npz") as f:
        return {k: f[k] for k in f.files}


def _set_kernel(kp, specs: list[dict]) -> None:
    kp.kind = torch.tensor([KIND_INDEX[s["kind"]] for s in specs])
    kp.size = torch.tensor([s["size"] for s in specs])
    kp.sigma_x = torch.tensor([s.get("sigma_x", 1.0) for s in specs])
    kp.sigma_y = torch.tensor([s.get("sigma_y", s.get("sigma_x", 1.0)) for s in specs])
    kp.theta = torch.tensor([s.get("theta", 0.0) for s in specs])
    kp.beta = torch.tensor([s.get("beta", 1.0) for s in specs])
    kp.omega_c = torch.tensor([s.get("omega_c", 1.0) for s in specs])


def feed_data_params(module: RealESRGANDegradation, case: dict):
    """The module's parameters for one scripted ``feed_data`` call of ``make_fixtures.CASES`` (batch of 2)."""
    params = module.sample_params(2, torch.Generator().manual_seed(0))
    p1, p2, pf = params.first, params.second, params.final
    identity = [dict(kind="identity", size=21)] * 2
    for p, (direction, scale, mode), kernels in (
        (p1, case["first"], case["kernel1"]),
        (p2, case["second"], case["kernel2"] if case["second_blur"] else identity),
    ):
        p.resize = torch.tensor([RESIZE_DIRECTIONS.index(direction)] * 2)
        p.resize_scale = torch.tensor([scale] * 2)
        p.resize_mode = torch.tensor([MODE_INDEX[mode]] * 2)
        p.gaussian_noise, p.gray_noise = torch.tensor([True, True]), torch.tensor([False, False])
        p.noise_sigma, p.poisson_scale = torch.zeros(2), torch.zeros(2)
        _set_kernel(p.kernel, kernels)
    p1.jpeg_quality, p2.jpeg_quality = (torch.tensor([q] * 2) for q in case["jpeg"])
    _set_kernel(pf.sinc, case["sinc"])
    pf.resize_mode = torch.tensor([MODE_INDEX[case["final"][1]]] * 2)
    pf.jpeg_first = torch.tensor([case["final"][0] == "jpeg_first"] * 2)
    return params


class FixedDegradation(torch.nn.Module):
    """The module with fixed parameters, as the data module calls a degradation (``config``, ``forward``)."""

    def __init__(self, module: RealESRGANDegradation, params) -> None:
        super().__init__()
        self.module, self.params, self.config = module, params, module.config

    def forward(self, hr, generator=None, seeds=None):
        return self.module.apply(hr, self.params, generator)


@pytest.mark.parametrize("case", [0, 1])
def test_usm_then_degrade_equals_real_esrgan_feed_data(case):
    """Real-ESRGAN's ``feed_data`` on a stub model (its random draws scripted, noise off): the data module with
    ``usm_sharpen_gt`` sharpens the GT, degrades the sharpened GT and returns it as the target, and the LR equals
    Real-ESRGAN's to the 8-bit level (here: every byte)."""
    from make_fixtures import CASES

    from ctsr.data.datamodule import SRDataModule

    ref = fixture("feed_data")
    gt = torch.from_numpy(ref["gt"]).permute(0, 3, 1, 2).float() / 255
    module = RealESRGANDegradation(DegradationConfig(usm_sharpen_gt=True))
    params = feed_data_params(module, CASES[case])
    for name, kp in (("kernel1", params.first.kernel), ("kernel2", params.second.kernel), ("sinc", params.final.sinc)):
        torch.testing.assert_close(kp.kernels(), torch.from_numpy(ref[f"case{case}_{name}"]), atol=2e-7, rtol=0)
    dm = SRDataModule(degradation=FixedDegradation(module, params), num_workers=0)
    batch = dm.on_after_batch_transfer({"hr": gt.clone()}, 0)
    torch.testing.assert_close(batch["hr"], torch.from_numpy(ref["gt_usm"]), atol=2e-6, rtol=0)
    expected = torch.from_numpy(ref[f"case{case}_lq"]).float() / 255
    diff = (batch["lr"] - expected).abs()
    assert diff.max() <= 1 / 255 + 1e-6 and (diff > 0).float().mean() < 0.005, (diff.max() * 255, diff.mean() * 255)
    # each parity mode matters here: switching any one back moves the LR by whole levels on average
    for modes, hr in (({}, gt), ({"resize_sampling": "size"}, batch["hr"]), ({"jpeg": "kornia"}, batch["hr"])):
        other = RealESRGANDegradation(DegradationConfig(**modes)).apply(hr, params)
        assert (other - expected).abs().mean() > 0.5 / 255, modes


def test_first_resize_samples_as_interpolate_with_scale_factor():
    """Real-ESRGAN's first resize is ``F.interpolate(out, scale_factor=s, mode=mode)``: a grid with spacing 1/s, not
    the stretched grid of ``size=⌊H·s⌋``; the batched resize reproduces it per sample, on a ragged canvas."""
    img = photo(50, 46)
    scales = [0.37, 1.3, 0.83, 1.0, 0.151]
    for mode in range(3):
        sizes = ([math.floor(50 * s) for s in scales], [math.floor(46 * s) for s in scales])
        canvas = (max(sizes[0]), max(sizes[1]))
        x = img[None].expand(len(scales), -1, -1, -1)
        out = resize(x, ([50] * 5, [46] * 5), sizes, [mode] * 5, canvas, scales)
        stretched = resize(x, ([50] * 5, [46] * 5), sizes, [mode] * 5, canvas)
        for b, s in enumerate(scales):
            h, w = sizes[0][b], sizes[1][b]
            expected = F.interpolate(img[None], scale_factor=s, mode=RESIZE_MODES[mode])[0]
            assert expected.shape[-2:] == (h, w)
            torch.testing.assert_close(out[b, :, :h, :w], expected, atol=2e-6, rtol=0)
            if mode and s not in (1.0,):  # the linear modes sample elsewhere with size= (area pools by sizes)
                assert (stretched[b, :, :h, :w] - expected).abs().max() > 1 / 255


@pytest.mark.parametrize("which", ["colour", "gray"])
def test_poisson_noise_equals_basicsr_with_its_level_count(which):
    """BasicSR's ``add_poisson_noise_pt`` after ``torch.manual_seed(seed)``: with ``levels=None`` (count the image's
    levels) and a generator of the same seed, the same counts are drawn, so the output is the same; the second
    image is posterised to 23 levels, where a constant 256 levels gives a different noise."""
    ref = fixture("poisson")
    x, scale = torch.from_numpy(ref["input"]), torch.from_numpy(ref["scale"])
    gray = torch.tensor([which == "gray"] * 2)
    expected = torch.from_numpy(ref[which])
    out = add_poisson_noise(x, scale, gray, torch.Generator().manual_seed(int(ref["seed"])), levels=None)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    fixed = add_poisson_noise(x, scale, gray, torch.Generator().manual_seed(int(ref["seed"])), levels=256)
    assert (fixed[1] - expected[1]).abs().mean() > 5 / 255


def test_level_count_is_per_sample_and_ignores_the_canvas():
    photo_img = photo(24, 32)
    poster = torch.round(photo_img * 22) / 22  # 23 levels per channel
    two = torch.stack([(photo_img * 255).round() / 255, poster])
    for b in range(2):
        v = len(torch.unique(two[b]))
        assert count_levels(two[b : b + 1]).item() == 2 ** math.ceil(math.log2(v))
    assert count_levels(two).tolist() == [256.0, 32.0]
    canvas = torch.zeros(2, 3, 40, 40)
    canvas[:, :, :24, :32] = two
    canvas[1, :, 30:, 30:] = torch.rand(3, 10, 10)  # beyond sample 1: must not count
    assert count_levels(canvas, ([24, 24], [32, 32])).tolist() == [256.0, 32.0]
    assert count_levels(canvas).tolist()[1] == 256.0


@pytest.mark.parametrize("index", [0, 1, 2])
def test_diffjpeg_equals_basicsr(index):
    """BasicSR's ``DiffJPEG(differentiable=False)`` at q = 30, 60, 95 on 24×40 photos (padded to 32×48), and at
    q = 47.5 on a 21×27 crop: equal to float rounding; kornia's codec is several levels away."""
    ref = fixture("diffjpeg")
    img = torch.from_numpy(ref["input"]).permute(0, 3, 1, 2).float() / 255
    q = torch.from_numpy(ref["quality"])
    expected = torch.from_numpy(ref["output"])[index]
    out = diff_jpeg(img, q)[index]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    # through the batched step on a ragged canvas too
    canvas = torch.rand(2, 3, 40, 50)
    canvas[1, :, :24, :40] = img[index]
    coded = jpeg(canvas, ([40, 24], [50, 40]), torch.tensor([50.0, float(q[index])]))
    torch.testing.assert_close(coded[1, :, :24, :40], expected, atol=1e-5, rtol=0)
    other = kornia.enhance.jpeg_codec_differentiable(img[index : index + 1], q[index : index + 1])[0]
    assert (other - expected).abs().mean() > 1 / 255
    odd = torch.from_numpy(ref["odd_input"]).permute(2, 0, 1).float()[None] / 255
    torch.testing.assert_close(
        diff_jpeg(odd, torch.from_numpy(ref["odd_quality"]).reshape(1)), torch.from_numpy(ref["odd_output"]),
        atol=1e-5, rtol=0,
    )


def test_parity_defaults_and_invalid_modes():
    cfg = DegradationConfig()
    assert (cfg.resize_sampling, cfg.jpeg, cfg.poisson_levels) == ("scale_factor", "diffjpeg", "count")
    for name in ("resize_sampling", "jpeg", "poisson_levels"):
        with pytest.raises(ConfigError, match=name):
            DegradationConfig(**{name: "nope"})


def test_diffjpeg_ignores_a_tf32_matmul_setting():
    img = photo(24, 40)[None]
    q = torch.tensor([30.0])
    before = torch.get_float32_matmul_precision()
    reference = diff_jpeg(img, q)
    try:
        torch.set_float32_matmul_precision("medium")
        assert torch.equal(diff_jpeg(img, q), reference)
        assert torch.get_float32_matmul_precision() == "medium"  # restored
    finally:
        torch.set_float32_matmul_precision(before)
