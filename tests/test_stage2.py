"""Stage 2: eq. 8 for every path and teacher input against a hand computation; T_S stays frozen; the control
learns the fidelity path; the controllable model's rules (t range, passes per t, export/import)."""
import pytest
import torch

from ctsr.diffusion.schedule import NoiseSchedule
from ctsr.errors import ConfigError
from ctsr.lit.stage2 import ControllabilityDistillation
from ctsr.losses.stage2 import control_loss, control_targets, sample_t_pairs
from ctsr.models.control import ControllableSR
from ctsr.models.generator import OneStepGenerator
from ctsr.models.teachers import AnchoredTeacher


def _toy_eps(z, tau):  # a fixed non-linear "teacher" ε, enough to tell the formulas apart
    return torch.tanh(z) * (1 + tau.reshape(-1, 1, 1, 1) / 999)


@pytest.mark.parametrize("path", ["fidelity", "noise", "denoise"])
@pytest.mark.parametrize("teacher_input", ["z0", "path"])
def test_eq8_equals_a_hand_computation(path, teacher_input):
    g = torch.Generator().manual_seed(0)
    z0, z_f, eps_s = (torch.randn(3, 4, 4, 4, generator=g) for _ in range(3))
    t, t2 = torch.tensor([0.1, 0.4, 0.7]), torch.tensor([0.3, 0.9, 0.75])
    s = NoiseSchedule()
    p_t, p_t2, z_t = control_targets(path, z0, t, t2, teacher_input, teacher_eps=_toy_eps, z_f=z_f, schedule=s)
    loss = control_loss(p_t, p_t2, eps_s, t2 - t)

    expected_terms = []
    for i in range(3):
        a, b = float(t[i]), float(t2[i])
        z = z0[i : i + 1]

        def offset(tt, z_in):
            tau = torch.tensor([tt * 999.0])
            e = _toy_eps(z_in, tau)
            if path == "fidelity":
                return tt * (z_f[i : i + 1] - z)
            if path == "noise":
                return tt * e
            ab = float(s.alpha_bar(tau).flatten())  # x̂0 = (z − √(1−ᾱ)ε)/√ᾱ
            return (z_in - (1 - ab) ** 0.5 * e) / ab**0.5 - z

        pa, pb = offset(a, z), offset(b, z)
        z_a = z + pa
        if teacher_input == "path" and path != "fidelity":
            pa, pb = offset(a, z + pa), offset(b, z + pb)
        assert torch.allclose(z_t[i : i + 1], z_a, atol=1e-6)
        expected_terms.append((pa - pb + (b - a) * eps_s[i : i + 1]).pow(2))
    expected = torch.cat(expected_terms).mean()
    assert torch.allclose(loss, expected, rtol=1e-5), (float(loss), float(expected))


def test_t_pairs_are_ordered_and_uniform():
    t, t2 = sample_t_pairs(20000, torch.Generator().manual_seed(0))
    assert bool((t < t2).all()) and float(t.min()) >= 0 and float(t2.max()) <= 1
    # min and max of two uniforms: means 1/3 and 2/3
    assert abs(float(t.mean()) - 1 / 3) < 0.01 and abs(float(t2.mean()) - 2 / 3) < 0.01


@pytest.fixture()
def stage2():
    torch.manual_seed(0)
    return ControllabilityDistillation(OneStepGenerator("tiny"), None, AnchoredTeacher("bicubic"), control_rank=8)


def _fixed_loss(m, x):
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return float(torch.stack([m.stage2_terms(x, g)["loss"] for _ in range(8)]).mean())


def test_fidelity_path_is_learned_and_ts_stays_frozen(stage2):
    m = stage2
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    assert all("control" in n for n, p in m.named_parameters() if p.requires_grad)
    before = _fixed_loss(m, x)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 60)
    g = torch.Generator().manual_seed(1)
    for _ in range(60):
        opt.zero_grad()
        m.stage2_terms(x, g)["loss"].backward()
        opt.step()
        sched.step()
    after = _fixed_loss(m, x)
    assert after < before / 10, (before, after)
    for n, p in m.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n  # T_S (and the VAE, the teacher) bit-identical
    m.eval()
    with torch.no_grad():
        z0, z_f = m.model.z0(x), m.fidelity_teacher.condition(x)
        dist = [float((m.model.controlled_latent(z0, t) - z_f).pow(2).mean()) for t in (0, 0.25, 0.5, 0.75, 1)]
    assert dist[-1] < dist[0]
    assert all(a > b for a, b in zip(dist, dist[1:])), dist


def test_passes_per_t_and_t_range(stage2):
    model = stage2.model.eval()
    calls = []
    hook = model.generator.unet.register_forward_hook(lambda *a: calls.append(1))
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        model(x, 0.0)
        assert len(calls) == 1  # t = 0: the stage-1 pass only
        calls.clear()
        model(x, 0.5)
        assert len(calls) == 2
        calls.clear()
        mixed = model(x, torch.tensor([0.0, 1.0]))
        assert torch.allclose(mixed[0], model(x[:1], 0.0)[0], atol=1e-5)  # per-sample t; t = 0 stays stage 1
    hook.remove()
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
            model(x, bad)


