"""The toy lab (ctsr.toy): its exact answers against independent computations (finite differences, Monte Carlo,
ancestral sampling), the identities the project's losses obey there, and the training behaviours the maths
guarantees. Small sizes, fixed seeds, one short pre-training shared by the training tests."""
import math
from types import SimpleNamespace

import pytest
import torch

from ctsr.diffusion.control_rule import ControlRule
from ctsr.diffusion.schedule import NoiseSchedule, alphas_cumprod
from ctsr.losses.stage1 import DualTeacherLoss, Stage1Weights, teacher_terms
from ctsr.losses.stage2 import control_targets
from ctsr.toy.models import ToyGenerator, conditional_generator, set_control, set_delta_scale
from ctsr.toy.train import (EvalSet, draw_batch, fidelity_teacher, pretrain, stage1, stage2, toy_stage2_terms,
                            train_delta_knob)
from ctsr.toy.world import MixtureWorld, energy_distance, mse, to_points


@pytest.fixture(scope="module")
def world2() -> MixtureWorld:
    return MixtureWorld.make(2)


def _noised_log_density(world: MixtureWorld, z: torch.Tensor, tau: int) -> torch.Tensor:
    """log p_τ(z) of the noised mixture, written out here independently of the world's ε (float64)."""
    a = float(alphas_cumprod()[tau])
    v = a * world.std**2 + 1 - a
    d = z.shape[1]
    sq = ((z[:, None, :] - math.sqrt(a) * world.means[None]) ** 2).sum(-1)
    return torch.logsumexp(world.weights.log()[None] - 0.5 * sq / v - 0.5 * d * math.log(2 * math.pi * v), dim=1)


@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("tau", [20, 300, 700, 979])
def test_mixture_eps_is_the_scaled_score_by_finite_differences(dim, tau):
    world = MixtureWorld.make(dim)
    g = torch.Generator().manual_seed(tau)
    a = float(alphas_cumprod()[tau])
    # points near the data (noised samples) and a few far out
    z = torch.cat([math.sqrt(a) * world.sample(6, g).double() + math.sqrt(1 - a) * torch.randn(6, dim, generator=g,
                                                                                                 dtype=torch.float64),
                   torch.randn(2, dim, generator=g, dtype=torch.float64)])
    h = 1e-5
    grad = torch.zeros_like(z)
    for i in range(dim):
        e = torch.zeros(dim, dtype=torch.float64)
        e[i] = h
        grad[:, i] = (_noised_log_density(world, z + e, tau) - _noised_log_density(world, z - e, tau)) / (2 * h)
    expected = -math.sqrt(1 - a) * grad                     # ε = −√(1−ᾱ)·∇log p_τ
    got = world.eps(z, torch.tensor(tau)).double()
    assert torch.allclose(got, expected, atol=2e-5, rtol=1e-4), float((got - expected).abs().max())


def test_x0_from_the_exact_eps_is_the_posterior_mean_denoiser(world2):
    """x0_from_eps(z_τ, ε(z_τ)) = E[z0 | z_τ]: the closed form, and a Monte-Carlo (self-normalised importance
    sampling over prior draws) estimate."""
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    prior = world2.sample(200_000, g).double()
    for tau in (400, 800):
        a = float(alphas_cumprod()[tau])
        z = math.sqrt(a) * world2.sample(5, g).double() + math.sqrt(1 - a) * torch.randn(5, 2, generator=g,
                                                                                          dtype=torch.float64)
        taus = torch.full((5,), tau)
        x0 = s.x0_from_eps(z.float(), world2.eps(z, taus), taus).double()
        assert torch.allclose(x0, world2.denoise(z, taus).double(), atol=1e-5)
        logw = -0.5 * ((z[:, None, :] - math.sqrt(a) * prior[None]) ** 2).sum(-1) / (1 - a)
        mc = (torch.softmax(logw, dim=1)[..., None] * prior[None]).sum(1)
        assert torch.allclose(x0, mc, atol=0.01), (x0, mc)


