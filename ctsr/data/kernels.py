"""Blur kernels of the Real-ESRGAN degradation model, generated in batch on the device.

Each function here is the batched counterpart of one in BasicSR's ``basicsr/data/degradations.py`` (named in its
docstring) and keeps its formulas. Every parameter is a tensor of shape (B,), one value per sample, and every kernel
comes out at the fixed size ``max_size`` (21 by default): a sample's own ``kernel_size`` k (odd) is honoured by
zeroing the taps outside its centred k×k window before normalising, which is exactly BasicSR's k×k kernel
zero-padded to 21 (``np.pad`` in ``RealESRGANDataset``). One (B, 21, 21) tensor then blurs the whole batch in a
single ``kornia.filters.filter2d`` call.

Coordinates follow BasicSR's ``mesh_grid``: ``grid[..., 0]`` is the column offset x and ``grid[..., 1]`` the row
offset y from the centre tap (``kernel[b, 10 + y, 10 + x]``), and Σ = U(θ)·diag(σ_x², σ_y²)·U(θ)ᵀ acts on (x, y).
All kernels are symmetric under a half turn, so correlation (``filter2d``) and convolution agree.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

MAX_KERNEL_SIZE = 21

# Index of each kernel type in ``KernelParams.kind``; the first six are Real-ESRGAN's ``kernel_list`` in its order.
KERNEL_TYPES: tuple[str, ...] = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
    "sinc",
    "identity",
)
ISO, ANISO, GENERALIZED_ISO, GENERALIZED_ANISO, PLATEAU_ISO, PLATEAU_ANISO, SINC, IDENTITY = range(len(KERNEL_TYPES))
ISOTROPIC_TYPES = (ISO, GENERALIZED_ISO, PLATEAU_ISO)
GENERALIZED_TYPES = (GENERALIZED_ISO, GENERALIZED_ANISO)
PLATEAU_TYPES = (PLATEAU_ISO, PLATEAU_ANISO)


def host_tensor(values, device: torch.device | str, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.tensor(values, device=device)`` without waiting for the device: PyTorch follows a blocking copy from
    the host with a synchronisation of the stream, so each small list of sizes or indices would stall a GPU pipeline
    (the queued kernels drain before the next launch). Copied from pageable memory the data is staged at once, so
    the source can go."""
    t = torch.tensor(values, dtype=dtype)
    return t if torch.device(device).type == "cpu" else t.to(device, non_blocking=True)


