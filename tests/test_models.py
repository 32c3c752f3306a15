"""Generator, LoRA placement, real-weights loading paths (on tiny models written to disk), teachers."""
import pickle

import pytest
import torch
from peft import LoraConfig

from ctsr.errors import ConfigError, MissingWeightsError
from ctsr.models.generator import OneStepGenerator, pil_bicubic_resize
from ctsr.models.loading import load_osediff_lora, load_sd_components
from ctsr.models.teachers import AnchoredTeacher, UNetTeacher


def test_generator_shapes_and_range(tiny_generator):
    g = tiny_generator.eval()
    x_lr = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        x_hat, z0 = g(x_lr)
    assert x_hat.shape == (2, 3, 64, 96) and z0.shape == (2, 4, 8, 12)
    assert x_hat.min() >= 0 and x_hat.max() <= 1
    assert g.context.shape == (1, 77, 32)


def test_generator_follows_osediff_formula(tiny_generator):
    """ẑ0 = (z_L − √(1−ᾱ_999)·ε)/√ᾱ_999 with ε = UNet(z_L, 999, c), recomputed by hand."""
    g = tiny_generator.eval()
    x_lr = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        up = torch.nn.functional.interpolate(x_lr, scale_factor=4, mode="bicubic").clamp(0, 1)
        z_l = g.vae.encode(up * 2 - 1).latent_dist.mode() * 0.18215
        eps = g.unet(z_l, torch.tensor([999.0]), encoder_hidden_states=g.context).sample
        a = g.schedule.alphas_cumprod[999]
        expected = (z_l - (1 - a).sqrt() * eps) / a.sqrt()
        assert torch.allclose(g.latent(x_lr), expected, atol=1e-5)


def test_lora_only_where_osediff_puts_it(tiny_generator):
    g = tiny_generator
    trainable = {n for n, p in g.named_parameters() if p.requires_grad}
    # LoRA weights, plus the UNet's conv_in in full (OSEDiff's set_train: unet.conv_in.requires_grad_(True))
    assert trainable and all("lora_" in n or n.startswith("unet.conv_in.base_layer.") for n in trainable)
    assert any(n.startswith("unet.") for n in trainable)
    assert any(n.startswith("vae.encoder.") for n in trainable)
    assert any(n.startswith("vae.quant_conv") for n in trainable)
    assert not any(n.startswith(("vae.decoder", "vae.post_quant_conv")) for n in trainable)
    for suffix in ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv_in", "conv_out", "ff.net.2"):
        assert any(f".{suffix}.lora_A" in n for n in trainable if n.startswith("unet.")), suffix


def test_encode_base_ignores_the_encoder_lora(tiny_generator):
    g = tiny_generator.eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    before = g.encode_base(x)
    with torch.no_grad():
        for n, p in g.vae.named_parameters():
            if "lora_B" in n:
                p.fill_(0.5)
        assert not torch.allclose(g.encode(x), before)  # the LoRA encoder moved
    assert torch.equal(g.encode_base(x), before)       # the base encoder did not


def test_loads_a_saved_pretrained_folder(tmp_path):
    parts = load_sd_components("tiny", seed=3)
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        getattr(parts, name).save_pretrained(tmp_path / name)
    a = OneStepGenerator(pretrained=str(tmp_path)).eval()
    b = OneStepGenerator(pretrained="tiny", seed=3).eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(a(x)[0], b(x)[0], atol=1e-5)
    assert torch.allclose(a.context, b.context, atol=1e-6)


def test_missing_folder_and_hub_id_offline_name_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(MissingWeightsError, match="does-not-exist"):
        load_sd_components(str(tmp_path / "does-not-exist"))
    with pytest.raises(MissingWeightsError, match=r"stabilityai/stable-diffusion-2-1-base.*huggingface"):
        load_sd_components("stabilityai/stable-diffusion-2-1-base")