def test_posterior_mean_matches_monte_carlo(world2):
    g = torch.Generator().manual_seed(1)
    prior = world2.sample(400_000, g).double()
    z = world2.sample(6, g)
    y = world2.degrade(z, g).double()
    logw = -0.5 * ((y[:, None, :] - (prior @ world2.A.T)[None]) ** 2).sum(-1) / world2.noise_std**2
    mc = (torch.softmax(logw, dim=1)[..., None] * prior[None]).sum(1)
    assert torch.allclose(world2.posterior_mean(y.float()).double(), mc, atol=0.01)


@pytest.mark.parametrize("dim", [2, 16])
def test_posterior_mean_has_half_the_mse_of_posterior_samples(dim):
    """E‖z − x_r‖² = 2·E‖z − E[z|y]‖² = 2·Var for a posterior sample x_r, with both samplers."""
    world = MixtureWorld.make(dim)
    g = torch.Generator().manual_seed(2)
    n = 20_000 if dim == 2 else 6000
    b = draw_batch(world, n, g)
    x_f = world.posterior_mean(b.y)
    x_anc = world.posterior_sample_ancestral(b.y, g)
    x_ode = world.posterior_sample(b.y, torch.randn(n, world.null_dim, generator=g),
                                   torch.randn(n, dim - world.null_dim, generator=g))
    var = float(world.posterior_variance(b.y).mean()) / dim
    assert mse(x_f, b.z) == pytest.approx(var, rel=0.05)
    for x_r in (x_anc, x_ode):
        assert mse(x_r, b.z) / mse(x_f, b.z) == pytest.approx(2.0, abs=0.12)


@pytest.mark.parametrize("dim", [2, 16])
def test_posterior_samples_are_distributed_as_the_data_and_the_mean_is_not(dim):
    world = MixtureWorld.make(dim)
    g = torch.Generator().manual_seed(3)
    n = 3000
    b = draw_batch(world, n, g)
    ref = world.sample(n, g)
    x_ode = world.posterior_sample(b.y, torch.randn(n, world.null_dim, generator=g),
                                   torch.randn(n, dim - world.null_dim, generator=g))
    ed_f = energy_distance(world.posterior_mean(b.y), ref)
    assert ed_f > 0.05
    assert abs(energy_distance(x_ode, ref)) < 0.05 * ed_f
    assert abs(energy_distance(x_ode, world.posterior_sample_ancestral(b.y, g))) < 0.05 * ed_f
    assert float(world.log_prob(x_ode).mean()) > float(world.log_prob(world.posterior_mean(b.y)).mean()) + 5


def test_anchored_gamma_term_is_an_snr_weighted_l2_to_the_ground_truth(world2):
    """ε_Tf(z_τ^s) − ε_Tf(z_τ) = √(ᾱ/(1−ᾱ))·(ẑ0 − z0) for the AnchoredTeacher, whatever its anchor z_f."""
    s = NoiseSchedule()
    student = ToyGenerator(world2, width=16, depth=1)
    teacher = fidelity_teacher(world2, student)
    g = torch.Generator().manual_seed(4)
    b = draw_batch(world2, 64, g)
    z0, z0_hat = b.x_gt * 2 - 1, torch.randn(64, 2, 1, 1, generator=g)
    tau = torch.randint(20, 980, (64,), generator=g)
    n = torch.randn(64, 2, 1, 1, generator=g)
    cond = teacher.condition(b.x_lr)
    e_s = teacher.eps(s.add_noise(z0_hat, n, tau), tau, student.context, cond)
    e_gt = teacher.eps(s.add_noise(z0, n, tau), tau, student.context, cond)
    _, time_term = teacher_terms(e_s, torch.zeros_like(e_s), e_gt)
    a = s.alpha_bar(tau)
    expected = (a / (1 - a) * (z0_hat - z0) ** 2).mean()
    assert float(time_term) == pytest.approx(float(expected), rel=1e-4)


def test_stage1_loss_on_the_toy_student_reaches_the_student_only(world2):
    """The project's DualTeacherLoss runs on the toy student: L2 = the latent MSE (image = (z+1)/2), gradients
    reach the student and never T_r's weights."""
    init = ToyGenerator(world2, width=16, depth=1)
    from ctsr.toy.models import FrozenEpsTeacher

    t_r = FrozenEpsTeacher(init.unet)
    teachers = {"fl": fidelity_teacher(world2, init), "rn": t_r}
    g = torch.Generator().manual_seed(5)
    b = draw_batch(world2, 32, g)
    out = DualTeacherLoss(Stage1Weights(lambda_lp=0.0))(init, teachers, b.x_lr, b.x_gt, g)
    assert float(out["loss_l2"].detach()) == pytest.approx(mse(to_points(out["x_hat"].detach()), b.z), rel=1e-5)
    assert float(out["loss_rn_match"].detach()) == pytest.approx(0.0, abs=1e-10)   # T_r = a copy of the student
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in init.unet.parameters())
    assert all(p.grad is None for p in t_r.parameters())


