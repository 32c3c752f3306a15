"""Issue "the t control": the student is trained where ``ControllableSR`` evaluates it, one velocity serves every t
(UNet-call counts), old files reproduce their outputs, and a tiny model of the real classes reaches the fidelity end
with ‖z(t) − z0‖ proportional to t."""
from pathlib import Path

import pytest
import torch

from ctsr.inference.upscale import Upscaler
from ctsr.lit.stage2 import ControllabilityDistillation
from ctsr.losses.stage2 import sample_t_pairs
from ctsr.models.control import ControllableSR
from ctsr.models.export import load_model
from ctsr.models.generator import OneStepGenerator
from ctsr.models.teachers import AnchoredTeacher

pytestmark = pytest.mark.usefixtures("one_thread")
FIXTURE = Path(__file__).parent / "fixtures" / "legacy_control"


def _module(**kw) -> ControllabilityDistillation:
    torch.manual_seed(0)
    kw.setdefault("control_rank", 4)
    return ControllabilityDistillation(OneStepGenerator("tiny"), None, AnchoredTeacher("bicubic"), **kw)


def _perturb_control(model: ControllableSR, std: float = 0.05) -> None:
    with torch.no_grad():
        for n, p in model.generator.unet.named_parameters():
            if "lora_B.control" in n:
                p.normal_(0, std, generator=torch.Generator().manual_seed(abs(hash(n)) % 2**31))


class UNetCalls:
    """Counts forward calls of every UNet given (the student's UNet and T_S's may be two modules in `upscale`)."""

    def __init__(self, *unets):
        self.n = 0
        self.hooks = [u.register_forward_pre_hook(self._hit) for u in unets if u is not None]

    def _hit(self, *_):
        self.n += 1

    def take(self) -> int:
        n, self.n = self.n, 0
        return n

    def close(self):
        for h in self.hooks:
            h.remove()


def _student_queries_in_inference(model: ControllableSR, z0: torch.Tensor, t: float) -> list:
    seen = []
    velocity = model.velocity
    model.velocity = lambda z, tau: (seen.append((z.clone(), tau.clone())), velocity(z, tau))[1]
    try:
        with torch.no_grad():
            model.controlled_latent(z0, t)
    finally:
        del model.velocity
    return seen


@pytest.mark.parametrize("tau_c", [0.0, 300.0])
def test_default_objective_trains_the_student_where_it_is_evaluated(tau_c):
    m = _module(tau_c=tau_c)
    assert m.hparams.objective == "endpoint" and m.model.objective == "endpoint"
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    trained = []
    m.stage2_terms(x, torch.Generator().manual_seed(1), record=lambda z, tau: trained.append((z.clone(), tau.clone())))
    with torch.no_grad():
        z0 = m.model.z0(x)
    for t in (0.3, 1.0):
        evaluated = _student_queries_in_inference(m.model, z0, t)
        assert len(trained) == len(evaluated) == 1
        (z_tr, tau_tr), (z_ev, tau_ev) = trained[0], evaluated[0]
        assert torch.equal(z_tr, z0) and torch.equal(z_ev, z0)                      # same latent: z0
        assert torch.equal(tau_tr, tau_ev) and bool((tau_ev == tau_c).all())          # same timestep: τ_c


def test_eq8_inference_queries_the_pairs_eq8_trains():
    """eq8 trains ε_S at (z_t, τ(t)) on the path; K Euler steps query (z_k, τ(t_k)) — the same pairs where z_k is
    on the path (exactly at k = 0: (z0, τ(0)))."""
    m = _module(objective="eq8", control_steps=4)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        z0 = m.model.z0(x)
    evaluated = _student_queries_in_inference(m.model, z0, 0.8)
    taus = [float(tau[0]) for _, tau in evaluated]
    assert taus == pytest.approx([0.0, 0.2 * 999, 0.4 * 999, 0.6 * 999])          # τ(t_k), t_k = k·t/K
    assert torch.equal(evaluated[0][0], z0)
    trained = []
    m.stage2_terms(x, torch.Generator().manual_seed(3), record=lambda z, tau: trained.append((z, tau)))
    t, _ = sample_t_pairs(2, torch.Generator().manual_seed(3))
    (z_tr, tau_tr), = trained
    assert torch.allclose(tau_tr, t * 999)                                          # τ(t) of the sampled t
    z_f = m.fidelity_teacher.condition(x)
    assert torch.allclose(z_tr, z0 + t.reshape(-1, 1, 1, 1) * (z_f - z0), atol=1e-6)  # z_t on the path


