"""Training and evaluation in the toy world: pre-training (imitate the realness model), stage 1, stage 2.

Stage 1 calls the project's ``DualTeacherLoss`` exactly as ``DualTeacherDistillation.training_step`` does, with
AdamW and gradient-norm clipping 1.0 (DESIGN §5). Stage 2 calls the project's
:func:`ctsr.losses.stage2.stage2_terms` — the very function ``ControllabilityDistillation.stage2_terms`` calls,
with the same arguments (:func:`toy_stage2_terms` only supplies z_f and the schedule, as the LightningModule does;
a test checks both give the same loss). "Beyond the chord": :func:`stage1_conditional` (one generator
for a family of stage-1 weightings, t per group of samples) and :func:`train_delta_knob` (the LoRA-scale knob).
Every batch is fresh from the world (full batches of a few hundred points), and every random draw comes from a
seeded ``torch.Generator``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor

from typing import Callable

from ctsr.diffusion.control_rule import ControlRule
from ctsr.losses import stage2 as stage2_losses
from ctsr.losses.stage1 import DualTeacherLoss, Stage1Weights
from ctsr.losses.stage2 import TeacherInput, TSampler
from ctsr.models.teachers import AnchoredTeacher, Teacher
from ctsr.toy.models import (ExactEpsTeacher, FrozenEpsTeacher, PosteriorMeanSR, ToyControllableSR, ToyGenerator,
                             add_scaled_delta, conditional_generator, delta_parameters, set_control,
                             set_delta_scale)
from ctsr.toy.world import MixtureWorld, energy_distance, mse, to_image, to_points, within_distance


# -- data ---------------------------------------------------------------------------------------------------------
@dataclass
class Batch:
    z: Tensor          # (B, d) ground truth, latent units
    y: Tensor          # (B, m) observation
    x_lr: Tensor       # (B, d, 1, 1) in [0, 1]: the image of A⁺y
    x_gt: Tensor       # (B, d, 1, 1) in [0, 1]


def draw_batch(world: MixtureWorld, n: int, generator: torch.Generator) -> Batch:
    z = world.sample(n, generator)
    y = world.degrade(z, generator)
    return Batch(z, y, to_image(world.lift(y)), to_image(z))


@dataclass
class EvalSet:
    """A fixed evaluation set with its exact answers.

    ``noise`` is the generator's latent noise for each point; ``x_r`` is the exact posterior sample driven by the
    same noise (plus an independent range noise), ``x_f`` = E[z|y]; ``reference`` is an independent draw of the data
    for the distribution distance."""

    batch: Batch
    noise: Tensor
    x_f: Tensor
    x_r: Tensor
    reference: Tensor
    world: MixtureWorld = field(repr=False)
    _ref_self: float | None = field(default=None, repr=False)

    @classmethod
    def make(cls, world: MixtureWorld, n: int = 2000, seed: int = 1234) -> EvalSet:
        g = torch.Generator().manual_seed(seed)
        batch = draw_batch(world, n, g)
        noise = torch.randn(n, world.null_dim, generator=g)
        noise_range = torch.randn(n, world.dim - world.null_dim, generator=g)
        x_r = world.posterior_sample(batch.y, noise, noise_range)
        return cls(batch, noise, world.posterior_mean(batch.y), x_r, world.sample(n, g), world)

    def metrics(self, points: Tensor) -> dict[str, float]:
        """Fidelity (MSE to the ground truth, per coordinate) and realness (energy distance to the data, mean
        log-density under the mixture) of outputs (n, d) for this set's inputs."""
        points = points.reshape(points.shape[0], -1)
        if self._ref_self is None:   # E‖Y−Y'‖ of the reference: the same for every call
            self._ref_self = within_distance(self.reference)
        return {
            "mse": mse(points, self.batch.z),
            "ed": energy_distance(points, self.reference, self._ref_self),
            "logp": float(self.world.log_prob(points).mean()),
        }

    @torch.no_grad()
    def outputs(self, generator: ToyGenerator) -> Tensor:
        """The one-step generator's outputs on this set (its latent noise = this set's), (n, d)."""
        return to_points((generator.latent(self.batch.x_lr, self.noise) + 1) / 2)

    def data_metrics(self) -> dict[str, float]:
        """The data itself (a second independent draw) as a floor: ED ≈ 0, log p = −entropy."""
        g = torch.Generator().manual_seed(99)
        z = self.world.sample(self.reference.shape[0], g)
        return {"mse": float("nan"), "ed": energy_distance(z, self.reference), "logp": float(self.world.log_prob(z).mean())}