# -- training behaviours ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(world2):
    torch.set_num_threads(1)
    ev = EvalSet.make(world2, 1000, seed=11)
    init = ToyGenerator(world2, width=64, depth=2, seed=0)
    pretrain(init, world2, steps=300, batch=256, lr=3e-3, pool=2048, seed=0)
    return SimpleNamespace(world=world2, ev=ev, init=init, init_mse=ev.metrics(ev.outputs(init))["mse"],
                           x_f_mse=ev.metrics(ev.x_f)["mse"], x_r_mse=ev.metrics(ev.x_r)["mse"])


def test_pretrained_student_imitates_the_realness_model(trained):
    ev = trained.ev
    assert trained.init_mse > 1.3 * trained.x_f_mse           # not the posterior mean: it keeps the spread
    assert ev.metrics(ev.outputs(trained.init))["ed"] < 0.5 * ev.metrics(ev.x_f)["ed"]


def test_reconstruction_alone_lowers_the_mse_towards_the_posterior_mean(trained):
    student, _ = stage1(trained.init, trained.world, Stage1Weights(lambda_lp=0.0, lambda_fl=0.0, lambda_rn=0.0),
                        steps=60, batch=256, lr=1e-3, seed=0)
    end = trained.ev.metrics(trained.ev.outputs(student))["mse"]
    assert end < trained.init_mse - 0.5 * (trained.init_mse - trained.x_f_mse)


def test_large_lambda_fl_moves_the_mse_to_the_fidelity_teacher(trained):
    student, _ = stage1(trained.init, trained.world, Stage1Weights(lambda_lp=0.0, lambda_fl=10.0),
                        steps=60, batch=256, lr=1e-3, seed=0)
    end = trained.ev.metrics(trained.ev.outputs(student))["mse"]
    assert abs(end - trained.x_f_mse) < 0.5 * abs(trained.init_mse - trained.x_f_mse)


@pytest.fixture(scope="module")
def fidelity_control(trained):
    model, _ = stage2(trained.init, trained.world, ControlRule(objective="eq8"), steps=200, batch=256, lr=1e-3,
                      seed=0)
    return model


def _d_f(model, ev, t):
    with torch.no_grad():
        z = model.controlled_latent(model.z0(ev.batch.x_lr, ev.noise), t)
    return mse(to_points((z + 1) / 2), ev.x_f)


def test_fidelity_path_ends_on_the_fidelity_teacher(trained):
    """P(1) = z_f − z0 for the toy's T_S and AnchoredTeacher, through the project's control_targets."""
    model, _ = stage2(trained.init, trained.world, steps=0)
    ev = trained.ev
    z0 = model.z0(ev.batch.x_lr, ev.noise)
    z_f = fidelity_teacher(trained.world, model.generator).condition(ev.batch.x_lr)
    ones = torch.ones(len(z0))
    p1, _, z1 = control_targets("fidelity", z0, ones, ones, teacher_eps=model.teacher_eps, z_f=z_f)
    assert mse(to_points((z0 + p1 + 1) / 2), ev.x_f) < 1e-10
    assert torch.equal(z1, z0 + p1)


def test_fidelity_control_learns_the_velocity_where_eq8_trains_it(trained, fidelity_control):
    """Where eq. 8 puts its samples (z_t, τ(t)) with small t, ε_S learns z_f − z0, so the Euler rule (one velocity
    ε_S(z0, τ(0))) moves towards E[z|y] for small t."""
    model, ev = fidelity_control, trained.ev
    with torch.no_grad():
        z0 = model.z0(ev.batch.x_lr, ev.noise)
        v = fidelity_teacher(trained.world, model.generator).condition(ev.batch.x_lr) - z0
        for t in (0.1, 0.2):
            eps = model.velocity(z0 + t * v, torch.full((len(z0),), t * 999.0))
            assert float(((eps - v) ** 2).mean() / (v**2).mean()) < 0.5
    d0 = _d_f(model, ev, 0.0)
    assert _d_f(model, ev, 0.2) < 0.8 * d0