def test_t_sampler_uniform_covers_t_near_one():
    g = torch.Generator().manual_seed(0)
    order, _ = sample_t_pairs(40000, g, sampler="order")
    uniform, t2 = sample_t_pairs(40000, g, sampler="uniform")
    assert bool((uniform < t2).all()) and float(t2.max()) <= 1
    # density 2(1 − t) puts 1 % of the draws above 0.9; uniform puts 10 % there
    assert float((order > 0.9).float().mean()) == pytest.approx(0.01, abs=0.004)
    assert float((uniform > 0.9).float().mean()) == pytest.approx(0.10, abs=0.01)


def test_unet_passes_training_one_t_and_a_sweep():
    m = _module()
    model = m.model
    _perturb_control(model)
    x = torch.rand(2, 3, 8, 8)
    calls = UNetCalls(model.generator.unet)
    m.stage2_terms(x, torch.Generator().manual_seed(0))
    assert calls.take() == 2                          # z0 (T_S) + the student at (z0, τ_c)
    with torch.no_grad():
        model(x, 0.0)
        assert calls.take() == 1                      # t = 0: the stage-1 output only
        model(x, 0.5)
        assert calls.take() == 2
        outs = model.sweep(x, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
        assert calls.take() == 2                      # 6 values of t: z0 and v once, not 6 passes
        singles = [model(x, t) for t in (0.2, 1.0)]
        calls.take()
    assert torch.allclose(outs[1], singles[0], atol=1e-5) and torch.allclose(outs[5], singles[1], atol=1e-5)
    assert not torch.allclose(outs[0], outs[5], atol=1e-3)
    # a model whose velocity depends on t pays one pass per t > 0 (the endpoint objective on a curved path)
    model.path = "denoise"
    with torch.no_grad():
        model.sweep(x, [0.0, 0.5, 1.0])
    assert calls.take() == 1 + 2
    calls.close()


def test_t_sweep_callback_computes_the_velocity_once():
    from ctsr.callbacks.t_sweep import sweep_images

    m = _module()
    _perturb_control(m.model)
    calls = UNetCalls(m.model.generator.unet)
    outs = sweep_images(m, torch.rand(2, 3, 8, 8), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], color="adain")
    assert calls.take() == 2 and len(outs) == 6      # the callback's batch: 6 values of t, 2 UNet passes
    calls.close()


def test_upscale_computes_the_velocity_once(tmp_path):
    m = _module()
    _perturb_control(m.model)
    path = m.model.export(tmp_path / "m.safetensors")
    up = Upscaler(load_model(path), device="cpu", tile=0, tile_overlap=0, vae_tile=0, vae_overlap=0, color="none")
    calls = UNetCalls(up.teacher_unet, up.student_unet)
    x = torch.rand(1, 3, 16, 16)
    outs = up(x, [0, 0.25, 0.5, 0.75, 1])
    assert calls.take() == 2
    up(x, [0])
    assert calls.take() == 1                          # t = 0 alone: the stage-1 pass only, no velocity
    state = up.prepare(x)
    assert calls.take() == 2 and state.velocity is not None
    again = up.render(state, 0.75)
    assert calls.take() == 0                          # a slider move is a decode
    assert torch.allclose(again, outs[3], atol=1e-6)
    calls.close()