def _osediff_file(path, seed=0):
    """Write an OSEDiff-format .pkl (their save_model layout) for a tiny model; return the LoRA'd modules."""
    parts = load_sd_components("tiny")
    unet, vae = parts.unet, parts.vae
    enc = [n for n, _ in unet.named_modules() if n.startswith("down_blocks") and n.endswith(("to_q", "conv1"))]
    dec = [n for n, _ in unet.named_modules() if n.startswith("up_blocks") and n.endswith(("to_k", "conv2"))]
    oth = [n for n, _ in unet.named_modules() if n.startswith("mid_block") and n.endswith(("to_v", "conv1"))]
    vae_enc = [n for n, _ in vae.named_modules() if n.startswith("encoder") and n.endswith("conv1")]
    for name, targets in (("default_encoder", enc), ("default_decoder", dec), ("default_others", oth)):
        unet.add_adapter(LoraConfig(r=2, init_lora_weights="gaussian", target_modules=targets), adapter_name=name)
    vae.add_adapter(LoraConfig(r=2, init_lora_weights="gaussian", target_modules=vae_enc), adapter_name="default_encoder")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (unet, vae):
            for n, p in module.named_parameters():
                if "lora_B" in n or n.startswith("conv_in"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    unet.set_adapter(["default_encoder", "default_decoder", "default_others"])
    vae.set_adapter(["default_encoder"])
    sd = {
        "unet_lora_encoder_modules": enc, "unet_lora_decoder_modules": dec, "unet_lora_others_modules": oth,
        "vae_lora_encoder_modules": vae_enc, "rank_unet": 2, "rank_vae": 2,
        "state_dict_unet": {k: v for k, v in unet.state_dict().items() if "lora" in k or "conv_in" in k},
        "state_dict_vae": {k: v for k, v in vae.state_dict().items() if "lora" in k or "skip" in k},
    }
    torch.save(sd, path)
    return unet, vae


def test_osediff_pkl_is_merged_exactly(tmp_path):
    path = tmp_path / "osediff.pkl"
    ref_unet, ref_vae = _osediff_file(path)
    parts = load_sd_components("tiny")
    load_osediff_lora(parts.unet, parts.vae, path)
    assert not any("lora" in n for n, _ in parts.unet.named_parameters())  # merged, plain modules again
    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    x = torch.rand(1, 3, 32, 32, generator=g)
    with torch.no_grad():
        assert torch.allclose(parts.unet(z, 500, c).sample, ref_unet(z, 500, c).sample, atol=1e-5)
        assert torch.allclose(parts.vae.encode(x).latent_dist.mean, ref_vae.encode(x).latent_dist.mean, atol=1e-5)
    # …and differs from the base: the file did something
    base = load_sd_components("tiny").unet
    with torch.no_grad():
        assert not torch.allclose(base(z, 500, c).sample, ref_unet(z, 500, c).sample, atol=1e-4)
    # the generator takes the same file and adds its own fresh LoRA on top
    gen = OneStepGenerator(pretrained="tiny", osediff_lora=str(path))
    with torch.no_grad():
        assert torch.allclose(gen.eps(z, 500, c), ref_unet(z, 500, c).sample, atol=1e-5)


def test_osediff_file_errors(tmp_path):
    with pytest.raises(MissingWeightsError, match="nothere.pkl"):
        load_osediff_lora(None, None, tmp_path / "nothere.pkl")
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"rank_unet": print}, f)  # a pickle that names a callable: refused by weights_only
    with pytest.raises(MissingWeightsError, match="could not be read safely"):
        load_osediff_lora(None, None, evil)
    wrong = tmp_path / "wrong.pkl"
    torch.save({"foo": 1}, wrong)
    with pytest.raises(ConfigError, match="not an OSEDiff LoRA file"):
        load_osediff_lora(None, None, wrong)


