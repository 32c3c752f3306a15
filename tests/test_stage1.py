"""Stage 1: each loss term against a hand computation, and what one optimiser step may and may not change."""
import pytest
import torch
import torch.nn.functional as F

from ctsr.errors import ConfigError
from ctsr.lit.stage1 import DualTeacherDistillation
from ctsr.models.generator import OneStepGenerator
from ctsr.models.teachers import AnchoredTeacher


@pytest.fixture()
def module():
    torch.manual_seed(0)
    m = DualTeacherDistillation(OneStepGenerator("tiny"), AnchoredTeacher("bicubic"), lpips_weights="random")
    with torch.no_grad():  # a student that differs from T_r, so every term is non-zero
        for n, p in m.generator.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    return m


def _batch(seed=0, b=2):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 8, 8, generator=g), torch.rand(b, 3, 32, 32, generator=g)


def test_each_term_equals_a_hand_computation(module):
    m = module.eval()  # eval: the LR latent is the mode, so the two passes below see the same ẑ0
    x_lr, x_gt = _batch()
    out = m.objective(m.generator, m.teachers(), x_lr, x_gt, torch.Generator().manual_seed(5))

    # Redo every step with plain tensor maths and the same random draws.
    g = torch.Generator().manual_seed(5)
    tau = torch.randint(20, 980, (2,), generator=g)
    noise = torch.randn(2, 4, 4, 4, generator=g)
    gen, sched = m.generator, m.objective.schedule
    with torch.no_grad():
        x_hat, z0_hat = gen(x_lr)
        z0 = gen.encode_base(x_gt * 2 - 1)
        a = sched.alphas_cumprod[tau].view(-1, 1, 1, 1)
        z_s = a.sqrt() * z0_hat + (1 - a).sqrt() * noise
        z = a.sqrt() * z0 + (1 - a).sqrt() * noise
        eps_s = gen.unet(z_s, tau.float(), encoder_hidden_states=gen.context.expand(2, -1, -1)).sample
        # T_f: anchored on the bicubic upscale, ε = (z − √ᾱ z_f)/√(1−ᾱ)
        up = F.interpolate(x_lr, scale_factor=4, mode="bicubic").clamp(0, 1)
        z_f = gen.encode_base(up * 2 - 1)
        ef_s, ef = (z_s - a.sqrt() * z_f) / (1 - a).sqrt(), (z - a.sqrt() * z_f) / (1 - a).sqrt()
        # T_r: the student's initial weights (zero LoRA-B) = the base UNet without adapters
        gen.unet.disable_adapters()
        er_s = gen.unet(z_s, tau.float(), encoder_hidden_states=gen.context.expand(2, -1, -1)).sample
        er = gen.unet(z, tau.float(), encoder_hidden_states=gen.context.expand(2, -1, -1)).sample
        gen.unet.enable_adapters()
        l2 = ((2 * x_hat - 1) - (2 * x_gt - 1)).pow(2).mean()
        lp = m.objective.perceptual(2 * x_hat - 1, 2 * x_gt - 1).mean()
        fl_match, fl_time = (ef_s - eps_s).pow(2).mean(), (ef_s - ef).pow(2).mean()
        rn_match, rn_time = (er_s - eps_s).pow(2).mean(), (er_s - er).pow(2).mean()
    expected = {
        "loss_l2": l2, "loss_lpips": lp, "loss_rec": l2 + 2 * lp,
        "loss_fl_match": fl_match, "loss_fl_time": fl_time, "loss_fl": fl_match + 5.5 * fl_time,
        "loss_rn_match": rn_match, "loss_rn_time": rn_time, "loss_rn": rn_match + 5.5 * rn_time,
        "loss": l2 + 2 * lp + 2 * (fl_match + 5.5 * fl_time) + 1 * (rn_match + 5.5 * rn_time),
    }
    for key, value in expected.items():
        assert torch.allclose(out[key].detach(), value, rtol=1e-4, atol=1e-6), key
        assert value.abs() > 0, key  # every term is exercised


def test_the_noise_is_shared_by_both_branches(module):
    calls = []
    original = module.objective.schedule.add_noise

    def spy(z0, noise, tau):
        calls.append((noise.detach().clone(), tau.clone()))
        return original(z0, noise, tau)

    module.objective.schedule.add_noise = spy
    x_lr, x_gt = _batch()
    module.objective(module.generator, module.teachers(), x_lr, x_gt, torch.Generator().manual_seed(0))
    assert len(calls) == 2
    assert torch.equal(calls[0][0], calls[1][0]) and torch.equal(calls[0][1], calls[1][1])
    assert calls[0][0].std() > 0.5  # real noise, not zeros


def test_one_step_changes_lora_only_and_no_gradient_reaches_a_teacher(module):
    m = module.train()
    opt = m.configure_optimizers()
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
    # LoRA weights and, as OSEDiff trains it, the UNet's conv_in
    assert frozen and lora and all("lora_" in n or ".unet.conv_in.base_layer." in n for n in lora)
    x_lr, x_gt = _batch()
    for step in range(2):
        opt.zero_grad()
        m.objective(m.generator, m.teachers(), x_lr, x_gt, torch.Generator().manual_seed(step))["loss"].backward()
        for n, p in m.named_parameters():
            if not p.requires_grad:
                assert p.grad is None, n
            else:
                assert p.grad is not None and p.grad.abs().sum() > 0, n  # every LoRA weight gets a gradient
        opt.step()
    for n, p in m.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n  # teachers and frozen base weights bit-identical
        else:
            assert not torch.equal(p, lora[n]), n


def test_gradient_flows_through_the_teacher_input():
    """The γ_time term depends on the student only through z_τ^s inside the teacher: it must have a gradient."""
    m = DualTeacherDistillation(
        OneStepGenerator("tiny"), AnchoredTeacher("bicubic"), lambda_l2=0, lambda_lp=0, lambda_rn=0,
        lambda_fl=1, lpips_weights="random",
    )
    x_lr, x_gt = _batch()
    out = m.objective(m.generator, m.teachers(), x_lr, x_gt, torch.Generator().manual_seed(0))
    out["loss_fl_time"].backward()
    grads = [p.grad for p in m.generator.trainable_parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


def test_checkpoint_holds_lora_only(module, tmp_path):
    ckpt = {"state_dict": module.state_dict()}
    full = sum(v.numel() for v in ckpt["state_dict"].values())
    module.on_save_checkpoint(ckpt)
    kept = ckpt["state_dict"]
    assert kept and all("lora_" in k or ".unet.conv_in.base_layer." in k for k in kept)  # + OSEDiff's conv_in
    assert any(".unet.conv_in.base_layer." in k for k in kept)
    assert sum(v.numel() for v in kept.values()) < full / 20
    module.on_load_checkpoint(ckpt)  # complete: loads
    del kept[next(iter(kept))]
    with pytest.raises(ConfigError, match="lacks 1 trainable"):
        module.on_load_checkpoint(ckpt)


def test_invalid_values_name_the_flag():
    gen = OneStepGenerator("tiny")
    with pytest.raises(ConfigError, match="tau_min/tau_max"):
        DualTeacherDistillation(gen, AnchoredTeacher("bicubic"), tau_min=500, tau_max=100, lpips_weights="random")
    with pytest.raises(ConfigError, match="gamma_time"):
        DualTeacherDistillation(gen, AnchoredTeacher("bicubic"), gamma_time=-1, lpips_weights="random")
    with pytest.raises(ConfigError, match="lora_rank"):
        OneStepGenerator("tiny", lora_rank=0)
