"""Stage-2 objectives: controllability distillation (paper eq. 5–9, Algorithm 2; DESIGN §6).

A control path z(t) = z0 + P(t), P(0) = 0, defines the target. Two objectives (``objective``) train the student
ε_S; each is trained exactly where :class:`~ctsr.models.control.ControllableSR` evaluates it. Objective, path, τ_max
and τ_c are the model's :class:`~ctsr.diffusion.control_rule.ControlRule` (``model.rule``):

``endpoint`` (default; chosen by the toy lab, ``results/toy/report.md``)
    fidelity path:  L = ‖ε_S(z0, τ_c, c) − (z_f − z0)‖²     inference z(t) = z0 + t·v, v = ε_S(z0, τ_c): ONE
                    velocity for every t (a sweep or a slider costs 2 UNet passes + one decode per t)
    curved paths:   L = ‖t·ε_S(z0, τ(t), c) − P(t)‖²,  t ~ U(0, 1]   inference z(t) = z0 + t·ε_S(z0, τ(t))
``eq8`` (the paper's, for reproduction)
    L_ctrl = ‖P(t) − P(t') + Δ·ε_S(z_t, τ(t), c)‖²,   t < t' per sample, Δ = t' − t           (eq. 8)
    so that ε_S(z_t, τ(t)) → (P(t') − P(t))/Δ, the velocity along the path at z_t; inference integrates it with
    Euler steps at the same pairs: z_{k+1} = z_k + (t/K)·ε_S(z_k, τ(t_k)), t_k = k·t/K.

Paths (``path``):
  fidelity  P(t) = t·(z_f − z0)                         straight to the fidelity teacher's latent (default)
  noise     P(t) = t·ε_TS(z_in, τ(t))                   eq. 5–6 literally
  denoise   P(t) = x̂0_TS(z_in, τ(t)) − z0               the teacher denoises its own output as if noisy at τ(t)
``teacher_input``: ``z0`` evaluates the teacher at z_in = z0 (eq. 8); ``path`` at z_in = z_t, the point reached by
the z0 rule (Algorithm 2, line 6). τ(t) = t·tau_max.

These functions take callables, so the LightningModule and the toy lab (``ctsr.toy``) run the same code.
"""
from __future__ import annotations

from typing import Callable, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ctsr.diffusion.control_rule import ControlPath, ControlRule, Objective
from ctsr.diffusion.schedule import NoiseSchedule, tau_of_t

TeacherInput = Literal["z0", "path"]
TSampler = Literal["order", "uniform"]
TEACHER_INPUTS: tuple[str, ...] = TeacherInput.__args__
T_SAMPLERS: tuple[str, ...] = TSampler.__args__
__all__ = ["ControlModel", "ControlPath", "Objective", "TSampler", "TeacherInput", "control_loss", "control_targets",
           "endpoint_loss", "path_offset", "sample_t", "sample_t_pairs", "stage2_terms"]
EpsFn = Callable[[Tensor, Tensor], Tensor]  # (z, τ (B,)) → ε


def _bcast(t: Tensor, z: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (z.ndim - 1))).to(z.dtype)


