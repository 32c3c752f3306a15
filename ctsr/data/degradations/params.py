"""The per-sample random draws: every choice of the pipeline for every sample (``DegradationParams``: two orders
and the final step), drawn from one ``torch.Generator`` by ``sample_params`` in a fixed order, so a seed gives the
same parameters on the same device. Package overview: :mod:`ctsr.data.degradations`."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass

import torch
from torch import Tensor

from ctsr.data.degradations.config import DegradationConfig, OrderConfig
from ctsr.data.kernels import (
    IDENTITY,
    ISOTROPIC_TYPES,
    PLATEAU_TYPES,
    SINC,
    host_tensor,
    mixed_kernels,
)

RESIZE_MODES: tuple[str, ...] = ("area", "bilinear", "bicubic")
RESIZE_DIRECTIONS: tuple[str, ...] = ("up", "down", "keep")
UP, DOWN, KEEP = range(3)


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
