"""The toy world: a Gaussian mixture in R^d, a many-to-one degradation, and every exact answer about it.

Points live in the latent space directly (the "VAE" is the identity): z ∈ R^d, roughly in [-1, 1]. Where the
project's code expects images in [0, 1] (the generator's input, reconstruction_terms, AnchoredTeacher) a point is
the 1×1-pixel image with d channels x = (z + 1)/2, shape (B, d, 1, 1); see :func:`to_image` / :func:`to_points`.

    data          z ~ p(z) = Σ_k π_k N(μ_k, s²·I)                       (K narrow, well-separated modes)
    degradation   y = A·z + σ_y·e,  A (m, d), m < d                    (A averages coordinate pairs)
    LR input      z_L = A⁺·y                                            (what the generator sees)

Six of the eight modes come in pairs related by swapping the two coordinates of every pair, which leaves A·μ
unchanged: such a pair is ambiguous under A, p(z | y) is bimodal and E[z | y] lies between two modes, off the data.
The other two modes are identified by y alone (there E[z | y] sits on the data).

Exact quantities (closed form, float64 inside):
  - ε of the noised mixture at any τ of the SD 2.1-base schedule (the realness teacher's "perfect UNet");
  - the posterior p(z | y): weights, mean E[z | y] (the fidelity teacher's output), and a posterior sampler that
    is a deterministic, smooth map of a noise vector (a probability-flow ODE in the null space of A), so a one-step
    generator fed the same noise can imitate it sample by sample.
Metrics: per-coordinate MSE, energy distance to the data, mean log-density under the mixture.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ctsr.diffusion.schedule import NoiseSchedule

_SCHEDULE = NoiseSchedule()


def to_image(z: Tensor) -> Tensor:
    """Points (B, d) in latent units → images (B, d, 1, 1) in [0, 1] (the identity VAE's decoder)."""
    return ((z + 1) / 2).reshape(*z.shape, 1, 1)


def to_points(x: Tensor) -> Tensor:
    """Images (B, d, 1, 1) in [0, 1] → points (B, d) in latent units."""
    return (x * 2 - 1).reshape(x.shape[0], -1)


def alpha_bar(tau: Tensor | float) -> Tensor:
    """ᾱ_τ of the project's schedule as float64, shaped (B, 1)."""
    return _SCHEDULE.alpha_bar(tau, ndim=2).double()


def _pair_swap(mu: Tensor) -> Tensor:
    """Swap the two coordinates of every pair: A·swap(μ) = A·μ for the pair-mean A."""
    d = mu.shape[-1]
    idx = torch.arange(d).reshape(-1, 2).flip(1).reshape(-1)
    return mu[..., idx]


@dataclass
class MixtureWorld:
    """The data distribution, the degradation and their exact posterior.

    Attributes:
        means: (K, d) mode centres μ_k.
        weights: (K,) mixing weights π_k (sum 1).
        std: per-coordinate std s of every mode.
        A: (m, d) degradation matrix, full row rank.
        noise_std: σ_y, std of the observation noise.
    """

    means: Tensor
    weights: Tensor
    std: float
    A: Tensor
    noise_std: float

    def __post_init__(self) -> None:
        self.means = self.means.double()
        self.weights = (self.weights / self.weights.sum()).double()
        self.A = self.A.double()
        m, d = self.A.shape
        assert m < d, "A must be many-to-one (m < d)"
        u, s, vh = torch.linalg.svd(self.A, full_matrices=True)
        self.U, self.S = u, s                       # A = U·diag(S)·V_Rᵀ
        self.V_R, self.V_N = vh[:m].T, vh[m:].T     # (d, m) range basis, (d, d-m) null-space basis
        self.A_pinv = torch.linalg.pinv(self.A)     # (d, m)
        self.range_means = self.means @ self.V_R    # (K, m)  r_k = V_Rᵀ μ_k
        self.null_means = self.means @ self.V_N     # (K, d-m) c_k = V_Nᵀ μ_k
        s2, sy2 = self.std**2, self.noise_std**2
        self.post_range_var = 1.0 / (1.0 / s2 + self.S**2 / sy2)   # (m,) posterior var of r per mode

    # -- construction --------------------------------------------------------------------------------------
    @classmethod
    def make(cls, dim: int = 2, seed: int = 0, std: float = 0.06, noise_std: float = 0.02) -> MixtureWorld:
        """Eight modes: three ambiguous pairs (μ, swap(μ): same A·μ) and two modes A identifies alone;
        A = the mean of each coordinate pair (m = d/2).

        d = 2 uses hand-placed modes (a readable picture); larger d draws the five base points in [-0.6, 0.6]^d."""
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even number ≥ 2, got {dim}")
        if dim == 2:
            base = torch.tensor([[-0.6, 0.6], [-0.75, 0.15], [0.75, -0.15], [0.65, 0.65], [-0.65, -0.65]],
                                dtype=torch.float64)
        else:
            g = torch.Generator().manual_seed(seed)
            base = (torch.rand(5, dim, generator=g, dtype=torch.float64) * 2 - 1) * 0.6
        means = torch.cat([base[:3], _pair_swap(base[:3]), base[3:]])    # μ_{k+3} = swap(μ_k), k < 3
        weights = torch.tensor([0.16, 0.14, 0.12, 0.10, 0.09, 0.10, 0.15, 0.14], dtype=torch.float64)
        A = torch.zeros(dim // 2, dim, dtype=torch.float64)
        for i in range(dim // 2):
            A[i, 2 * i] = A[i, 2 * i + 1] = 0.5
        return cls(means, weights, std, A, noise_std)

    @property
    def dim(self) -> int:
        return self.A.shape[1]

    @property
    def null_dim(self) -> int:
        return self.V_N.shape[1]

    # -- sampling ------------------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n points of p(z), float32 (n, d)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.std * noise).float()

    def degrade(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """y = A·z + σ_y·e, (n, m)."""
        e = torch.randn(z.shape[0], self.A.shape[0], generator=generator, dtype=torch.float64)
        return (z.double() @ self.A.T + self.noise_std * e).float()

    def lift(self, y: Tensor) -> Tensor:
        """z_L = A⁺·y (n, d): the generator's input."""
        return (y.double() @ self.A_pinv.T).float()

    def observe(self, z_l: Tensor) -> Tensor:
        """y from z_L = A⁺y (A·A⁺ = I): how a model that only sees z_L recovers y."""
        return (z_l.double() @ self.A.T).float()

    # -- densities -----------------------------------------------------------------------------------------
    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) under the mixture, (n,)."""
        z = z.double()
        s2, d = self.std**2, self.dim
        sq = ((z[:, None, :] - self.means[None]) ** 2).sum(-1)
        log_n = -0.5 * sq / s2 - 0.5 * d * math.log(2 * math.pi * s2)
        return torch.logsumexp(self.weights.log()[None] + log_n, dim=1)

    def _noised_responsibilities(self, z: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        """r_k(z_τ) of the noised mixture p_τ = Σ π_k N(√ᾱ μ_k, v_τ I), v_τ = ᾱ s² + 1 − ᾱ; and v_τ (B, 1)."""
        v = a * self.std**2 + 1 - a
        diff = z[:, None, :] - a.sqrt()[:, None] * self.means[None]
        logits = self.weights.log()[None] - 0.5 * (diff**2).sum(-1) / v
        return torch.softmax(logits, dim=1), v

    def eps(self, z_t: Tensor, tau: Tensor | float) -> Tensor:
        """Exact ε(z_τ, τ) = −√(1−ᾱ)·∇log p_τ(z_τ) of the noised mixture, (B, d) float32 (τ scalar or (B,))."""
        z = z_t.double()
        a = alpha_bar(tau).expand(z.shape[0], 1)
        r, v = self._noised_responsibilities(z, a)
        diff = z[:, None, :] - a.sqrt()[:, None] * self.means[None]
        return ((1 - a).sqrt() * (r[..., None] * diff).sum(1) / v).float()

    def denoise(self, z_t: Tensor, tau: Tensor | float) -> Tensor:
        """E[z0 | z_τ] of the mixture (Gaussian posterior per mode, mixed by r_k), (B, d)."""
        z = z_t.double()
        a = alpha_bar(tau).expand(z.shape[0], 1)
        r, v = self._noised_responsibilities(z, a)
        per_mode = ((1 - a)[:, None] * self.means[None] + (a.sqrt() * self.std**2)[:, None] * z[:, None]) / v[:, None]
        return (r[..., None] * per_mode).sum(1).float()

    # -- the posterior p(z | y) ------------------------------------------------------------------------------
    def posterior_weights(self, y: Tensor) -> Tensor:
        """P(k | y) ∝ π_k N(y; A μ_k, s² A Aᵀ + σ_y² I), (n, K)."""
        yt = y.double() @ self.U                                     # Uᵀ y: coordinates where A A ᵀ is diagonal
        var = self.std**2 * self.S**2 + self.noise_std**2           # (m,)
        diff = yt[:, None, :] - self.range_means[None] * self.S      # ỹ − S r_k
        logits = self.weights.log()[None] - 0.5 * (diff**2 / var).sum(-1)
        return torch.softmax(logits, dim=1)

    def _posterior_range_means(self, y: Tensor) -> Tensor:
        """E[r | y, k] per mode, (n, K, m); r = V_Rᵀ z."""
        yt = y.double() @ self.U
        s2, sy2 = self.std**2, self.noise_std**2
        return self.post_range_var * (self.range_means[None] / s2 + (self.S * yt / sy2)[:, None, :])

    def posterior_mean(self, y: Tensor) -> Tensor:
        """E[z | y], (n, d) float32: the MMSE estimate (the fidelity teacher)."""
        w = self.posterior_weights(y)
        r = (w[..., None] * self._posterior_range_means(y)).sum(1)
        u = w @ self.null_means
        return (r @ self.V_R.T + u @ self.V_N.T).float()

    def posterior_variance(self, y: Tensor) -> Tensor:
        """E[‖z − E[z|y]‖² | y] per observation (n,): the MSE of E[z|y]; a posterior sample's MSE is twice it."""
        w = self.posterior_weights(y)
        mk = self._posterior_range_means(y) @ self.V_R.T + (self.null_means @ self.V_N.T)[None]   # (n, K, d)
        mean = (w[..., None] * mk).sum(1)
        within = self.post_range_var.sum() + self.null_dim * self.std**2
        return (w * ((mk - mean[:, None]) ** 2).sum(-1)).sum(1) + within

    def _null_denoise(self, u: Tensor, sigma: float, logw: Tensor) -> Tensor:
        """E[u0 | u0 + σ·n = u] for the null-space posterior Σ w_k N(c_k, s² I), (n, d−m)."""
        var = self.std**2 + sigma**2
        diff = u[:, None, :] - self.null_means[None]
        rho = torch.softmax(logw - 0.5 * (diff**2).sum(-1) / var, dim=1)
        per_mode = self.null_means[None] + (self.std**2 / var) * diff
        return (rho[..., None] * per_mode).sum(1)

    def posterior_sample(
        self, y: Tensor, noise_null: Tensor, noise_range: Tensor | None = None, steps: int = 40
    ) -> Tensor:
        """A posterior sample z ~ p(z | y) as a deterministic map of the noise, (n, d) float32.

        The null-space part u = V_Nᵀz (what A does not see) is the end of the probability-flow ODE of its
        posterior Σ_k P(k|y)·N(c_k, s² I), started from ``noise_null`` (n, d−m) (EDM Heun, ρ = 7, σ 40 → 0): a
        smooth, invertible transport, exact up to the ODE discretisation. The range part r = V_Rᵀz then follows the
        mode the null part landed in: its conditional mean, plus √var·``noise_range`` when given (None: the mean —
        what a generator that only sees ``noise_null`` can reproduce). Exact as long as the modes do not overlap.
        """
        logw = self.posterior_weights(y).log()
        sig_max, sig_min, rho = 40.0, 1e-3, 7.0
        i = torch.arange(steps, dtype=torch.float64)
        sigmas = (sig_max ** (1 / rho) + i / (steps - 1) * (sig_min ** (1 / rho) - sig_max ** (1 / rho))) ** rho
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)]).tolist()
        start_mean = logw.exp() @ self.null_means
        u = start_mean + math.sqrt(sig_max**2 + self.std**2) * noise_null.double()
        for s, s_next in itertools.pairwise(sigmas):
            d = (u - self._null_denoise(u, s, logw)) / s
            u_next = u + (s_next - s) * d
            if s_next > 0:   # Heun's correction
                d2 = (u_next - self._null_denoise(u_next, s_next, logw)) / s_next
                u_next = u + (s_next - s) * (d + d2) / 2
            u = u_next
        # the mode the null part landed in, and the range part given that mode
        q = torch.softmax(logw - 0.5 * ((u[:, None, :] - self.null_means[None]) ** 2).sum(-1) / self.std**2, dim=1)
        r = (q[..., None] * self._posterior_range_means(y)).sum(1)
        if noise_range is not None:
            r = r + self.post_range_var.sqrt() * noise_range.double()
        return (r @ self.V_R.T + u @ self.V_N.T).float()

    def posterior_sample_ancestral(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A posterior sample by ancestral sampling (k ~ P(k|y), then the Gaussian): the reference for tests."""
        w = self.posterior_weights(y)
        k = torch.multinomial(w, 1, generator=generator).squeeze(1)
        n = y.shape[0]
        r = self._posterior_range_means(y)[torch.arange(n), k]
        r = r + self.post_range_var.sqrt() * torch.randn(n, r.shape[1], generator=generator, dtype=torch.float64)
        u = self.null_means[k] + self.std * torch.randn(n, self.null_dim, generator=generator, dtype=torch.float64)
        return (r @ self.V_R.T + u @ self.V_N.T).float()


# -- metrics --------------------------------------------------------------------------------------------------
def mse(a: Tensor, b: Tensor) -> float:
    """Fidelity: per-coordinate mean squared error (the project's MSE convention, latent units)."""
    return float(((a.double() - b.double()) ** 2).mean())


def within_distance(a: Tensor) -> float:
    """E‖X−X'‖ over distinct pairs of a point set (n, d)."""
    a = a.double()
    n = a.shape[0]
    return float(torch.cdist(a, a).sum() / (n * (n - 1)))


def energy_distance(a: Tensor, b: Tensor, b_within: float | None = None) -> float:
    """Realness: energy distance 2E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖ between two point sets (unbiased within-set terms);
    0 iff the distributions are equal. ``b_within``: E‖Y−Y'‖ if already known."""
    a, b = a.double(), b.double()
    yy = within_distance(b) if b_within is None else b_within
    return float(2 * torch.cdist(a, b).mean() - within_distance(a) - yy)