def sample_t(batch: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """t ~ U(0, 1] per sample (the endpoint objective of curved paths; t = 0 is P(0) = 0, nothing to learn)."""
    return 1.0 - torch.rand(batch, generator=generator, device=device)


def sample_t_pairs(
    batch: int, generator: torch.Generator | None = None, device=None, min_gap: float = 1e-3,
    sampler: TSampler = "order",
) -> tuple[Tensor, Tensor]:
    """t < t' per sample, Δ ≥ ``min_gap``.

    ``order``: the order statistics of two uniforms (the paper's "t, t' uniformly sampled"): t has density 2(1 − t),
    so the velocity near t = 1 is rarely trained. ``uniform``: t ~ U(0, 1), t' ~ U(t, 1): every t as often."""
    u = torch.rand(batch, 2, generator=generator, device=device)
    if sampler == "order":
        t, t2 = u.min(dim=1).values, u.max(dim=1).values
    elif sampler == "uniform":
        t = u[:, 0]
        t2 = t + (1 - t) * u[:, 1]
    else:
        raise ValueError(f"unknown t_sampler {sampler!r} (order | uniform)")
    t2 = torch.maximum(t2, t + min_gap).clamp(max=1.0)
    t = torch.minimum(t, t2 - min_gap)
    return t, t2


def path_offset(
    path: ControlPath,
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
    path: ControlPath,
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


def endpoint_loss(eps_s: Tensor, target: Tensor, t: Tensor | None = None) -> Tensor:
    """The endpoint objective, mean over elements: ‖ε_S − target‖² on the fidelity path (``t`` None, target
    z_f − z0), ‖t·ε_S − P(t)‖² on a curved path (target P(t))."""
    pred = eps_s.float() if t is None else _bcast(t, eps_s).float() * eps_s.float()
    return F.mse_loss(pred, target.float())


class ControlModel(Protocol):
    """What :func:`stage2_terms` needs of a model (``ControllableSR`` and the toy lab's model both are one)."""

    rule: ControlRule

    def z0(self, x_lr: Tensor) -> Tensor: ...
    def teacher_eps(self, z: Tensor, tau: Tensor) -> Tensor: ...
    def velocity(self, z: Tensor, tau: Tensor) -> Tensor: ...


def stage2_terms(
    model: ControlModel,
    x_lr: Tensor,
    generator: torch.Generator | None = None,
    *,
    teacher_input: TeacherInput = "z0",
    t_sampler: TSampler = "order",
    z_f: Tensor | None = None,
    schedule: NoiseSchedule | None = None,
    record: Callable[[Tensor, Tensor], None] | None = None,
) -> dict[str, Tensor]:
    """One stage-2 loss: ``{"loss", "t_mean", "delta_mean"}``, for ``model.rule`` (objective, path, τ_max, τ_c). The
    one implementation of the objective, used by the LightningModule and the toy lab. ``teacher_input`` and
    ``t_sampler``: eq8's training options; ``z_f``: the fidelity teacher's latent (fidelity path). ``record(z, τ)``
    (tests) sees every input pair the student is queried at."""
    rule = model.rule
    objective, path, tau_max, tau_c = rule.objective, rule.path, rule.tau_max, rule.tau_c
    z0 = model.z0(x_lr)                                                   # G_TS(x_LR), no grad
    b = z0.shape[0]
    kw = dict(teacher_eps=model.teacher_eps, z_f=z_f, tau_max=tau_max, schedule=schedule)

    def student(z: Tensor, tau: Tensor) -> Tensor:
        if record is not None:
            record(z, tau)
        return model.velocity(z, tau)

    if objective == "endpoint":
        if path == "fidelity":
            if z_f is None:
                raise ValueError("the fidelity path needs z_f, the fidelity teacher's latent")
            tau = torch.full((b,), float(tau_c), device=z0.device)
            loss = endpoint_loss(student(z0, tau), (z_f - z0).detach())    # ‖ε_S(z0, τ_c) − (z_f − z0)‖²
            one = torch.ones(b, device=z0.device)
            return {"loss": loss, "t_mean": one.mean(), "delta_mean": one.mean()}
        t = sample_t(b, generator, z0.device)
        with torch.no_grad():
            p_t = path_offset(path, z0, t, **kw)
        loss = endpoint_loss(student(z0, tau_of_t(t, tau_max)), p_t, t)  # ‖t·ε_S(z0, τ(t)) − P(t)‖²
        return {"loss": loss, "t_mean": t.mean(), "delta_mean": t.mean()}
    t, t2 = sample_t_pairs(b, generator, z0.device, sampler=t_sampler)
    p_t, p_t2, z_t = control_targets(path, z0, t, t2, teacher_input, **kw)
    eps_s = student(z_t, tau_of_t(t, tau_max))                            # ε_S(z_t, τ(t), c)
    loss = control_loss(p_t, p_t2, eps_s, t2 - t)                         # eq. 8
    return {"loss": loss, "t_mean": t.mean(), "delta_mean": (t2 - t).mean()}
