"""ResShift / SinSR (ctsr.models.resshift) against fixtures made with the official code (tests/fixtures/resshift)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ctsr.errors import ConfigError, MissingWeightsError
from ctsr.models import resshift
from ctsr.models.resshift import (
    RESSHIFT_V3, SINSR_V1, ResidualShiftSampler, ResShiftSR, ResShiftUNet, VQAutoencoderF4, eta_schedule,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURES = Path(__file__).parent / "fixtures" / "resshift"
CONFIG = json.loads((FIXTURES / "reduced_config.json").read_text())
SEEDS = CONFIG["seeds"]


def reduced_unet() -> ResShiftUNet:
    c = CONFIG["unet"]
    return ResShiftUNet(image_size=c["image_size"], model_channels=c["model_channels"],
                        channel_mult=c["channel_mult"], num_res_blocks=c["num_res_blocks"],
                        attention_resolutions=c["attention_resolutions"], num_head_channels=c["num_head_channels"],
                        swin_depth=c["swin_depth"], swin_embed_dim=c["swin_embed_dim"], window_size=c["window_size"],
                        mlp_ratio=c["mlp_ratio"]).eval()


def reduced_autoencoder() -> VQAutoencoderF4:
    c = CONFIG["autoencoder"]
    d = c["ddconfig"]
    return VQAutoencoderF4(ch=d["ch"], ch_mult=d["ch_mult"], num_res_blocks=d["num_res_blocks"],
                           attn_resolutions=d["attn_resolutions"], resolution=d["resolution"], z_channels=d["z_channels"],
                           embed_dim=c["embed_dim"], n_embed=c["n_embed"]).eval()


@pytest.fixture(scope="module")
def weights() -> dict[str, dict[str, torch.Tensor]]:
    raw = load_file(str(FIXTURES / "reduced_weights.safetensors"))
    out: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "autoencoder": {}}
    for key, value in raw.items():
        part, _, name = key.partition(".")
        out[part][name] = value.float() if value.is_floating_point() else value
    return out


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "reduced_io.safetensors"))


@pytest.fixture(scope="module")
def unet(weights) -> ResShiftUNet:
    net = reduced_unet()
    net.load_state_dict(weights["unet"], strict=True)
    return net


@pytest.fixture(scope="module")
def autoencoder(weights) -> VQAutoencoderF4:
    net = reduced_autoencoder()
    net.load_state_dict(weights["autoencoder"], strict=True)
    return net


def _layout(module: torch.nn.Module) -> dict[str, list]:
    return {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in module.state_dict().items()}


# -- the released configurations: names, shapes, dtypes, schedules ----------------------------------------------------
def test_released_networks_have_the_official_state_dict_layout():
    official = json.loads((FIXTURES / "released_keys.json").read_text())
    with torch.device("meta"):  # shapes only, no 170M random parameters
        unet, vae = ResShiftUNet(), VQAutoencoderF4()
    assert list(_layout(unet).items()) == list(official["resshift_v3_unet"].items())
    assert _layout(unet) == official["sinsr_v1_unet"]          # SinSR_v1.pth: the same network
    assert list(_layout(vae).items()) == list(official["autoencoder_vq_f4"].items())
    assert any(k.endswith("attn_mask") for k in official["resshift_v3_unet"])  # buffers are part of the match


def test_eta_schedules_are_the_official_ones():
    official = json.loads((FIXTURES / "released_keys.json").read_text())
    ours_v3 = eta_schedule(RESSHIFT_V3.steps, RESSHIFT_V3.min_noise_level, RESSHIFT_V3.etas_end, RESSHIFT_V3.kappa,
                           RESSHIFT_V3.power, RESSHIFT_V3.start_floor)
    ours_sinsr = eta_schedule(SINSR_V1.steps, SINSR_V1.min_noise_level, SINSR_V1.etas_end, SINSR_V1.kappa,
                              SINSR_V1.power, SINSR_V1.start_floor)
    np.testing.assert_array_equal(ours_v3, np.array(official["resshift_v3_sqrt_etas"]))
    np.testing.assert_array_equal(ours_sinsr, np.array(official["sinsr_v1_sqrt_etas"]))
    assert ours_v3[0] == pytest.approx(0.1) and ours_v3[-1] == pytest.approx(0.99)   # min_noise_level / κ … etas_end


def test_shifted_window_masks_equal_the_official_buffers(weights):
    fresh = reduced_unet().state_dict()
    masks = [k for k in fresh if k.endswith("attn_mask")]
    assert len(masks) == 4   # down and up stages of the two levels wider than the window; the coarsest is one window
    for key in masks + [k for k in fresh if k.endswith("relative_position_index")]:
        assert torch.equal(fresh[key], weights["unet"][key]), key


# -- reduced networks with random weights: the official outputs --------------------------------------------------------
@pytest.mark.parametrize("case", ["sq", "rect"])
def test_unet_reproduces_the_official_output(unet, io, case):
    # "sq" is the construction size, "rect" a non-square map twice as tall: the mask is recomputed for it
    with torch.no_grad():
        out = unet(io[f"unet_x_{case}"], io[f"unet_t_{case}"], lq=io[f"unet_lq_{case}"])
    torch.testing.assert_close(out, io[f"unet_out_{case}"], rtol=1e-5, atol=1e-5)
    if case == "rect":  # SinSR's copy of the official UNet, same weights: same output
        torch.testing.assert_close(out, io["sinsr_unet_out_rect"], rtol=1e-5, atol=1e-5)


def test_autoencoder_reproduces_the_official_encode_and_decode(autoencoder, io):
    with torch.no_grad():
        latent = autoencoder.encode(io["ae_image"])
        decoded = autoencoder.decode(io["ae_latent"])
    assert latent.shape == (2, 3, 8, 12)
    torch.testing.assert_close(latent, io["ae_latent"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(decoded, io["ae_decoded"], rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("schedule, key, seed", [(RESSHIFT_V3, "resshift_sample", SEEDS["resshift_noise"]),
                                                 (SINSR_V1, "sinsr_sample", SEEDS["sinsr_noise"])])
def test_full_sampling_run_reproduces_the_official_chain(unet, autoencoder, io, schedule, key, seed):
    sampler = ResidualShiftSampler(schedule)
    out = sampler.sample(unet, autoencoder, io["sample_lr"], torch.Generator().manual_seed(seed))
    assert out.shape == (2, 3, 64, 128)
    torch.testing.assert_close(out, io[key], rtol=1e-4, atol=5e-5)
    other = sampler.sample(unet, autoencoder, io["sample_lr"], torch.Generator().manual_seed(seed + 1))
    assert (other - io[key]).abs().max() > 1e-2   # the noise matters: a wrong seed/order would be caught


def test_sr_model_wraps_the_chain_like_the_official_sampler(unet, autoencoder, io):
    """[0,1] in/out, clamp of the official sample_func; no padding needed at a multiple of the network's size."""
    model = ResShiftSR(unet, autoencoder, ResidualShiftSampler(RESSHIFT_V3), seed=SEEDS["resshift_noise"],
                       pad_multiple=16)
    out = model((io["sample_lr"] + 1) / 2)
    torch.testing.assert_close(out, io["resshift_sample"].clamp(-1, 1) * 0.5 + 0.5, rtol=1e-4, atol=5e-5)
    odd = model(torch.rand(1, 3, 13, 21, generator=torch.Generator().manual_seed(0)))   # reflect-padded, cropped
    assert odd.shape == (1, 3, 52, 84) and odd.min() >= 0 and odd.max() <= 1
    tiny = model(torch.rand(1, 3, 5, 6, generator=torch.Generator().manual_seed(0)))    # too small to reflect
    assert tiny.shape == (1, 3, 20, 24)