# -- pre-training: the student imitates the realness model ---------------------------------------------------------
def pretrain(
    student: ToyGenerator, world: MixtureWorld, steps: int = 1500, batch: int = 512, lr: float = 2e-3,
    pool: int = 8192, seed: int = 0,
) -> dict[str, float]:
    """Fit the student's two roles: ε_S(z_τ, τ) → the exact mixture ε for τ ∈ {0 … 998} (denoising on fresh data,
    exact targets), and the generator G(A⁺y, n) → the posterior sample driven by the same noise n (regression on a
    pool of ``pool`` (y, n, x_r) triples). Adam with cosine decay. Returns the final two losses."""
    g = torch.Generator().manual_seed(seed)
    data = draw_batch(world, pool, g)
    noise = torch.randn(pool, world.null_dim, generator=g)
    target = to_image(world.posterior_sample(data.y, noise)) * 2 - 1          # (pool, d, 1, 1) latent units
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    student.train()
    losses = {}
    for _ in range(steps):
        idx = torch.randint(0, pool, (batch,), generator=g)
        z0_hat = student.latent(data.x_lr[idx], noise[idx])
        loss_gen = torch.nn.functional.mse_loss(z0_hat, target[idx])
        z = world.sample(batch, g)
        tau = torch.randint(0, 999, (batch,), generator=g)
        n = torch.randn(z.shape, generator=g)
        z_t = student.schedule.add_noise(z[:, :, None, None], n[:, :, None, None], tau)
        loss_eps = torch.nn.functional.mse_loss(student.eps(z_t, tau), to_eps_image(world, z_t, tau))
        opt.zero_grad()
        (loss_gen + loss_eps).backward()
        opt.step()
        sched.step()
        losses = {"pretrain_gen_mse": float(loss_gen.detach()), "pretrain_eps_mse": float(loss_eps.detach())}
    student.eval()
    return losses


def to_eps_image(world: MixtureWorld, z_t: Tensor, tau: Tensor) -> Tensor:
    return world.eps(z_t.reshape(z_t.shape[0], -1), tau).reshape(z_t.shape)


@torch.no_grad()
def eps_error(unet, world: MixtureWorld, tau_min: int = 20, tau_max: int = 979, n: int = 4000, seed: int = 7) -> float:
    """E‖ε_net − ε_exact‖² / E‖ε_exact‖² on noised data, τ ~ U{τ_min … τ_max}: how good a realness teacher is."""
    g = torch.Generator().manual_seed(seed)
    z = world.sample(n, g)
    tau = torch.randint(tau_min, tau_max + 1, (n,), generator=g)
    z_t = unet.schedule.add_noise(z[:, :, None, None], torch.randn(n, world.dim, 1, 1, generator=g), tau)
    exact = to_eps_image(world, z_t, tau)
    return float(((unet(z_t, tau) - exact) ** 2).mean() / (exact**2).mean())


# -- stage 1 -------------------------------------------------------------------------------------------------------
def fidelity_teacher(world: MixtureWorld, student: ToyGenerator) -> AnchoredTeacher:
    """T_f: the project's AnchoredTeacher around the exact posterior mean (scale 1: A⁺y already has d coordinates)."""
    teacher = AnchoredTeacher(PosteriorMeanSR(world), scale=1)
    teacher.requires_grad_(False)
    teacher.bind(student)
    return teacher


