"""Stage-2 objective: controllability distillation (paper eq. 5–9, Algorithm 2; DESIGN §6).

A control path z(t) = z0 + P(t), P(0) = 0, defines the target; the student's ε_S learns its velocity:
    L_ctrl = ‖P(t) − P(t') + Δ·ε_S(z_t, τ(t), c)‖²,   t < t' ~ U(0,1) per sample, Δ = t' − t     (eq. 8)
so that ε_S(z_t, τ(t)) → (P(t') − P(t))/Δ.

Paths (``path``):
  fidelity  P(t) = t·(z_f − z0)                         straight to the fidelity teacher's latent (default)
  noise     P(t) = t·ε_TS(z_in, τ(t))                   eq. 5–6 literally
  denoise   P(t) = x̂0_TS(z_in, τ(t)) − z0               the teacher denoises its own output as if noisy at τ(t)
``teacher_input``: ``z0`` evaluates the teacher at z_in = z0 (eq. 8); ``path`` at z_in = z_t, the point reached by
the z0 rule (Algorithm 2, line 6). τ(t) = t·tau_max.

These functions take callables, so the LightningModule and the toy lab (``ctsr.toy``) run the same code.
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ctsr.diffusion.schedule import NoiseSchedule, tau_of_t

Path = Literal["fidelity", "noise", "denoise"]
TeacherInput = Literal["z0", "path"]
EpsFn = Callable[[Tensor, Tensor], Tensor]  # (z, τ (B,)) → ε


def _bcast(t: Tensor, z: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (z.ndim - 1))).to(z.dtype)


def sample_t_pairs(
    batch: int, generator: torch.Generator | None = None, device=None, min_gap: float = 1e-3
) -> tuple[Tensor, Tensor]:
    """t < t' drawn uniformly in (0,1) per sample (the order statistics of two uniforms), Δ ≥ ``min_gap``."""
    u = torch.rand(batch, 2, generator=generator, device=device)
    t, t2 = u.min(dim=1).values, u.max(dim=1).values
    t2 = torch.maximum(t2, t + min_gap).clamp(max=1.0)
    t = torch.minimum(t, t2 - min_gap)
    return t, t2


def path_offset(
    path: Path,
    z0: Tensor,
    t: Tensor,
    z_in: Tensor | None = None,
    teacher_eps: EpsFn | None = None,
    z_f: Tensor | None = None,
    tau_max: float = 999.0,
    schedule: NoiseSchedule | None = None,
) -> Tensor:
    """P(t) for (B,) t; ``z_in`` is where the teacher is evaluated (default z0)."""
    tb = _bcast(t, z0)
    if path == "fidelity":
        if z_f is None:
            raise ValueError("the fidelity path needs z_f, the fidelity teacher's latent")
        return tb * (z_f - z0)
    z_in = z0 if z_in is None else z_in
    tau = tau_of_t(t, tau_max)
    eps = teacher_eps(z_in, tau)
    if path == "noise":
        return tb * eps
    if path == "denoise":
        return schedule.x0_from_eps(z_in, eps, tau) - z0
    raise ValueError(f"unknown control path {path!r}")


def control_targets(
    path: Path,
    z0: Tensor,
    t: Tensor,
    t2: Tensor,
    teacher_input: TeacherInput = "z0",
    **kw,
) -> tuple[Tensor, Tensor, Tensor]:
    """(P(t), P(t'), z_t): the two path offsets and the student's input, without gradients."""
    with torch.no_grad():
        p_t, p_t2 = path_offset(path, z0, t, **kw), path_offset(path, z0, t2, **kw)
        z_t = z0 + p_t
        if teacher_input == "path" and path != "fidelity":  # Algorithm 2: the teacher sees z_t, z_t'
            z_t2 = z0 + p_t2
            p_t, p_t2 = path_offset(path, z0, t, z_in=z_t, **kw), path_offset(path, z0, t2, z_in=z_t2, **kw)
    return p_t, p_t2, z_t


def control_loss(p_t: Tensor, p_t2: Tensor, eps_s: Tensor, delta: Tensor) -> Tensor:
    """eq. 8: ‖P(t) − P(t') + Δ·ε_S‖², mean over elements."""
    residual = p_t.float() - p_t2.float() + _bcast(delta, eps_s).float() * eps_s.float()
    return F.mse_loss(residual, torch.zeros_like(residual))