def test_toy_stage2_terms_equal_the_lightning_module(trained, fidelity_control):
    """The toy's stage-2 loss is ControllabilityDistillation.stage2_terms': same loss for both objectives, every
    path, both teacher inputs and both t-samplers (the control rule: the model's)."""
    from ctsr.lit.stage2 import ControllabilityDistillation

    model, world = fidelity_control, trained.world
    trained_rule = model.rule
    ft = fidelity_teacher(world, model.generator)
    x_lr = draw_batch(world, 16, torch.Generator().manual_seed(6)).x_lr
    cases = [("endpoint", p, "z0", "order", tau_c) for p in ("fidelity", "noise", "denoise") for tau_c in (0.0, 30.0)]
    cases += [("eq8", p, ti, ts, 0.0) for p in ("fidelity", "noise", "denoise") for ti in ("z0", "path")
              for ts in ("order", "uniform")]
    for objective, path, teacher_input, t_sampler, tau_c in cases:
        model.rule = ControlRule(objective=objective, path=path, tau_max=200.0, tau_c=tau_c)
        opts = dict(teacher_input=teacher_input, t_sampler=t_sampler)
        duck = SimpleNamespace(hparams=SimpleNamespace(**opts), model=model, fidelity_teacher=ft,
                               generator=model.generator)
        model.teacher.rng.manual_seed(0)
        ref = ControllabilityDistillation.stage2_terms(duck, x_lr, torch.Generator().manual_seed(7))
        model.teacher.rng.manual_seed(0)
        got = toy_stage2_terms(model, ft, x_lr, torch.Generator().manual_seed(7), **opts)
        assert float(got["loss"].detach()) == pytest.approx(float(ref["loss"].detach()), rel=1e-6), (model.rule,
                                                                                                     opts)
    model.rule = trained_rule


def test_toy_stage2_calls_the_projects_stage2_terms(trained, monkeypatch):
    """Every training step of the toy's stage 2 goes through ctsr.losses.stage2.stage2_terms (no mirror that could
    drift), with the objective and path asked for."""
    import ctsr.losses.stage2 as s2

    calls, real = [], s2.stage2_terms

    def spy(model, x_lr, generator=None, **kw):
        calls.append(model.rule)
        return real(model, x_lr, generator, **kw)

    monkeypatch.setattr(s2, "stage2_terms", spy)
    stage2(trained.init, trained.world, ControlRule(path="denoise", tau_max=100.0), steps=3, batch=32)
    assert len(calls) == 3
    assert {(r.objective, r.path, r.tau_max) for r in calls} == {("endpoint", "denoise", 100.0)}


def test_endpoint_is_trained_where_the_toy_model_evaluates_it(trained):
    """Default objective: the (latent, timestep) pairs the student sees in a toy training step are the ones
    ControllableSR queries at inference (z0 and τ_c), for every t."""
    model, _ = stage2(trained.init, trained.world, ControlRule(tau_c=25.0), steps=0)
    ft = fidelity_teacher(trained.world, model.generator)
    x_lr = draw_batch(trained.world, 8, torch.Generator().manual_seed(8)).x_lr
    seen = []
    model.teacher.rng.manual_seed(3)
    toy_stage2_terms(model, ft, x_lr, torch.Generator().manual_seed(0),
                     record=lambda z, tau: seen.append((z.clone(), tau.clone())))
    asked = []
    velocity = model.velocity
    model.velocity = lambda z, tau: (asked.append((z.clone(), tau.clone())), velocity(z, tau))[1]
    model.teacher.rng.manual_seed(3)
    z0 = model.z0(x_lr)
    with torch.no_grad():
        for t in (0.3, 1.0):
            model.controlled_latent(z0, t)
    del model.velocity
    assert len(seen) == 1 and len(asked) == 2
    for z, tau in asked:
        assert torch.equal(z, seen[0][0]) and torch.equal(tau, seen[0][1])
        assert torch.all(tau == 25.0)