def stage1(
    init: ToyGenerator,
    world: MixtureWorld,
    weights: Stage1Weights,
    steps: int = 300,
    batch: int = 512,
    lr: float = 1e-3,
    realness: str = "copy",
    seed: int = 0,
    record_at: tuple[int, ...] = (),
    evalset: EvalSet | None = None,
    cosine: bool = True,
) -> tuple[ToyGenerator, list[dict]]:
    """Train a copy of ``init`` with L_s1 (``DualTeacherLoss``, τ ∈ {20 … 979}); AdamW (0.9, 0.999), weight decay
    1e-2, gradient-norm clip 1.0 (DESIGN §5); ``lr`` decays to 0 on a cosine when ``cosine`` (the project keeps it
    constant; the decay makes the last step a settled point rather than a noisy snapshot).

    ``realness``: ``copy`` — T_r is a frozen copy of ``init`` (DESIGN §5); ``exact`` — T_r is the exact mixture ε.
    Returns the student and, when ``record_at`` and ``evalset`` are given, its metrics at those steps (and step 0)
    with that step's loss terms."""
    student = copy.deepcopy(init).train()
    student.rng.manual_seed(seed + 101)
    t_r: Teacher = FrozenEpsTeacher(init.unet) if realness == "copy" else ExactEpsTeacher(world)
    t_r.requires_grad_(False)
    t_r.bind(student)
    teachers = {"fl": fidelity_teacher(world, student), "rn": t_r}
    objective = DualTeacherLoss(weights, tau_min=20, tau_max=979)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine else None
    g = torch.Generator().manual_seed(seed)
    history: list[dict] = []

    def record(step: int, out: dict | None) -> None:
        if not (record_at and evalset is not None):
            return
        row = {"step": step, **evalset.metrics(evalset.outputs(student))}
        if out is not None:
            row.update({k: float(v.detach()) for k, v in out.items() if k.startswith("loss")})
        history.append(row)

    record(0, None)
    for step in range(1, steps + 1):
        b = draw_batch(world, batch, g)
        out = objective(student, teachers, b.x_lr, b.x_gt, g)
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        if sched is not None:
            sched.step()
        if step in record_at:
            record(step, out)
    return student.eval(), history


# -- stage 2 -------------------------------------------------------------------------------------------------------
def toy_stage2_terms(
    model: ToyControllableSR, fidelity: AnchoredTeacher | None, x_lr: Tensor, generator: torch.Generator | None = None,
    *, teacher_input: TeacherInput = "z0", t_sampler: TSampler = "order",
    record: Callable[[Tensor, Tensor], None] | None = None,
) -> dict[str, Tensor]:
    """What ``ControllabilityDistillation.stage2_terms`` does, for the toy model and its control rule
    (``model.rule``): z_f from the fidelity teacher (fidelity path only), then the project's
    :func:`ctsr.losses.stage2.stage2_terms`."""
    z_f = fidelity.condition(x_lr) if model.rule.path == "fidelity" else None
    return stage2_losses.stage2_terms(model, x_lr, generator, teacher_input=teacher_input, t_sampler=t_sampler,
                                      z_f=z_f, schedule=model.generator.schedule, record=record)


def stage2(
    t_s: ToyGenerator,
    world: MixtureWorld,
    rule: ControlRule | None = None,
    teacher_input: TeacherInput = "z0",
    t_sampler: TSampler = "order",
    steps: int = 600,
    batch: int = 512,
    lr: float = 1e-3,
    seed: int = 0,
    record: Callable[[Tensor, Tensor], None] | None = None,
) -> tuple[ToyControllableSR, float]:
    """Controllability distillation from the frozen stage-1 generator ``t_s``: the student S is a copy of T_S, all
    its weights train (AdamW, clip 1.0, cosine decay of ``lr``), by ``rule`` (objective, path, τ_max, τ_c; default
    :class:`ControlRule`'s). Returns the controllable model (evaluated as it was trained: ``ControllableSR`` with the
    same rule; eq8 with the Euler index) and the last loss."""
    teacher = copy.deepcopy(t_s).eval()
    teacher.rng.manual_seed(seed + 202)
    student = copy.deepcopy(t_s).train().requires_grad_(True)
    model = ToyControllableSR(student, teacher, rule)
    fidelity = fidelity_teacher(world, student) if model.rule.path == "fidelity" else None
    opt = torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    g = torch.Generator().manual_seed(seed)
    loss = float("nan")
    for _ in range(steps):
        b = draw_batch(world, batch, g)
        out = toy_stage2_terms(model, fidelity, b.x_lr, g, teacher_input=teacher_input, t_sampler=t_sampler,
                               record=record)
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        loss = float(out["loss"].detach())
    return model.eval(), loss


