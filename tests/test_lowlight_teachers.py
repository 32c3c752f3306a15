"""GSAD and Reti-Diff (ctsr.models.gsad / ctsr.models.retidiff), Table 9's teachers, against fixtures made with
the official code (tests/fixtures/gsad, tests/fixtures/retidiff; README in each)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ctsr.errors import ConfigError, MissingWeightsError
from ctsr.models import gsad, retidiff
from ctsr.models.gsad import BetaSchedule, GSADDiffusion, GSADEnhancer, GSADUNet

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURES = Path(__file__).parent / "fixtures"


def ternary_state(path: Path) -> dict[str, torch.Tensor]:
    """The fixtures' parameters: offset + scale·code (float32, the make_fixtures scripts' very expression)."""
    raw = np.load(path, allow_pickle=False)
    names = sorted({k.rpartition("|")[0] for k in raw.files})
    return {n: torch.from_numpy(raw[f"{n}|offset"]) + torch.from_numpy(raw[f"{n}|scale"])
            * torch.from_numpy(raw[f"{n}|codes"]).float() for n in names}


def _layout(module: torch.nn.Module) -> dict[str, list]:
    return {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in module.state_dict().items()}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# == GSAD =============================================================================================================
G_FIX = FIXTURES / "gsad"
G_CONFIG = json.loads((G_FIX / "reduced_config.json").read_text())


def reduced_gsad() -> GSADDiffusion:
    c = G_CONFIG["unet"]
    unet = GSADUNet(in_channel=c["in_channel"], out_channel=c["out_channel"], inner_channel=c["inner_channel"],
                    norm_groups=c["norm_groups"], channel_mults=c["channel_multiplier"], attn_res=c["attn_res"],
                    res_blocks=c["res_blocks"], dropout=c["dropout"], image_size=G_CONFIG["image_size"])
    return GSADDiffusion(unet, sampling=BetaSchedule(**G_CONFIG["val"])).eval()


@pytest.fixture(scope="module")
def g_io() -> dict[str, torch.Tensor]:
    return load_file(str(G_FIX / "reduced_io.safetensors"))


@pytest.fixture(scope="module")
def g_params() -> dict[str, torch.Tensor]:
    return ternary_state(G_FIX / "reduced_weights.npz")


@pytest.fixture(scope="module")
def g_model(g_params) -> GSADDiffusion:
    model = reduced_gsad()
    # the parameters only: the schedule buffers are recomputed (and compared below)
    missing, unexpected = model.load_state_dict(g_params, strict=False)
    assert not unexpected and all(k in gsad.diffusion.BUFFERS for k in missing)
    return model


def test_gsad_released_network_has_the_official_state_dict_layout():
    official = json.loads((G_FIX / "released_keys.json").read_text())
    with torch.device("meta"):
        model = GSADDiffusion()
    assert list(_layout(model).items()) == list(official["gaussian_diffusion"].items())
    assert sum(p.numel() for p in model.parameters()) == official["parameters"]


def test_gsad_test_schedule_is_the_official_one():
    official = json.loads((G_FIX / "released_keys.json").read_text())["val_schedule"]
    ours = GSADDiffusion(GSADUNet(inner_channel=8, norm_groups=4, channel_mults=(1,), res_blocks=1),
                         schedule=gsad.LOLV2_SYN_TEST)
    for name, values in official.items():
        np.testing.assert_array_equal(getattr(ours, name).numpy(), np.array(values, dtype=np.float32), name)


@pytest.mark.parametrize("case", ["sq", "rect"])
def test_gsad_unet_reproduces_the_official_output(g_model, g_io, case):
    with torch.no_grad():
        eps, var = g_model.denoise_fn(g_io[f"unet_in_{case}"], g_io[f"unet_level_{case}"], with_variance=True)
        eps_only = g_model.denoise_fn(g_io[f"unet_in_{case}"], g_io[f"unet_level_{case}"].reshape(-1))
    assert max_diff(eps, g_io[f"unet_eps_{case}"]) <= 1e-5
    assert max_diff(var, g_io[f"unet_var_{case}"]) <= 1e-5
    assert torch.equal(eps_only, eps)   # (B,) and (B, 1) noise levels alike


def test_gsad_sampling_chain_reproduces_the_official_one(g_model, g_io):
    seed = G_CONFIG["seeds"]["noise"]
    out = g_model.sample(g_io["sample_low"], torch.Generator().manual_seed(seed))
    assert out.shape == g_io["sample_out"].shape == (1, 3, 16, 24)
    assert max_diff(out, g_io["sample_out"]) <= 1e-5
    other = g_model.sample(g_io["sample_low"], torch.Generator().manual_seed(seed + 1))
    assert max_diff(other, g_io["sample_out"]) > 1e-2   # the noise matters: a wrong order would be caught


def test_gsad_enhancer_is_the_chain_in_image_range(g_model, g_io):
    seed = G_CONFIG["seeds"]["noise"]
    enhancer = GSADEnhancer(g_model, seed=seed)
    out = enhancer((g_io["sample_low"] + 1) / 2)
    assert max_diff(out, g_io["sample_out"].clamp(-1, 1) * 0.5 + 0.5) <= 1e-5
    odd = enhancer(torch.rand(2, 3, 13, 18, generator=torch.Generator().manual_seed(0)))  # padded, cropped, batched
    assert odd.shape == (2, 3, 13, 18) and 0 <= odd.min() and odd.max() <= 1
    assert enhancer(torch.rand(1, 3, 2, 3)).shape == (1, 3, 2, 3)   # too small to reflect: replicated


def test_gsad_release_file_loads_strictly(g_model, tmp_path):
    state = g_model.state_dict()
    full = tmp_path / "lolv2_syn_gen.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, full)      # model.py's DataParallel fallback names
    model = gsad.load_diffusion(full, model=reduced_gsad())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    net_only = tmp_path / "net_only.pth"
    torch.save({k: v for k, v in state.items() if k.startswith("denoise_fn.")}, net_only)   # buffers may be absent
    gsad.load_diffusion(net_only, model=reduced_gsad())
    torch.save({k: v for k, v in state.items() if not k.endswith("var_conv.0.weight")}, tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match=r"missing 1 \(e\.g\. denoise_fn\.var_conv\.0\.weight\)"):
        gsad.load_diffusion(tmp_path / "missing.pth", model=reduced_gsad())
    torch.save(state | {"extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ConfigError, match=r"unexpected 1 \(e\.g\. extra\.weight\)"):
        gsad.load_diffusion(tmp_path / "extra.pth", model=reduced_gsad())
    with pytest.raises(ConfigError, match="wrong shape"):
        gsad.load_diffusion(full)   # the reduced file into the released network


def test_gsad_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "lolv2_syn_gen.pth"
    torch.save({"w": torch.zeros(1), "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(ConfigError, match="weights-only") as err:
        gsad.load_pretrained(path)
    assert "\n" not in str(err.value)


# == Reti-Diff ========================================================================================================
R_FIX = FIXTURES / "retidiff"
R_CONFIG = json.loads((R_FIX / "reduced_config.json").read_text())


@pytest.fixture(scope="module")
def r_io() -> dict[str, torch.Tensor]:
    return load_file(str(R_FIX / "reduced_io.safetensors"))


@pytest.fixture(scope="module")
def r_params() -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {"net": {}, "decom": {}}
    for key, value in ternary_state(R_FIX / "reduced_weights.npz").items():
        part, _, name = key.partition(".")
        out[part][name] = value
    return out


def _load_params(module: torch.nn.Module, params: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Parameters only (each shared tensor listed once, as named_parameters lists it)."""
    assert sorted(n for n, _ in module.named_parameters()) == sorted(params)
    _, unexpected = module.load_state_dict(params, strict=False)
    assert not unexpected
    return module.eval()