def test_merge_and_remove_lora_keeps_the_function(tiny_generator):
    g = tiny_generator.eval()
    with torch.no_grad():
        for n, p in g.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    z, c = torch.randn(1, 4, 8, 8), g.context
    with torch.no_grad():
        before = g.unet(z, 10, c).sample
        teacher = UNetTeacher.frozen_copy(g.unet)
        assert torch.allclose(teacher.eps(z, torch.tensor([10]), c), before, atol=1e-5)
    assert not any("lora" in n for n, _ in teacher.named_parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert {id(p) for p in teacher.parameters()}.isdisjoint({id(p) for p in g.parameters()})


def test_anchored_teacher_is_the_exact_denoiser_of_its_anchor(tiny_generator):
    t = AnchoredTeacher("bicubic")
    t.bind(tiny_generator)
    x_lr = torch.rand(2, 3, 8, 8)
    z_f = t.condition(x_lr)
    assert torch.allclose(z_f, tiny_generator.encode_base(t.upscale(x_lr) * 2 - 1))
    z_t = torch.randn_like(z_f, requires_grad=True)
    tau = torch.tensor([100, 700])
    eps = t.eps(z_t, tau, None, z_f)
    assert torch.allclose(t.schedule.x0_from_eps(z_t, eps, tau), z_f, atol=1e-4)
    eps.sum().backward()  # gradient flows through the input
    assert z_t.grad is not None and z_t.grad.abs().sum() > 0


def test_unet_teacher_guidance_formula(tiny_generator):
    g = tiny_generator
    t = UNetTeacher(unet=load_sd_components("tiny").unet, guidance_scale=3.0, negative_prompt="blurry")
    t.bind(g)
    z = torch.randn(1, 4, 8, 8)
    tau = torch.tensor([300])
    with torch.no_grad():
        cond = t.unet(z, tau, encoder_hidden_states=g.context).sample
        unc = t.unet(z, tau, encoder_hidden_states=g.prompts.encode("blurry")).sample
        assert torch.allclose(t.eps(z, tau, g.context), unc + 3.0 * (cond - unc), atol=1e-5)


def test_sr_model_spec_errors(tmp_path):
    with pytest.raises(MissingWeightsError, match="resshift.pth"):
        AnchoredTeacher(str(tmp_path / "resshift.pth"))
    junk = tmp_path / "junk.pth"
    torch.save({"weight": torch.zeros(3)}, junk)
    with pytest.raises(ConfigError, match="spandrel cannot load"):
        AnchoredTeacher(str(junk))


def test_spandrel_checkpoint_is_a_fidelity_teacher(tmp_path):
    """A Real-ESRGAN-architecture checkpoint (random weights, written here) loads through spandrel."""
    from spandrel.architectures.ESRGAN import ESRGAN

    net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4)
    path = tmp_path / "esrgan_x4.pth"
    torch.save(net.state_dict(), path)
    t = AnchoredTeacher(str(path))
    x = torch.rand(1, 3, 8, 8)
    assert t.upscale(x).shape == (1, 3, 32, 32)
    assert all(not p.requires_grad for p in t.parameters())


# ---------------------------------------------------------------------------------------------------------------
# OSEDiff parity: LoRA scaling, conv_in, latent sampling, PIL's bicubic
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha, scale", [(None, 2.0), (4.0, 1.0), (2.0, 0.5)])
def test_fresh_lora_scaling_is_alpha_over_rank(alpha, scale):
    """OSEDiff leaves peft's lora_alpha = 8: at rank 4 a fresh adapter adds 2·B·A to the weight."""
    kwargs = {} if alpha is None else {"lora_alpha": alpha}
    g = OneStepGenerator("tiny", lora_rank=4, vae_lora_rank=4, seed=0, **kwargs)
    for model in (g.unet, g.vae):
        cfg = model.peft_config["ctsr"]
        assert cfg.r == 4 and cfg.lora_alpha == (8 if alpha is None else alpha)
    layer = g.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    assert layer.scaling["ctsr"] == scale
    with torch.no_grad():
        layer.lora_B["ctsr"].weight.normal_(0, 0.1)
        x = torch.randn(5, layer.in_features, generator=torch.Generator().manual_seed(0))
        delta = layer(x) - layer.get_base_layer()(x)
        a, b = layer.lora_A["ctsr"].weight, layer.lora_B["ctsr"].weight
        torch.testing.assert_close(delta, scale * x @ (b @ a).T, atol=1e-5, rtol=1e-5)
    conv = g.vae.get_submodule("encoder.conv_in")  # the VAE encoder's adapter has the same scale
    assert conv.scaling["ctsr"] == scale


@pytest.mark.parametrize("train_conv_in", [True, False])
def test_conv_in_trainable_per_option(train_conv_in):
    g = OneStepGenerator("tiny", train_conv_in=train_conv_in, seed=0)
    base = [p for n, p in g.named_parameters() if n.startswith("unet.conv_in.base_layer.")]
    assert len(base) == 2 and all(p.requires_grad == train_conv_in for p in base)
    assert not any(p.requires_grad for n, p in g.named_parameters()
                   if "lora_" not in n and not n.startswith("unet.conv_in."))  # fmt: skip
    assert g.config["train_conv_in"] is train_conv_in