def mesh_grid(
    size: int = MAX_KERNEL_SIZE, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Tap offsets from the centre, (size, size, 2) with ``[..., 0]`` = x (column) and ``[..., 1]`` = y (row)."""
    ax = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return torch.stack((xx, yy), dim=-1)


def support_mask(kernel_size: Tensor, max_size: int = MAX_KERNEL_SIZE) -> Tensor:
    """(B, max_size, max_size) bool: the centred ``kernel_size``×``kernel_size`` window of each sample."""
    half = (kernel_size.long() // 2).view(-1, 1, 1)
    grid = mesh_grid(max_size, kernel_size.device, torch.float32).abs()
    return (grid[..., 0] <= half) & (grid[..., 1] <= half)


def _rotation(theta: Tensor) -> Tensor:
    cos, sin = torch.cos(theta), torch.sin(theta)
    return torch.stack((torch.stack((cos, -sin), -1), torch.stack((sin, cos), -1)), -2)


def sigma_matrix2(sigma_x: Tensor, sigma_y: Tensor, theta: Tensor) -> Tensor:
    """Σ = U·diag(σ_x², σ_y²)·Uᵀ with U the rotation by θ (BasicSR ``sigma_matrix2``), (B, 2, 2)."""
    u = _rotation(theta)
    return u @ torch.diag_embed(torch.stack((sigma_x**2, sigma_y**2), -1)) @ u.transpose(-1, -2)


def mahalanobis2(sigma_x: Tensor, sigma_y: Tensor, theta: Tensor, max_size: int = MAX_KERNEL_SIZE) -> Tensor:
    """The quadratic form Q = pᵀ Σ⁻¹ p at every tap p, (B, max_size, max_size) (BasicSR ``pdf2`` before the exp).

    Σ⁻¹ = U·diag(σ_x⁻², σ_y⁻²)·Uᵀ in closed form: no ``linalg.inv`` and its host-side error check.
    """
    u = _rotation(theta)
    inverse_sigma = u @ torch.diag_embed(torch.stack((sigma_x**-2, sigma_y**-2), -1)) @ u.transpose(-1, -2)
    grid = mesh_grid(max_size, sigma_x.device, sigma_x.dtype)
    x, y = grid[..., 0], grid[..., 1]
    a, b, c = (inverse_sigma[:, i, j].view(-1, 1, 1) for i, j in ((0, 0), (0, 1), (1, 1)))
    return a * x * x + 2 * b * x * y + c * y * y


def _normalise(kernel: Tensor, kernel_size: Tensor) -> Tensor:
    kernel = kernel * support_mask(kernel_size, kernel.shape[-1])
    return kernel / kernel.sum(dim=(-2, -1), keepdim=True)


def bivariate_gaussian(
    kernel_size: Tensor, sigma_x: Tensor, sigma_y: Tensor, theta: Tensor, max_size: int = MAX_KERNEL_SIZE
) -> Tensor:
    """exp(−Q/2), normalised (BasicSR ``bivariate_Gaussian``; isotropic when σ_x = σ_y), (B, max_size, max_size)."""
    return _normalise(torch.exp(-0.5 * mahalanobis2(sigma_x, sigma_y, theta, max_size)), kernel_size)


def bivariate_generalized_gaussian(
    kernel_size: Tensor, sigma_x: Tensor, sigma_y: Tensor, theta: Tensor, beta: Tensor, max_size: int = MAX_KERNEL_SIZE
) -> Tensor:
    """exp(−Q^β/2), normalised (BasicSR ``bivariate_generalized_Gaussian``; β = 1 is the Gaussian)."""
    q = mahalanobis2(sigma_x, sigma_y, theta, max_size)
    return _normalise(torch.exp(-0.5 * q.pow(beta.view(-1, 1, 1))), kernel_size)


def bivariate_plateau(
    kernel_size: Tensor, sigma_x: Tensor, sigma_y: Tensor, theta: Tensor, beta: Tensor, max_size: int = MAX_KERNEL_SIZE
) -> Tensor:
    """1 / (Q^β + 1), normalised (BasicSR ``bivariate_plateau``)."""
    q = mahalanobis2(sigma_x, sigma_y, theta, max_size)
    return _normalise(1.0 / (q.pow(beta.view(-1, 1, 1)) + 1.0), kernel_size)


def _circular_lowpass(omega_c: Tensor, max_size: int) -> Tensor:
    grid = mesh_grid(max_size, omega_c.device, omega_c.dtype)
    r = grid.norm(dim=-1)
    omega = omega_c.view(-1, 1, 1)
    r_safe = torch.where(r > 0, r, torch.ones_like(r))  # keeps the unused branch finite at the centre
    return torch.where(
        r > 0, omega * torch.special.bessel_j1(omega * r_safe) / (2 * math.pi * r_safe), omega**2 / (4 * math.pi)
    )


def circular_lowpass_kernel(kernel_size: Tensor, omega_c: Tensor, max_size: int = MAX_KERNEL_SIZE) -> Tensor:
    """The 2-D sinc (ideal circular low-pass, cutoff ω_c rad/px) of BasicSR ``circular_lowpass_kernel``.

    k(r) = ω_c·J1(ω_c·r) / (2π·r), with its limit ω_c²/(4π) at r = 0, cut to the k×k window and normalised.
    """
    return _normalise(_circular_lowpass(omega_c, max_size), kernel_size)


def pulse_kernel(
    batch: int,
    max_size: int = MAX_KERNEL_SIZE,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The identity kernel (one tap at the centre), (B, max_size, max_size)."""
    kernel = torch.zeros(batch, max_size, max_size, device=device, dtype=dtype)
    kernel[:, max_size // 2, max_size // 2] = 1
    return kernel


def mixed_kernels(
    kind: Tensor,
    kernel_size: Tensor,
    sigma_x: Tensor,
    sigma_y: Tensor,
    theta: Tensor,
    beta: Tensor,
    omega_c: Tensor,
    max_size: int = MAX_KERNEL_SIZE,
) -> Tensor:
    """One kernel per sample, of the type ``KERNEL_TYPES[kind[b]]``, (B, max_size, max_size), each summing to 1.

    The batched ``random_mixed_kernels`` with the parameters already drawn. Isotropic types ignore σ_y and θ
    (they use σ_x, θ = 0); β is used by the generalized and plateau types only; ω_c by ``sinc`` only.
    """
    kind = kind.long()
    # the sinc and identity rows carry no σ; give them a harmless one so every branch stays finite
    no_sigma = (kind == SINC) | (kind == IDENTITY)
    sigma_x = torch.where(no_sigma, torch.ones_like(sigma_x), sigma_x)
    sigma_y = torch.where(no_sigma, torch.ones_like(sigma_y), sigma_y)
    iso = torch.isin(kind, host_tensor(ISOTROPIC_TYPES, kind.device))
    sigma_y = torch.where(iso, sigma_x, sigma_y)
    theta = torch.where(iso, torch.zeros_like(theta), theta)
    shaped = torch.isin(kind, host_tensor(GENERALIZED_TYPES + PLATEAU_TYPES, kind.device))
    beta = torch.where(shaped, beta, torch.ones_like(beta)).view(-1, 1, 1)

    # Q^β with β = 1 for the plain Gaussians: exp(−Q^β/2) covers Gaussian and generalized Gaussian alike.
    q_beta = mahalanobis2(sigma_x, sigma_y, theta, max_size).pow(beta)
    plateau = torch.isin(kind, host_tensor(PLATEAU_TYPES, kind.device)).view(-1, 1, 1)
    kernel = torch.where(plateau, 1.0 / (q_beta + 1.0), torch.exp(-0.5 * q_beta))
    kernel = torch.where((kind == SINC).view(-1, 1, 1), _circular_lowpass(omega_c, max_size), kernel)
    kernel = _normalise(kernel, kernel_size)
    pulse = pulse_kernel(kind.shape[0], max_size, kind.device, kernel.dtype)
    return torch.where((kind == IDENTITY).view(-1, 1, 1), pulse, kernel)