@pytest.fixture(scope="module")
def r_net(r_params) -> retidiff.RetiDiffNet:
    return _load_params(retidiff.RetiDiffNet(**R_CONFIG["net"]), r_params["net"])


@pytest.fixture(scope="module")
def r_decom(r_params) -> retidiff.RetinexDecomposition:
    return _load_params(retidiff.RetinexDecomposition(), r_params["decom"])


def test_retidiff_released_network_has_the_official_state_dict_layout():
    official = json.loads((R_FIX / "released_keys.json").read_text())
    with torch.device("meta"):
        net = retidiff.RetiDiffNet()
    assert list(_layout(net).items()) == list(official["retidiff_s2_interface"].items())
    assert sum(p.numel() for p in net.parameters()) == official["parameters"]["retidiff_s2_interface"]
    assert round(official["parameters"]["retidiff_s2_interface"] / 1e6, 2) == 26.11   # the paper's Table 9
    # the release was trained as RetiDiffS2: the same names plus the training-only head the test drops
    extra = set(official["retidiff_s2"]) - set(official["retidiff_s2_interface"])
    assert extra and all(k.startswith(retidiff.TRAINING_ONLY) for k in extra)
    assert set(official["retidiff_s2_interface"]) <= set(official["retidiff_s2"])
    assert _layout(retidiff.RetinexDecomposition()) == official["retinex_decomnet"] == official["decom_layout"]