def test_each_objective_is_evaluated_by_its_own_rule(stage2):
    """endpoint/fidelity: z0 + t·ε_S(z0, τ_c); endpoint/curved: z0 + t·ε_S(z0, τ(t)); eq8: Euler steps at τ(t_k)
    (and the old files' τ(t_{k+1}) rule when asked)."""
    model = stage2.model.eval()
    with torch.no_grad():
        for n, p in model.generator.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
        z0 = model.z0(torch.rand(1, 3, 8, 8))
        t, v = 0.6, model.velocity
        tau = lambda x: torch.tensor([float(x)])
        assert (model.objective, model.path, model.tau_c) == ("endpoint", "fidelity", 0.0)
        assert torch.allclose(model.controlled_latent(z0, t), z0 + t * v(z0, tau(0.0)), atol=1e-5)
        model.tau_c = 250.0
        assert torch.allclose(model.controlled_latent(z0, t), z0 + t * v(z0, tau(250)), atol=1e-5)
        model.path = "denoise"
        assert not model.constant_velocity
        assert torch.allclose(model.controlled_latent(z0, t), z0 + t * v(z0, tau(t * 999)), atol=1e-5)
        model.objective, model.control_steps = "eq8", 2
        half = z0 + 0.3 * v(z0, tau(0.0))
        two = half + 0.3 * v(half, tau(0.3 * 999))
        assert torch.allclose(model.controlled_latent(z0, t), two, atol=1e-5)
        model.tau_rule = "next"
        half = z0 + 0.3 * v(z0, tau(0.3 * 999))
        two = half + 0.3 * v(half, tau(0.6 * 999))
        assert torch.allclose(model.controlled_latent(z0, t), two, atol=1e-5)
        model.control_steps, model.tau_rule = 1, "euler"
        assert model.constant_velocity  # eq8 with one Euler step reads ε_S at τ(0) whatever t
        assert torch.allclose(model.controlled_latent(z0, t), z0 + t * v(z0, tau(0.0)), atol=1e-5)


def test_export_and_load_without_lightning(stage2, tmp_path):
    model = stage2.model.eval()
    with torch.no_grad():
        for n, p in model.generator.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.stage1_lora = {"vae.encoder.conv_in.lora_A.ctsr.weight": torch.zeros(1)}  # replaced below
    # a realistic stage-1 LoRA: the tiny generator's own adapter weights, non-zero
    fresh = OneStepGenerator("tiny")
    with torch.no_grad():
        for n, p in fresh.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    stage1 = {n: p.detach().clone() for n, p in fresh.named_parameters() if p.requires_grad}
    built = ControllableSR.from_stage1(fresh, stage1, control_rank=8)
    with torch.no_grad():
        for n, p in built.generator.unet.named_parameters():
            if "lora_B.control" in n:
                p.normal_(0, 0.05)
    path = built.export(tmp_path / "ctsr.safetensors")
    loaded = ControllableSR.load(path)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        for t in (0.0, 0.7):
            assert torch.allclose(loaded(x, t), built.eval()(x, t), atol=1e-5)
    assert path.stat().st_size < 2e6


def test_stage2_config_errors():
    gen = OneStepGenerator("tiny")
    with pytest.raises(ConfigError, match="fidelity_teacher"):
        ControllabilityDistillation(gen, None, None, path="fidelity")
    with pytest.raises(ConfigError, match="model.path"):
        ControllabilityDistillation(gen, None, None, path="sideways")
    with pytest.raises(ConfigError, match=r"model\.tau_max: must lie in \(0, 999\]"):
        ControllabilityDistillation(gen, None, AnchoredTeacher("bicubic"), tau_max=0.0)
    with pytest.raises(ConfigError, match="model.control_steps"):
        ControllabilityDistillation(gen, None, AnchoredTeacher("bicubic"), control_steps=0)


def test_the_control_rule_is_one_validated_dataclass(stage2):
    """The LightningModule's options become the model's ControlRule (stored as it is in checkpoints); the rule is
    validated on every change, the model's attributes included; old stored configs read as eq8 with the old rule."""
    from dataclasses import FrozenInstanceError

    from ctsr.diffusion.control_rule import ControlRule

    rule = stage2.model.rule
    assert rule == ControlRule() and stage2.hparams.tau_max == rule.tau_max == 999.0
    checkpoint = {"state_dict": {}}
    stage2.on_save_checkpoint(checkpoint)
    assert ControlRule.from_stored(checkpoint["ctsr_control"]) == rule
    with pytest.raises(FrozenInstanceError):
        rule.tau_c = 5.0
    for bad in (dict(tau_c=-1.0), dict(tau_max=float("nan")), dict(path="sideways"), dict(objective="eq9"),
                dict(tau_rule="last"), dict(control_steps=0)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            ControlRule(**bad)
    with pytest.raises(ConfigError, match="control_steps"):
        stage2.model.control_steps = 0  # a model attribute is the rule's option: validated too
    assert stage2.model.rule is rule
    stage2.model.tau_c = 20
    assert stage2.model.rule == rule.replace(tau_c=20.0) and isinstance(stage2.model.rule.tau_c, float)
    old = ControlRule.from_stored({"rank": 4, "tau_max": 500.0, "control_steps": 2})
    assert (old.objective, old.tau_rule, old.control_steps, old.tau_max) == ("eq8", "next", 2, 500.0)
    assert ControlRule.from_stored(rule.to_dict(), control_steps=3).control_steps == 3