def test_the_same_seed_gives_the_same_images(unet, autoencoder):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    a = ResShiftSR(unet, autoencoder, ResidualShiftSampler(RESSHIFT_V3), seed=5, pad_multiple=16)(x)
    b = ResShiftSR(unet, autoencoder, ResidualShiftSampler(RESSHIFT_V3), seed=5, pad_multiple=16)(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- files: strict loading, weights-only, missing files ----------------------------------------------------------------
def test_strict_loading_from_pth_and_safetensors(weights, tmp_path):
    pth = tmp_path / "net.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights["unet"].items()}}, pth)  # official wrappers
    loaded = resshift.load_state_dict(reduced_unet(), pth, "network")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in weights["unet"].items())
    st = tmp_path / "ae.safetensors"
    save_file({k: v.contiguous() for k, v in weights["autoencoder"].items()}, str(st))
    resshift.load_state_dict(reduced_autoencoder(), st, "autoencoder")

    missing = dict(weights["unet"])
    missing.pop(next(k for k in missing if k.endswith("attn_mask")))      # a buffer counts
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match=r"missing 1 \(e\.g\. .*attn_mask\)"):
        resshift.load_state_dict(reduced_unet(), tmp_path / "missing.pth", "network")
    torch.save(weights["unet"] | {"extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ConfigError, match=r"unexpected 1 \(e\.g\. extra\.weight\)"):
        resshift.load_state_dict(reduced_unet(), tmp_path / "extra.pth", "network")
    wider = ResShiftUNet(image_size=16, model_channels=64, channel_mult=(1, 1, 1), num_res_blocks=(2, 1, 1),
                         attention_resolutions=(16, 8, 4), num_head_channels=16, swin_embed_dim=32, window_size=4,
                         mlp_ratio=2)
    with pytest.raises(ConfigError, match="wrong shape"):
        resshift.load_state_dict(wider, pth, "network")


def test_a_pickle_that_is_not_weights_only_is_refused(tmp_path):
    path = tmp_path / "resshift_realsrx4_s4_v3.pth"
    torch.save({"weight": torch.zeros(1), "args": argparse.Namespace(lr=1.0)}, path)   # needs full unpickling
    with pytest.raises(ConfigError, match="weights-only") as err:
        resshift.read_checkpoint(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("spec, name, page", [
    ("resshift", "resshift_realsrx4_s4_v3.pth", "github.com/zsyOAOA/ResShift/releases"),
    ("sinsr", "SinSR_v1.pth", "github.com/wyf0912/SinSR/releases"),
])
def test_missing_weights_name_the_file_and_the_release(tmp_path, monkeypatch, spec, name, page):
    from ctsr.models.teachers import AnchoredTeacher

    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingWeightsError) as err:
        AnchoredTeacher(sr_model=spec)
    message = str(err.value)
    assert name in message and page in message and "\n" not in message
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / name).write_bytes(b"")   # the network is there, the autoencoder is not
    with pytest.raises(MissingWeightsError, match=r"autoencoder_vq_f4\.pth.*zsyOAOA/ResShift/releases"):
        AnchoredTeacher(sr_model=f"{spec}:weights/{name}")


def test_spec_strings():
    assert resshift.parse_spec("resshift") == ("resshift", None, None)
    assert resshift.parse_spec("SinSR:w/a.pth,w/vq.pth") == ("sinsr", "w/a.pth", "w/vq.pth")
    assert resshift.parse_spec("weights/realesrgan.pth") is None and resshift.parse_spec("bicubic") is None


# -- as a fidelity teacher ---------------------------------------------------------------------------------------------
def test_anchored_teacher_loads_a_resshift_spec_and_anchors_on_it(weights, tmp_path, monkeypatch):
    """``sr_model: resshift:PATH`` end to end (reduced networks stand in for the released sizes)."""
    from ctsr.models.teachers import AnchoredTeacher

    monkeypatch.setattr(resshift, "ResShiftUNet", reduced_unet)
    monkeypatch.setattr(resshift, "VQAutoencoderF4", reduced_autoencoder)
    torch.save(weights["unet"], tmp_path / "SinSR_v1.pth")
    torch.save(weights["autoencoder"], tmp_path / "autoencoder_vq_f4.pth")
    teacher = AnchoredTeacher(sr_model=f"sinsr:{tmp_path / 'SinSR_v1.pth'}")
    assert isinstance(teacher.sr_model, ResShiftSR) and teacher.sr_model.sampler.schedule is SINSR_V1
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    x_f = teacher.upscale(x)
    assert x_f.shape == (1, 3, 64, 64) and 0 <= x_f.min() and x_f.max() <= 1

    class Encoder(torch.nn.Module):   # stands in for the student's frozen SD VAE encoder (bind)
        def encode_base(self, img):
            return torch.nn.functional.avg_pool2d(img, 8)

    teacher.bind(Encoder())
    z_f = teacher.condition(x)
    assert z_f.shape == (1, 3, 8, 8)
    z_t, tau = torch.randn(1, 3, 8, 8), torch.tensor([500])
    eps = teacher.eps(z_t, tau, cond=z_f)
    torch.testing.assert_close(teacher.schedule.eps_from_x0(z_t, z_f, tau), eps)


# -- the paper's configuration -----------------------------------------------------------------------------------------
def _sr_model(path: str) -> str:
    import yaml

    root = Path(__file__).resolve().parents[1]
    return yaml.safe_load((root / path).read_text())["model"]["init_args"]["fidelity_teacher"]["init_args"]["sr_model"]


def test_stage1_uses_resshift_and_the_teacher_ablation_compares_it_with_sinsr():
    from ctsr.experiments.sweep import plan

    for path, variant in (("experiments/stage1.yaml", "resshift"), ("experiments/ablations/teacher_sinsr.yaml", "sinsr")):
        parsed = resshift.parse_spec(_sr_model(path))
        assert parsed is not None and parsed[0] == variant and Path(parsed[1]).name == resshift.RELEASES[variant][0]
    paper = {r.name: " ".join(r.argv) for r in plan("ablation-teacher", "paper", "runs")}
    assert set(paper) == {"resshift", "sinsr"}
    assert "teacher_sinsr.yaml" in paper["sinsr"] and "ablations/" not in paper["resshift"]
    tiny = {r.name: " ".join(r.argv) for r in plan("ablation-teacher", "tiny", "runs")}
    assert "teacher_bilinear.yaml" in tiny["sinsr"] and all("tiny_stage1.yaml" in v for v in tiny.values())
    assert _sr_model("experiments/tiny_stage1.yaml") == "bicubic"   # tiny: stand-ins, no weights needed


def test_the_typed_class_path_form_resolves_through_jsonargparse(weights, tmp_path, monkeypatch):
    from jsonargparse import ArgumentParser

    from ctsr.models.teachers import AnchoredTeacher

    monkeypatch.setattr(resshift, "ResShiftUNet", reduced_unet)
    monkeypatch.setattr(resshift, "VQAutoencoderF4", reduced_autoencoder)
    torch.save(weights["unet"], tmp_path / "net.pth")
    torch.save(weights["autoencoder"], tmp_path / "vq.pth")
    parser = ArgumentParser()
    parser.add_class_arguments(AnchoredTeacher, "teacher")
    spec = {"class_path": "ctsr.models.resshift.PretrainedResShift",
            "init_args": {"variant": "resshift", "weights": str(tmp_path / "net.pth"),
                          "autoencoder": str(tmp_path / "vq.pth"), "seed": 3}}
    teacher = parser.instantiate_classes(parser.parse_object({"teacher": {"sr_model": spec}}))["teacher"]
    assert isinstance(teacher.sr_model, resshift.PretrainedResShift)
    assert teacher.sr_model.sampler.schedule is RESSHIFT_V3


def test_a_bfloat16_copy_runs_and_stays_close(unet, autoencoder, io):
    import copy

    model = ResShiftSR(copy.deepcopy(unet), copy.deepcopy(autoencoder), ResidualShiftSampler(SINSR_V1), seed=1,
                       pad_multiple=16)
    full = model((io["sample_lr"][:1] + 1) / 2)
    model.to(torch.bfloat16)
    model.generator.manual_seed(1)   # the same noise as the first call
    low = model((io["sample_lr"][:1] + 1) / 2)
    assert low.dtype == torch.float32 and low.shape == full.shape
    assert (low - full).abs().mean() < 0.05
