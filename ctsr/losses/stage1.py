"""Stage-1 objective: reconstruction + dual-teacher distillation (paper eq. 1–4, Algorithm 1; DESIGN §5).

L_rec = λ_l2·‖x̂ − x_GT‖² + λ_lp·LPIPS(x̂, x_GT)                                    (eq. 1)
L_T   = ‖ε_T(z_τ^s) − ε_S(z_τ^s)‖² + γ_time·‖ε_T(z_τ^s) − sg[ε_T(z_τ)]‖²,  T ∈ {T_f, T_r}  (eq. 2–3)
L_s1  = L_rec + λ_fl·L_fl + λ_rn·L_rn                                                 (eq. 4)

z_τ^s = √ᾱ_τ·ẑ0 + √(1−ᾱ_τ)·n (student output) and z_τ = √ᾱ_τ·z0 + √(1−ᾱ_τ)·n (ground truth) share one noise n.
Every norm is a mean over elements (MSE). Gradients reach the student through x̂, through ε_S and through the
teachers' inputs z_τ^s (the γ_time term acts only that way); never to teacher weights.

The student is anything with ``forward(x_lr) -> (x̂, ẑ0)``, ``encode_base(x) -> z``, ``eps(z, τ) -> ε`` and a
``context``: the diffusers generator, or the toy lab's MLP (``ctsr.toy``), which run this very code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctsr.diffusion.schedule import NoiseSchedule
from ctsr.errors import check


def mse(a: Tensor, b: Tensor) -> Tensor:
    return F.mse_loss(a.float(), b.float())


def reconstruction_terms(
    x_hat: Tensor, x_gt: Tensor, perceptual: nn.Module | None
) -> tuple[Tensor, Tensor]:
    """(‖x̂ − x_GT‖², LPIPS) on images in [0,1]; the L2 is taken in [-1,1] as OSEDiff does (λ_l2 = 1 keeps its
    meaning), LPIPS receives [-1,1] as its networks expect. Without ``perceptual`` the LPIPS term is 0."""
    a, b = x_hat * 2 - 1, x_gt * 2 - 1
    l2 = mse(a, b)
    lp = perceptual(a.float(), b.float()).mean() if perceptual is not None else l2.new_zeros(())
    return l2, lp


def teacher_terms(eps_t_student: Tensor, eps_s: Tensor, eps_t_gt: Tensor | None) -> tuple[Tensor, Tensor]:
    """(‖ε_T(z^s) − ε_S(z^s)‖², ‖ε_T(z^s) − ε_T(z)‖²) of eq. 2/3; the second is 0 when ``eps_t_gt`` is None."""
    match = mse(eps_t_student, eps_s)
    time = mse(eps_t_student, eps_t_gt) if eps_t_gt is not None else match.new_zeros(())
    return match, time


@dataclass
class Stage1Weights:
    lambda_l2: float = 1.0
    lambda_lp: float = 2.0
    lambda_fl: float = 2.0
    lambda_rn: float = 1.0
    gamma_time: float = 5.5


class DualTeacherLoss(nn.Module):
    """L_s1 for one batch; returns every term (``loss`` is the total).

    Args:
        weights: λ_l2, λ_lp, λ_fl, λ_rn, γ_time.
        tau_min, tau_max: the range of the distillation timestep τ ~ U{τ_min … τ_max} (per sample).
        perceptual: the LPIPS network (None: λ_lp must be 0).
    """

    def __init__(
        self, weights: Stage1Weights, tau_min: int = 20, tau_max: int = 979, perceptual: nn.Module | None = None
    ) -> None:
        super().__init__()
        check(0 <= tau_min <= tau_max <= 999, "tau_min/tau_max", f"need 0 ≤ τ_min ≤ τ_max ≤ 999, got {tau_min}, {tau_max}")
        for name, value in vars(weights).items():
            check(value >= 0, name, f"must be ≥ 0, got {value}")
        check(perceptual is not None or weights.lambda_lp == 0, "lambda_lp", "> 0 needs an LPIPS network")
        self.w = weights
        self.tau_min, self.tau_max = tau_min, tau_max
        self.perceptual = perceptual
        self.schedule = NoiseSchedule()

    def forward(
        self,
        student: nn.Module,
        teachers: dict[str, nn.Module | None],
        x_lr: Tensor,
        x_gt: Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """``teachers``: {"fl": T_f, "rn": T_r}; a missing/None teacher or a zero λ skips its passes."""
        w = self.w
        x_hat, z0_hat = student(x_lr)                                   # one-step SR (Alg. 1 line 3)
        z0 = student.encode_base(x_gt * 2 - 1)                          # GT latent, frozen encoder, no grad
        b = z0.shape[0]
        tau = self.schedule.sample_timesteps(b, self.tau_min, self.tau_max, generator).to(z0.device)
        noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)  # shared by both
        z_s = self.schedule.add_noise(z0_hat, noise.to(z0_hat.dtype), tau)   # z_τ^s
        z_gt = self.schedule.add_noise(z0, noise, tau)                       # z_τ

        l2, lp = reconstruction_terms(x_hat, x_gt, self.perceptual if w.lambda_lp > 0 else None)
        out = {"loss_l2": l2, "loss_lpips": lp, "loss_rec": w.lambda_l2 * l2 + w.lambda_lp * lp}
        total = out["loss_rec"]
        eps_s = None
        for key, lam in (("fl", w.lambda_fl), ("rn", w.lambda_rn)):
            teacher = teachers.get(key)
            if teacher is None or lam == 0:
                continue
            if eps_s is None:
                eps_s = student.eps(z_s, tau)                           # ε_S(z_τ^s), shared by both teachers
            cond = teacher.condition(x_lr)
            eps_t_s = teacher.eps(z_s, tau, student.context, cond)      # grad flows through z_τ^s
            eps_t_gt = None
            if w.gamma_time > 0:
                with torch.no_grad():
                    eps_t_gt = teacher.eps(z_gt, tau, student.context, cond)
            match, time = teacher_terms(eps_t_s, eps_s, eps_t_gt)
            term = match + w.gamma_time * time
            out.update({f"loss_{key}": term, f"loss_{key}_match": match, f"loss_{key}_time": time})
            total = total + lam * term
        out["loss"] = total
        out["tau_mean"] = tau.float().mean()
        out["x_hat"] = x_hat
        return out