def test_retidiff_decomposition_reproduces_the_official_one(r_decom, r_io):
    with torch.no_grad():
        r, l_ = r_decom(r_io["decom_in"])
    assert max(max_diff(r, r_io["decom_R"]), max_diff(l_, r_io["decom_L"])) <= 1e-5


@pytest.mark.parametrize("kind, source", [("rex", "prior_retinex"), ("img", "prior_img")])
def test_retidiff_latent_diffusions_reproduce_the_official_priors(r_net, r_io, kind, source):
    with torch.no_grad():
        prior = getattr(r_net, f"{kind}_diffusion").sample(r_io[source], r_io[f"prior_{kind}_x_T"])
    assert prior.shape == (2, 256)
    assert max_diff(prior, r_io[f"prior_{kind}_out"]) <= 1e-5


def test_retidiff_rgformer_reproduces_the_official_output(r_net, r_io):
    with torch.no_grad():
        out = r_net.G(r_io["prior_img"], r_io["g_rex"], r_io["g_img_prior"])
    assert max_diff(out, r_io["g_out"]) <= 1e-5


def test_retidiff_whole_test_pass_reproduces_the_official_one(r_net, r_decom, r_io):
    enhancer = retidiff.RetiDiffEnhancer(r_net, r_decom, seed=R_CONFIG["seeds"]["noise"])
    out = enhancer(r_io["test_low"])                         # 28×36: reflect-padded to 32×40, cropped back
    assert out.shape == (2, 3, 28, 36)
    assert max_diff(out, r_io["test_out"].clamp(0, 1)) <= 1e-5
    other = retidiff.RetiDiffEnhancer(r_net, r_decom, seed=R_CONFIG["seeds"]["noise"] + 1)(r_io["test_low"])
    assert max_diff(other, r_io["test_out"].clamp(0, 1)) > 1e-4   # the priors' x_T matter
    assert enhancer(torch.rand(1, 3, 5, 6)).shape == (1, 3, 5, 6)   # too small to reflect: replicated


def test_retidiff_release_files_load_strictly(r_net, r_decom, tmp_path):
    state = r_net.state_dict()
    trained = {f"module.{k}": v for k, v in state.items()} | {"G.decom.decom.0.weight": torch.zeros(4, 16, 3, 3)}
    path = tmp_path / "llie_syn.pth"
    torch.save({"params_ema": trained, "params": {}}, path)       # BasicSR's file: params_ema first
    loaded = retidiff.load_net(path, retidiff.RetiDiffNet(**R_CONFIG["net"]))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    torch.save({"params": {k: v for k, v in state.items() if not k.endswith("posterior_mean_coef1")}},
               tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match=r"missing 2 \(e\.g\. img_diffusion\.posterior_mean_coef1\)"):
        retidiff.load_net(tmp_path / "missing.pth", retidiff.RetiDiffNet(**R_CONFIG["net"]))   # buffers count
    torch.save(state | {"G.extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ConfigError, match=r"unexpected 1 \(e\.g\. G\.extra\.weight\)"):
        retidiff.load_net(tmp_path / "extra.pth", retidiff.RetiDiffNet(**R_CONFIG["net"]))
    with pytest.raises(ConfigError, match="wrong shape"):
        retidiff.load_net(path)                      # the reduced file into the released network
    torch.save(r_decom.state_dict(), tmp_path / "retinex_decomnet.pth")
    decom = retidiff.load_decom(tmp_path / "retinex_decomnet.pth")
    assert all(torch.equal(decom.state_dict()[k], v) for k, v in r_decom.state_dict().items())


def test_retidiff_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "llie_syn.pth"
    torch.save({"params_ema": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=1.0)}, path)
    (tmp_path / "retinex_decomnet.pth").write_bytes(b"")
    with pytest.raises(ConfigError, match="weights-only") as err:
        retidiff.load_pretrained(path)
    assert "\n" not in str(err.value)


# == selection as teachers ============================================================================================
@pytest.mark.parametrize("spec, files, page", [
    ("gsad", ["lolv2_syn_gen.pth"], "github.com/jinnh/GSAD"),
    ("retidiff", ["llie_syn.pth"], "github.com/ChunmingHe/Reti-Diff"),
])
def test_missing_release_files_are_one_line_naming_file_and_page(tmp_path, monkeypatch, spec, files, page):
    from ctsr.models.teachers import AnchoredTeacher

    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingWeightsError) as err:
        AnchoredTeacher(sr_model=spec, scale=1)
    message = str(err.value)
    assert all(f in message for f in files) and page in message and "weights" in message and "\n" not in message