def test_export_records_the_objective_and_old_files_reproduce_their_outputs(tmp_path):
    m = _module(tau_c=100.0)
    path = m.model.export(tmp_path / "new.safetensors")
    loaded = ControllableSR.load(path)
    assert (loaded.objective, loaded.path, loaded.tau_c, loaded.tau_rule) == ("endpoint", "fidelity", 100.0, "euler")
    assert loaded.selected_t is None
    loaded.selected_t, loaded.selected_t_record = 0.4, {"t": 0.4, "rule": "psnr-drop", "split": "val"}
    again = ControllableSR.load(loaded.export(tmp_path / "again.safetensors"))   # a re-export keeps the selection
    assert again.selected_t == 0.4 and again.selected_t_record["rule"] == "psnr-drop"
    old = ControllableSR.load(FIXTURE / "ctsr-v1-k2.safetensors")  # exported by the code before this change
    assert (old.objective, old.tau_rule, old.control_steps, old.tau_max) == ("eq8", "next", 2, 500.0)
    expected = torch.load(FIXTURE / "expected.pt", weights_only=True)
    with torch.no_grad():
        for t, out in expected["out"].items():
            assert torch.allclose(old(expected["x"], t), out, atol=1e-5), t
        old.tau_rule = "euler"  # the fixture can tell the two rules apart
        assert not torch.allclose(old(expected["x"], 1.0), expected["out"][1.0], atol=1e-4)


def test_tiny_model_reaches_the_fidelity_end_linearly():
    """Item 7: overfit 2 images with the default objective; ‖z(1) − z_f‖ / ‖z0 − z_f‖ < 0.05 and ‖z(t) − z0‖ ∝ t."""
    m = _module(control_rank=8)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        opt.zero_grad()
        m.stage2_terms(x, g)["loss"].backward()
        opt.step()
    with torch.no_grad():
        z0, z_f = m.model.z0(x), m.fidelity_teacher.condition(x)
        z1 = m.model.controlled_latent(z0, 1.0)
        ratio = float((z1 - z_f).norm() / (z0 - z_f).norm())
        assert ratio < 0.05, ratio
        d1 = float((z1 - z0).norm())
        for t in (0.25, 0.5, 0.75):
            d = float((m.model.controlled_latent(z0, t) - z0).norm())
            assert d == pytest.approx(t * d1, rel=0.05), t


def test_stage2_refuses_a_generator_that_differs_from_the_stage1_run():
    from ctsr.errors import ConfigError
    from ctsr.lit.stage2 import check_stage1_fits

    gen = OneStepGenerator("tiny").config
    check_stage1_fits(dict(gen), gen, "s1.ckpt")                                   # the same settings: fine
    old = {k: v for k, v in gen.items() if k not in ("lora_alpha", "train_conv_in")}  # written before the options
    with pytest.raises(ConfigError, match=r"model\.generator: .*s1\.ckpt.*lora_alpha=4\.0, train_conv_in=False"):
        check_stage1_fits(old, gen, "s1.ckpt")
    check_stage1_fits(old, {**gen, "lora_alpha": 4.0, "train_conv_in": False}, "s1.ckpt")


def test_stage2_takes_the_stage1_conv_in_along_with_the_lora(tmp_path):
    """OSEDiff trains conv_in in full (train_conv_in): T_S must be built with the trained conv_in, not the base one."""
    from ctsr.models.control import read_stage1_lora

    gen = OneStepGenerator("tiny")
    trained = {f"generator.{n}": p.detach().clone() + 0.01 for n, p in gen.named_parameters() if p.requires_grad}
    assert any(".conv_in.base_layer." in k for k in trained)
    torch.save({"state_dict": trained, "ctsr_generator_config": gen.config}, tmp_path / "s1.ckpt")
    weights, config = read_stage1_lora(tmp_path / "s1.ckpt")
    assert set(weights) == {k[len("generator."):] for k in trained} and config == gen.config
    with_conv_in = ControllableSR.from_stage1(OneStepGenerator("tiny"), weights)
    lora_only = ControllableSR.from_stage1(OneStepGenerator("tiny"),
                                           {k: v for k, v in weights.items() if "lora_" in k})
    # T_S = merged stage-1 weights: the same LoRA on top, so the difference is the trained conv_in's own (+0.01)
    diff = (with_conv_in.generator.unet.conv_in.base_layer.weight
            - lora_only.generator.unet.conv_in.base_layer.weight)
    assert torch.allclose(diff, torch.full_like(diff, 0.01), atol=1e-6)