# -- beyond the chord ------------------------------------------------------------------------------------------------
def family_weights(t: float, lambda_fl: float = 2.0, lambda_rn: float = 2.0, gamma_time: float = 5.5) -> Stage1Weights:
    """The loss-conditional family: L_rec + λ_fl(t)·L_fl + λ_rn(t)·L_rn with λ_fl(t) = λ_fl·t (the fidelity end at
    t = 1) and λ_rn(t) = λ_rn·(1 − t) (the realness end at t = 0); no LPIPS in the toy."""
    return Stage1Weights(lambda_l2=1.0, lambda_lp=0.0, lambda_fl=lambda_fl * t, lambda_rn=lambda_rn * (1 - t),
                         gamma_time=gamma_time)


def stage1_conditional(
    init: ToyGenerator, world: MixtureWorld, steps: int = 300, batch: int = 512, lr: float = 1e-3, groups: int = 8,
    seed: int = 0, weights: Callable[[float], Stage1Weights] = family_weights,
) -> ToyGenerator:
    """Loss-conditional stage 1: one generator that takes t (``conditional_generator``) trained on
    ``weights(t)`` with t ~ U[0, 1] drawn per group of batch/``groups`` samples (the project's ``DualTeacherLoss``
    reduces over the batch, so one call per group); T_r a frozen copy of ``init``; AdamW, clip 1.0, cosine."""
    student = conditional_generator(init).train()
    student.rng.manual_seed(seed + 101)
    t_r = FrozenEpsTeacher(init.unet).requires_grad_(False)
    t_r.bind(student)
    teachers = {"fl": fidelity_teacher(world, student), "rn": t_r}
    opt = torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    g = torch.Generator().manual_seed(seed)
    size = max(batch // groups, 1)
    for _ in range(steps):
        b = draw_batch(world, size * groups, g)
        ts = torch.rand(groups, generator=g)
        total = 0.0
        for k in range(groups):
            sl = slice(k * size, (k + 1) * size)
            set_control(student, float(ts[k]))
            out = DualTeacherLoss(weights(float(ts[k])), tau_min=20, tau_max=979)(
                student, teachers, b.x_lr[sl], b.x_gt[sl], g)
            total = total + out["loss"] / groups
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
    set_control(student, None)
    return student.eval()


def train_delta_knob(
    t_s: ToyGenerator, world: MixtureWorld, rank: int = 4, steps: int = 300, batch: int = 512, lr: float = 1e-3,
    seed: int = 0,
) -> ToyGenerator:
    """The LoRA-scale knob: T_S's weights frozen plus a low-rank delta (``add_scaled_delta``) trained at scale 1 to
    the fidelity end, ‖G_{W+ΔW}(x_LR) − z_f‖² (the distilled T_f); at inference ``set_delta_scale(g, t)`` gives
    W + t·ΔW, one pass at any t. AdamW, clip 1.0, cosine."""
    gen = add_scaled_delta(t_s, rank, seed)
    gen.rng.manual_seed(seed + 303)
    params = delta_parameters(gen)
    for p in params:
        p.requires_grad_(True)
    fidelity = fidelity_teacher(world, gen)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    g = torch.Generator().manual_seed(seed)
    set_delta_scale(gen, 1.0)
    for _ in range(steps):
        b = draw_batch(world, batch, g)
        with torch.no_grad():
            z_f = fidelity.condition(b.x_lr)
        loss = torch.nn.functional.mse_loss(gen.latent(b.x_lr), z_f)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    return gen.eval()