def test_retidiff_missing_decomposition_names_its_file(tmp_path):
    net = tmp_path / "llie_syn.pth"
    torch.save({"params_ema": {}}, net)
    with pytest.raises(MissingWeightsError, match=r"retinex_decomnet\.pth.*pretrained_models") as err:
        retidiff.load_pretrained(net)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("spec", ["gsad", "retidiff", "gsad:x.pth", "retidiff:a.pth,b.pth"])
def test_lowlight_teachers_refuse_a_scale_other_than_one(spec):
    from ctsr.models.teachers import load_sr_model

    with pytest.raises(ConfigError, match="scale: 1"):
        load_sr_model(spec, scale=4)


def test_specs_pass_their_paths(monkeypatch):
    from ctsr.models.teachers import load_sr_model

    seen = []
    monkeypatch.setattr(gsad, "load_pretrained", lambda *a: seen.append(("gsad", a)) or torch.nn.Identity())
    monkeypatch.setattr(retidiff, "load_pretrained", lambda *a: seen.append(("retidiff", a)) or torch.nn.Identity())
    for spec in ("gsad", "gsad:/w/g.pth", "retidiff", "retidiff:/w/n.pth", "retidiff:/w/n.pth,/w/d.pth"):
        load_sr_model(spec, scale=1)
    assert seen == [("gsad", (None,)), ("gsad", ("/w/g.pth",)), ("retidiff", (None, None)),
                    ("retidiff", ("/w/n.pth", None)), ("retidiff", ("/w/n.pth", "/w/d.pth"))]


def test_table9_names_the_papers_teachers_with_their_parameter_counts():
    from ctsr.experiments import table9

    root = Path(__file__).resolve().parents[1] / "experiments"
    assert table9.teacher_specs([str(root / "lle_stage1.yaml")]) == ("gsad", "retidiff")
    assert table9.teacher_specs([str(root / "lle_stage1.yaml"), str(root / "tiny_lle_stage1.yaml")]) == \
        ("gamma", "equalize")                                      # the tiny overlay keeps the stand-ins
    assert [table9.method_name(r, s) for r, s in [("T_f", "gsad:/x.pth"), ("T_r", "retidiff"), ("T_f", "gamma")]] \
        == ["GSAD", "Reti-Diff", "T_f: gamma"]
    with torch.device("meta"):
        g = GSADEnhancer(GSADDiffusion())
        r = retidiff.RetiDiffEnhancer(retidiff.RetiDiffNet(), retidiff.RetinexDecomposition())
    assert round(table9.parameters_m(g), 2) == 17.43     # all of lolv2_syn_gen.pth (0.32 M never run)
    assert round(table9.parameters_m(r), 2) == 26.13     # 26.11 (the paper's) + the 0.02 M decomposition net


def test_eval_takes_a_same_size_fidelity_teacher():
    from ctsr.lit.evaluate import TrainedModel

    assert TrainedModel(fidelity_teacher="gamma", fidelity_scale=1).fidelity_teacher.scale == 1
    with pytest.raises(ConfigError, match="scale: 1"):
        TrainedModel(fidelity_teacher="gsad")        # no model to read the scale from: ×4, refused
