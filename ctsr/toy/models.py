"""The toy world's networks and teachers, in the very protocols the project's losses and models expect.

Points are 1×1-pixel images with d channels, (B, d, 1, 1): the identity VAE maps an image x ∈ [0, 1] to the latent
z = 2x − 1 and back, so ``reconstruction_terms`` (L2 taken on 2x − 1) is exactly the MSE in latent units, and
``AnchoredTeacher`` (scale 1) and ``ControllableSR`` run unchanged.

- :class:`ToyUNet` — the "UNet": a time-conditioned MLP ε(z_τ, τ). It is EDM-preconditioned (the MLP predicts a
  clean estimate D, and ε = (z − √ᾱ·D)/√(1−ᾱ)), so the one-step output x0_from_eps(z_L, ε, 999) = D is not the
  14.6× amplified residue of an ε regression. It is still an ε-predictor: every caller sees ε.
- :class:`ToyGenerator` — OSEDiff's generator with the ToyUNet: z_L = A⁺y (+ latent noise in the null space of A),
  ε = U(z_L, 999), ẑ0 = x0_from_eps(z_L, ε, 999); the same network answers ε_S(z, τ) at other τ. All MLP weights
  train (no LoRA). The student protocol of ``DualTeacherLoss``: forward, encode_base, eps, context.
- :class:`FrozenEpsTeacher` (T_r = a frozen copy of the pre-trained student, as DESIGN §5), :class:`ExactEpsTeacher`
  (the exact mixture ε), :class:`PosteriorMeanSR` (the "SR model" E[z|y] that ``AnchoredTeacher`` wraps as T_f).
- :class:`ToyControllableSR` — the project's ``ControllableSR`` (its inference rules for every objective, path and
  τ rule) with T_S a frozen copy instead of a UNet with its adapter toggled off.
- "Beyond the chord": :func:`conditional_generator` (a generator that also takes a control t, for
  loss-conditional training) and :func:`add_scaled_delta` / :func:`set_delta_scale` (the LoRA-scale knob: the
  stage-1 weights plus t times a low-rank delta).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from ctsr.diffusion.control_rule import ControlRule
from ctsr.diffusion.schedule import GENERATOR_TIMESTEP, NoiseSchedule
from ctsr.models.control import ControllableSR
from ctsr.models.teachers import Teacher
from ctsr.toy.world import MixtureWorld, to_image, to_points


def _tau_vector(tau: Tensor | float, batch: int, device) -> Tensor:
    return torch.as_tensor(tau, dtype=torch.float32, device=device).reshape(-1).expand(batch)


class ToyUNet(nn.Module):
    """ε-prediction MLP on R^d: (z_τ (B, d, …), τ (B,) or scalar, int or float) → ε of z's shape.

    Args:
        dim: d.
        width, depth: hidden width and number of hidden layers.
        emb_dim: size of the sinusoidal τ embedding (the UNet's timestep embedding).
        sigma_data: σ_data of the EDM preconditioning (≈ the data's per-coordinate std).
    """

    def __init__(self, dim: int, width: int = 128, depth: int = 3, emb_dim: int = 32, sigma_data: float = 0.5,
                 control_dim: int = 0):
        super().__init__()
        self.dim, self.emb_dim, self.sigma_data, self.control_dim = dim, emb_dim, sigma_data, control_dim
        self.control_t: Tensor | None = None     # (B,) or scalar: the control value of a conditional network
        layers: list[nn.Module] = []
        n_in = dim + emb_dim + control_dim
        for _ in range(depth):
            layers += [nn.Linear(n_in, width), nn.SiLU()]
            n_in = width
        layers.append(nn.Linear(n_in, dim))
        self.net = nn.Sequential(*layers)
        self.schedule = NoiseSchedule()
        half = emb_dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half) / half), persistent=False)

    def embed(self, tau: Tensor) -> Tensor:
        arg = tau[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)

    def embed_control(self, batch: int, device) -> Tensor:
        """The control t's features (t, sin/cos of π·t·k, k = 1 … (control_dim−1)/2), (B, control_dim)."""
        if self.control_t is None:
            raise ValueError("a conditional ToyUNet needs its control t (set_control)")
        t = _tau_vector(self.control_t, batch, device)[:, None]
        k = torch.arange(1, (self.control_dim - 1) // 2 + 1, device=device, dtype=t.dtype)[None]
        feats = [t, torch.sin(math.pi * t * k), torch.cos(math.pi * t * k)]
        return torch.cat(feats, dim=1)[:, : self.control_dim]

    def forward(self, z_t: Tensor, tau: Tensor | float) -> Tensor:
        shape, b = z_t.shape, z_t.shape[0]
        z = z_t.reshape(b, -1)
        tau = _tau_vector(tau, b, z.device)
        a = self.schedule.alpha_bar(tau, ndim=2)
        sigma2 = (1 - a) / a                              # z_τ/√ᾱ = z0 + σ·n (the EDM view of the same process)
        x = z / a.sqrt()
        sd2 = self.sigma_data**2
        c_in, c_skip = (sigma2 + sd2).rsqrt(), sd2 / (sigma2 + sd2)
        c_out = sigma2.sqrt() * self.sigma_data * (sigma2 + sd2).rsqrt()
        inputs = [c_in * x, self.embed(tau)]
        if self.control_dim:
            inputs.append(self.embed_control(b, z.device))
        d = c_skip * x + c_out * self.net(torch.cat(inputs, dim=1))
        return self.schedule.eps_from_x0(z, d, tau).reshape(shape)


class ToyGenerator(nn.Module):
    """The one-step generator G of the toy world (the student of both stages).

    x_LR (B, d, 1, 1) in [0, 1] → z_L = 2x_LR − 1 (= A⁺y) + V_N·n → ε = U(z_L, 999) → ẑ0 = x0_from_eps(z_L, ε, 999).

    OSEDiff's generator is deterministic (the encoder's mode at evaluation). A deterministic map of y cannot sample
    a bimodal p(z | y): trained towards posterior samples it learns their mean, the fidelity teacher. The toy's
    generator therefore receives a latent noise n ~ N(0, I_{d−m}) in the null space of A (the part y does not
    determine), the analogue of the image detail an SD generator invents; ``stochastic=False`` drops it.

    Args:
        world: supplies d and the null-space basis V_N.
        width, depth: of the ToyUNet.
        seed: initialisation seed and seed of the latent noise drawn when none is passed.
        stochastic: inject the null-space latent noise.
    """

    def __init__(self, world: MixtureWorld, width: int = 128, depth: int = 3, seed: int = 0, stochastic: bool = True):
        super().__init__()
        with torch.random.fork_rng(devices=[]):   # seeded initialisation without touching the global RNG
            torch.manual_seed(seed)
            self.unet = ToyUNet(world.dim, width, depth)
        self.schedule = NoiseSchedule()
        self.stochastic = stochastic
        self.register_buffer("null_basis", world.V_N.float(), persistent=False)   # (d, d−m)
        self.register_buffer("context", torch.zeros(1, 1), persistent=False)     # no text prompt in the toy
        self.rng = torch.Generator().manual_seed(seed + 1)

    @property
    def noise_dim(self) -> int:
        return self.null_basis.shape[1]

    def draw_noise(self, batch: int) -> Tensor:
        return torch.randn(batch, self.noise_dim, generator=self.rng).to(self.null_basis.device)

    # -- the identity VAE --------------------------------------------------------------------------------------
    def encode_base(self, x: Tensor) -> Tensor:
        """x (B, d, 1, 1) in [-1, 1] → z: the identity."""
        return x

    def decode(self, z: Tensor) -> Tensor:
        """z → x in [-1, 1]: the identity (not clamped: the modes lie well inside)."""
        return z

    # -- the network -------------------------------------------------------------------------------------------
    def eps(self, z_t: Tensor, tau: Tensor | float, context: Tensor | None = None) -> Tensor:
        """ε_S(z_τ, τ): the same network as the generator, at timestep τ."""
        return self.unet(z_t, tau)

    def lr_latent(self, x_lr: Tensor, noise: Tensor | None = None) -> Tensor:
        """z_L = 2x_LR − 1 + V_N·n, (B, d, 1, 1); ``noise`` (B, d−m), drawn from ``rng`` when None."""
        z_l = x_lr * 2 - 1
        if not self.stochastic:
            return z_l
        if noise is None:
            noise = self.draw_noise(x_lr.shape[0])
        return z_l + (noise.to(z_l.dtype) @ self.null_basis.T).reshape(z_l.shape)

    def latent(self, x_lr: Tensor, noise: Tensor | None = None) -> Tensor:
        z_l = self.lr_latent(x_lr, noise)
        return self.schedule.x0_from_eps(z_l, self.eps(z_l, GENERATOR_TIMESTEP), GENERATOR_TIMESTEP)

    def forward(self, x_lr: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x_LR (B, d, 1, 1) in [0, 1] → (x̂ (B, d, 1, 1) in ≈[0, 1], ẑ0 (B, d, 1, 1))."""
        z0_hat = self.latent(x_lr, noise)
        return (z0_hat + 1) / 2, z0_hat


class FrozenEpsTeacher(Teacher):
    """A teacher answering with a frozen copy of a ToyUNet (T_r = the pre-trained student, DESIGN §5)."""

    def __init__(self, unet: ToyUNet) -> None:
        super().__init__()
        self.unet = copy.deepcopy(unet).requires_grad_(False).eval()

    def eps(self, z_t: Tensor, tau: Tensor, context: Tensor | None = None, cond=None) -> Tensor:
        return self.unet(z_t, tau)


class ExactEpsTeacher(Teacher):
    """The exact ε of the noised mixture as a teacher (gradients flow through its input z_τ)."""

    def __init__(self, world: MixtureWorld) -> None:
        super().__init__()
        self.world = world
        m = world.means.float()
        self.register_buffer("means", m, persistent=False)
        self.register_buffer("log_weights", world.weights.float().log(), persistent=False)
        self.std = world.std

    def eps(self, z_t: Tensor, tau: Tensor, context: Tensor | None = None, cond=None) -> Tensor:
        # the same formula as MixtureWorld.eps, in autograd-friendly float32 (the world's is float64, no grad)
        b = z_t.shape[0]
        z = z_t.reshape(b, -1)
        a = self.schedule.alpha_bar(_tau_vector(tau, b, z.device), ndim=2)
        v = a * self.std**2 + 1 - a
        diff = z[:, None, :] - a.sqrt()[:, None] * self.means[None]
        r = torch.softmax(self.log_weights[None] - 0.5 * (diff**2).sum(-1) / v, dim=1)
        return ((1 - a).sqrt() * (r[..., None] * diff).sum(1) / v).reshape(z_t.shape)


class PosteriorMeanSR(nn.Module):
    """The fidelity "SR model": x_LR = (A⁺y + 1)/2 (B, d, 1, 1) → (E[z|y] + 1)/2 — wrapped by AnchoredTeacher."""

    def __init__(self, world: MixtureWorld) -> None:
        super().__init__()
        self.world = world

    def forward(self, x_lr: Tensor) -> Tensor:
        y = self.world.observe(to_points(x_lr))
        return to_image(self.world.posterior_mean(y)).to(x_lr)


class ToyControllableSR(ControllableSR):
    """The project's controllable model over toy networks: ``generator`` is the stage-2 student S (its ``eps`` is
    the velocity ε_S), ``teacher`` the frozen stage-1 generator T_S (z0 and ε_TS). Inference (``controlled_latent``,
    ``forward``) is ControllableSR's own code."""

    def __init__(self, student: ToyGenerator, teacher: ToyGenerator, rule: ControlRule | None = None) -> None:
        super().__init__(student, rule)
        self.teacher = teacher.requires_grad_(False).eval()

    def teacher_eps(self, z: Tensor, tau: Tensor) -> Tensor:
        """ε_TS(z, τ): the frozen stage-1 network, no gradient."""
        with torch.no_grad():
            return self.teacher.eps(z, tau)

    @torch.no_grad()
    def z0(self, x_lr: Tensor, noise: Tensor | None = None) -> Tensor:
        """G_TS(x_LR): the stage-1 output latent (B, d, 1, 1); its latent noise from T_S's ``rng`` unless given."""
        return self.teacher.latent(x_lr, noise)


# -- beyond the chord --------------------------------------------------------------------------------------------
def conditional_generator(init: ToyGenerator, control_dim: int = 5) -> ToyGenerator:
    """A copy of ``init`` whose network also takes a control t (``set_control``): the first layer gains
    ``control_dim`` inputs with zero weights, so at initialisation it is ``init`` for every t."""
    gen = copy.deepcopy(init)
    old = gen.unet
    new = ToyUNet(old.dim, old.net[0].out_features, (len(old.net) - 1) // 2, old.emb_dim, old.sigma_data, control_dim)
    with torch.no_grad():
        for (name, p_new), p_old in zip(new.net.named_parameters(), old.net.parameters()):
            if name == "0.weight":
                p_new.zero_()
                p_new[:, : p_old.shape[1]].copy_(p_old)
            else:
                p_new.copy_(p_old)
    gen.unet = new.to(old.freqs.device)
    return gen


def set_control(generator: ToyGenerator, t: Tensor | float | None) -> None:
    """The control value a conditional generator sees in every call until the next ``set_control``."""
    generator.unet.control_t = None if t is None else torch.as_tensor(t, dtype=torch.float32)


class ScaledDeltaLinear(nn.Module):
    """A frozen linear layer plus ``scale`` times a trainable low-rank delta B·A (and a bias delta): the LoRA-scale
    knob of PiSA-SR's kind. B starts at zero, so the layer is the frozen one at any scale until trained."""

    def __init__(self, base: nn.Linear, rank: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(rank, base.in_features, generator=generator) / rank)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.bias = nn.Parameter(torch.zeros(base.out_features))
        self.scale = 1.0

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * (x @ self.A.T @ self.B.T + self.bias)


def add_scaled_delta(generator: ToyGenerator, rank: int = 4, seed: int = 0) -> ToyGenerator:
    """A copy of ``generator`` (frozen) with a ``ScaledDeltaLinear`` on every linear layer of its network; only the
    deltas train. ``set_delta_scale(g, t)`` then gives the weights W + t·ΔW."""
    gen = copy.deepcopy(generator).requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    for i, layer in enumerate(gen.unet.net):
        if isinstance(layer, nn.Linear):
            gen.unet.net[i] = ScaledDeltaLinear(layer, rank, g)
    return gen


def set_delta_scale(generator: ToyGenerator, t: float) -> None:
    for layer in generator.unet.net:
        if isinstance(layer, ScaledDeltaLinear):
            layer.scale = float(t)


def delta_parameters(generator: ToyGenerator) -> list[nn.Parameter]:
    return [p for layer in generator.unet.net if isinstance(layer, ScaledDeltaLinear)
            for p in (layer.A, layer.B, layer.bias)]