def test_saved_configs_without_the_new_options_rebuild_as_trained():
    old = dict(pretrained="tiny", osediff_lora=None, lora_rank=2, vae_lora_rank=2, prompt="", latent_sampling="auto",
               seed=0)  # fmt: skip
    g = OneStepGenerator.from_config(old)
    assert g.unet.peft_config["ctsr"].lora_alpha == 2 and g.config["train_conv_in"] is False
    assert g.lr_upsample == "torch"
    assert OneStepGenerator.from_config(g.config).config == g.config


def test_latent_is_sampled_in_training_and_the_mode_in_eval(tiny_generator):
    g = tiny_generator
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        dist = g.vae.encode(x).latent_dist
        mode = dist.mode() * g.scaling_factor
        g.train()
        a, b = g.encode(x, torch.Generator().manual_seed(1)), g.encode(x, torch.Generator().manual_seed(2))
        assert not torch.allclose(a, b)  # a draw: OSEDiff_gen.forward's latent_dist.sample()
        expected = dist.sample(torch.Generator().manual_seed(1)) * g.scaling_factor
        torch.testing.assert_close(a, expected)
        g.eval()
        torch.testing.assert_close(g.encode(x, torch.Generator().manual_seed(1)), mode)
        torch.testing.assert_close(g.encode(x, sample=True, generator=torch.Generator().manual_seed(1)), expected)
    always = OneStepGenerator("tiny", latent_sampling="sample", seed=0).eval()  # OSEDiff_test.forward samples
    with torch.no_grad():
        assert not torch.allclose(always.encode(x, torch.Generator().manual_seed(3)), always.encode_base(x))


def test_pil_upsampling_equals_pillow_on_a_real_photo(sample_dir):
    """``lr_upsample: pil`` is PIL's Image.resize(BICUBIC) (OSEDiff's test_osediff.py), byte for byte; torch's
    bicubic (a = −0.75, edges repeated) differs by several levels."""
    import numpy as np
    from PIL import Image

    photo = Image.open(sample_dir / "train" / "astronaut.png").convert("RGB").crop((150, 40, 150 + 45, 40 + 31))
    expected = np.asarray(photo.resize((4 * 45, 4 * 31), Image.BICUBIC))
    x = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)[None].float() / 255
    ours = pil_bicubic_resize(x, (4 * 31, 4 * 45))
    assert torch.equal((ours * 255).round().byte()[0].permute(1, 2, 0), torch.from_numpy(expected.copy()))
    g = OneStepGenerator("tiny", lr_upsample="pil", seed=0)
    assert torch.equal(g.upsample(x), ours)
    by_torch = OneStepGenerator("tiny", seed=0).upsample(x)
    assert (by_torch - ours).abs().max() > 3 / 255
    down = np.asarray(photo.resize((20, 13), Image.BICUBIC))  # PIL's antialiased downscale too
    assert torch.equal((pil_bicubic_resize(x, (13, 20)) * 255).round().byte()[0].permute(1, 2, 0),
                       torch.from_numpy(down.copy()))  # fmt: skip
    with pytest.raises(ConfigError, match="lr_upsample"):
        OneStepGenerator("tiny", lr_upsample="cubic")


def test_a_stage1_checkpoint_carries_the_trained_conv_in():
    """With conv_in trained (OSEDiff), the LoRA-only checkpoint keeps its base weights and the model rebuilt from
    it (``model_from_checkpoint``: load, merge) computes what the trained generator computes."""
    from ctsr.models.export import model_from_checkpoint

    g = OneStepGenerator("tiny", seed=0).eval()
    with torch.no_grad():
        for n, p in g.named_parameters():
            if "lora_B" in n or n.startswith("unet.conv_in.base_layer."):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.05)
    state = {f"generator.{n}": p.detach().clone() for n, p in g.named_parameters() if p.requires_grad}
    assert "generator.unet.conv_in.base_layer.weight" in state
    model = model_from_checkpoint({"state_dict": state, "ctsr_generator_config": g.config})
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model.generator.latent(x), g.latent(x), atol=1e-4, rtol=1e-4)
        without = {k: v for k, v in state.items() if ".conv_in.base_layer." not in k}  # what a LoRA-only file kept
        other = model_from_checkpoint({"state_dict": without, "ctsr_generator_config": g.config})
        assert (other.generator.latent(x) - g.latent(x)).abs().max() > 1e-3