def test_endpoint_reaches_the_fidelity_end_better_than_eq8_with_the_old_rule(trained):
    """Quick budget, fidelity path: t = 1 of the default (endpoint) lands much nearer E[z|y] than eq. 8 evaluated
    with the old τ(t_{k+1}) rule at K = 1; and the endpoint's z(t) is linear in t (one velocity)."""
    ev = trained.ev
    endpoint, _ = stage2(trained.init, trained.world, ControlRule(), steps=120, batch=256, lr=1e-3)
    eq8, _ = stage2(trained.init, trained.world, ControlRule(objective="eq8"), steps=120, batch=256, lr=1e-3)
    eq8.tau_rule = "next"
    d0 = _d_f(endpoint, ev, 0.0)
    ratio_endpoint, ratio_eq8 = _d_f(endpoint, ev, 1.0) / d0, _d_f(eq8, ev, 1.0) / d0
    assert ratio_endpoint < 0.5 * ratio_eq8, (ratio_endpoint, ratio_eq8)
    assert ratio_endpoint < 0.3
    with torch.no_grad():
        z0 = endpoint.z0(ev.batch.x_lr, ev.noise)
        z_half, z_one = endpoint.controlled_latent(z0, 0.5), endpoint.controlled_latent(z0, 1.0)
    assert torch.allclose(z_half - z0, 0.5 * (z_one - z0), atol=1e-6)


def test_chord_families_start_at_their_base_and_the_knob_reaches_the_fidelity_end(trained):
    """The loss-conditional generator is the base generator for every t before training (zero-initialised control
    inputs); the LoRA-scale knob is T_S exactly at t = 0 and, trained at t = 1, lands nearer E[z|y] there."""
    ev = trained.ev
    base = ev.outputs(trained.init)
    cond = conditional_generator(trained.init)
    for t in (0.0, 0.7):
        set_control(cond, t)
        assert torch.allclose(ev.outputs(cond), base, atol=1e-6)
    knob = train_delta_knob(trained.init, trained.world, rank=2, steps=60, batch=256, lr=2e-3)
    set_delta_scale(knob, 0.0)
    assert torch.equal(ev.outputs(knob), base)
    set_delta_scale(knob, 1.0)
    assert mse(ev.outputs(knob), ev.x_f) < 0.5 * mse(base, ev.x_f)


def test_lab_writes_the_summary_with_every_variant_and_the_default(tmp_path):
    """A smoke-sized lab run: summary.json has per world each variant's df_ratio / mse_rising_steps /
    max_path_error, names the default, and the report has the new sections."""
    import json

    from ctsr.toy.lab import LabConfig, run_lab

    torch.set_num_threads(1)
    cfg = LabConfig.quick()
    run_lab(tmp_path, cfg, log=lambda *_: None)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["default"] == "fidelity/endpoint"
    world = summary["d2"]
    expected = {"fidelity/endpoint", "fidelity/eq8-next-K1", "fidelity/eq8-euler-K1", "fidelity/eq8-euler-K8",
                "denoise/eq8-next-K1", "denoise/eq8-euler-K1", "denoise/eq8-euler-K8"}
    expected |= {f"denoise/endpoint-tau{t:g}" for t in cfg.denoise_tau_sweep}
    assert expected <= set(world)
    for name in expected:
        v = world[name]
        assert set(v) == {"df_ratio", "mse_rising_steps", "max_path_error"}
        assert isinstance(v["mse_rising_steps"], int) and 0 <= v["mse_rising_steps"] <= 10
        assert v["df_ratio"] >= 0 and v["max_path_error"] >= 0
    assert world["_denoise_best"] in expected
    assert set(world["_chord"]) == {"loss-conditional", "lora-knob", "fidelity/endpoint"}
    assert world["_chord"]["fidelity/endpoint"]["best_d_ed"] > -1e-6      # z0 + t·v is on its own chord
    assert summary["target"]["d2"]["met"] in (True, False)
    report = (tmp_path / "report.md").read_text()
    assert "Beyond the chord" in report and "fidelity/endpoint" in report
    for f in ("chord.png", "stage2_d2_pretrained.png", "stage2_d2_stage1.png", "results.json"):
        assert (tmp_path / f).is_file()
