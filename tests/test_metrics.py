"""Metric suite: PSNR/SSIM against scikit-image on the Y channel, FID against a scipy Fréchet distance, weight files
checked before anything is built, random mode, DDP-style state merging. Never touches the network or real caches."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image, ImageFilter
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim
from torch import nn

from ctsr.errors import ConfigError, MissingWeightsError
from ctsr.metrics import (
    DEFAULT_METRICS,
    FID,
    METRIC_NAMES,
    REQUIRED_FILES,
    MetricSuite,
    column_name,
    networks,
    protocol_line,
    psnr,
    quantize_8bit,
    rgb_to_y,
    ssim,
    weight_files,
)
from ctsr.weights import ctsr_cache

pytestmark = pytest.mark.usefixtures("no_network")

LEARNED = [m for m in METRIC_NAMES if REQUIRED_FILES[m]]


# ---------------------------------------------------------------------------------------------------------------
# PSNR / SSIM against pyiqa itself (what OSEDiff's test_metrics.py calls), on the bundled real photos.

def _y_numpy(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] -> Y of BT.601 YCbCr in [0, 1] (BasicSR rgb2ycbcr, y_only)."""
    return (16.0 + img @ np.array([65.481, 128.553, 24.966])) / 255.0


def _photos() -> list[np.ndarray]:
    """128x128 uint8 crops of three photographs."""
    return [skdata.astronaut()[40:168, 180:308], skdata.coffee()[100:228, 200:328], skdata.chelsea()[60:188, 120:248]]


def _distort(img: np.ndarray, kind: str, seed: int) -> np.ndarray:
    if kind == "noise":
        rng = np.random.default_rng(seed)
        return np.clip(np.round(img + rng.normal(0, 12, img.shape)), 0, 255).astype(np.uint8)
    if kind == "blur":
        return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(1.5)))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=20)
    return np.asarray(Image.open(buf).convert("RGB"))


def _to_tensor(imgs: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0


def _sample_photos(sample_dir) -> list[np.ndarray]:
    """The six bundled photos (scikit-image's colour images, 300x451 to 512x512), uint8 RGB."""
    return [np.asarray(Image.open(f).convert("RGB")) for f in sorted(sample_dir.glob("*/*.png"))]


def _pyiqa(name: str, **kwargs):
    import pyiqa

    return pyiqa.create_metric(name, device="cpu", **kwargs)


def test_y_channel_is_bt601_studio_swing():
    img = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.2, 0.5, 0.7]]).T.reshape(1, 3, 1, 4)
    y = rgb_to_y(img).flatten()
    assert torch.allclose(y[:2], torch.tensor([16.0, 235.0]) / 255, atol=1e-6)
    expected = _y_numpy(img.reshape(3, 4).T.double().numpy())
    assert np.allclose(y.double().numpy(), expected, atol=1e-6)
    from pyiqa.utils.color_util import to_y_channel

    assert torch.equal(rgb_to_y(img), to_y_channel(img, 1.0, "ycbcr"))  # the same float32 arithmetic as pyiqa


def test_psnr_ssim_on_y_match_pyiqa_on_real_photos(sample_dir):
    """OSEDiff's settings: pyiqa psnr/ssim with test_y_channel=True, color_space='ycbcr', image by image, on the six
    bundled photos at full size (noisy, blurred and JPEG'd in turn): ≤ 1e-4 dB and ≤ 1e-5 apart."""
    ref_psnr = _pyiqa("psnr", test_y_channel=True, color_space="ycbcr")
    ref_ssim = _pyiqa("ssim", test_y_channel=True, color_space="ycbcr")
    suite = MetricSuite(["ssim", "psnr"])  # default: Y, no crop, 8-bit (these images are 8-bit already)
    p_ref, s_ref, p_ours, s_ours = [], [], [], []
    for i, hr_img in enumerate(_sample_photos(sample_dir)):
        sr, hr = _to_tensor([_distort(hr_img, ("noise", "blur", "jpeg")[i % 3], seed=i)]), _to_tensor([hr_img])
        p_ref.append(ref_psnr(sr, hr).item())
        s_ref.append(ref_ssim(sr, hr).item())
        suite.update(sr, hr)
        p_ours.append(float(suite.metrics["psnr"].total) - sum(p_ours))
        s_ours.append(float(suite.metrics["ssim"].total) - sum(s_ours))
    assert np.abs(np.array(p_ours) - p_ref).max() <= 1e-4
    assert np.abs(np.array(s_ours) - s_ref).max() <= 1e-5
    out = suite.compute()
    assert list(out) == ["psnr", "ssim"]  # paper order whatever the order asked
    assert out["psnr"] == pytest.approx(np.mean(p_ref), abs=1e-4)  # mean of per-image scores, as OSEDiff
    assert out["ssim"] == pytest.approx(np.mean(s_ref), abs=1e-5)


def test_ssim_rounds_y_and_clips_the_cs_map_unlike_skimage():
    """The two steps that make pyiqa's SSIM differ from skimage's on the same Y: a measurable gap, which ours shares."""
    hrs = _photos()
    srs = [_distort(hr, "noise", i) for i, hr in enumerate(hrs)]
    ref = _pyiqa("ssim", test_y_channel=True, color_space="ycbcr")
    for sr_img, hr_img in zip(srs, hrs):
        sr, hr = _to_tensor([sr_img]), _to_tensor([hr_img])
        a, b = _y_numpy(sr_img / 255.0), _y_numpy(hr_img / 255.0)
        sk = sk_ssim(b, a, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert abs(ssim(sr, hr).item() - ref(sr, hr).item()) <= 1e-5
        assert abs(ssim(sr, hr).item() - sk) > 1e-4  # the old protocol's number is not pyiqa's
        assert sk_psnr(b, a, data_range=1.0) == pytest.approx(psnr(sr, hr).item(), abs=1e-3)  # PSNR: same formula


def test_crop_border_matches_pyiqa():
    hrs = _photos()
    srs = [_distort(hr, "jpeg", 0) for hr in hrs]
    sr, hr = _to_tensor(srs), _to_tensor(hrs)
    suite = MetricSuite(["psnr", "ssim"], crop_border=4)
    suite.update(sr, hr)
    out = suite.compute()
    p = _pyiqa("psnr", test_y_channel=True, color_space="ycbcr", crop_border=4)(sr, hr)
    s = _pyiqa("ssim", test_y_channel=True, color_space="ycbcr", crop_border=4)(sr, hr)
    assert out["psnr"] == pytest.approx(p.mean().item(), abs=1e-4)
    assert out["ssim"] == pytest.approx(s.mean().item(), abs=1e-5)
    assert abs(out["psnr"] - psnr(sr, hr).mean().item()) > 1e-3  # the crop changes the number


def test_rgb_mode_matches_pyiqa_without_y():
    hrs = _photos()
    srs = [_distort(hr, "noise", i) for i, hr in enumerate(hrs)]
    sr, hr = _to_tensor(srs), _to_tensor(hrs)
    suite = MetricSuite(["psnr", "ssim"], color_space="rgb")
    suite.update(sr, hr)
    out = suite.compute()
    assert out["psnr"] == pytest.approx(_pyiqa("psnr", test_y_channel=False)(sr, hr).mean().item(), abs=1e-4)
    assert out["ssim"] == pytest.approx(_pyiqa("ssim", test_y_channel=False)(sr, hr).mean().item(), abs=1e-5)
    assert abs(out["psnr"] - psnr(sr, hr).mean().item()) > 1e-2  # RGB is another number than Y


def test_quantize_rounds_to_8_bit_like_a_saved_png():
    g = torch.Generator().manual_seed(0)
    hr = quantize_8bit(torch.rand(2, 3, 32, 32, generator=g))
    sr = hr + 0.02 * torch.randn(2, 3, 32, 32, generator=g)  # float SR, a little outside [0, 1]
    q, f = MetricSuite(["psnr"]), MetricSuite(["psnr"], quantize=False)
    q.update(sr, hr)
    f.update(sr, hr)
    assert torch.equal(quantize_8bit(sr) * 255, (sr.clamp(0, 1) * 255).round())
    assert q.compute()["psnr"] == pytest.approx(psnr(quantize_8bit(sr), hr).mean().item(), abs=1e-9)
    assert f.compute()["psnr"] == pytest.approx(psnr(sr.clamp(0, 1), hr).mean().item(), abs=1e-9)
    assert q.compute()["psnr"] != pytest.approx(f.compute()["psnr"], abs=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Configuration, names, protocol.

def test_columns_order_and_directions():
    suite = MetricSuite(["ssim", "psnr"])
    assert suite.names == ("psnr", "ssim")
    assert [column_name(n) for n in METRIC_NAMES] == [
        "PSNR↑", "SSIM↑", "LPIPS↓", "LPIPS-VGG↓", "DISTS↓", "FID↓", "NIQE↓", "MUSIQ↑", "MANIQA↑", "CLIPIQA↑"]
    assert DEFAULT_METRICS == ("psnr", "ssim", "lpips", "dists", "fid", "niqe", "musiq", "maniqa", "clipiqa")
    assert suite.higher_is_better == {"psnr": True, "ssim": True}
    assert all(suite.metrics[n].higher_is_better for n in suite.names)
    assert suite.protocol() == ("OSEDiff test_metrics.py / pyiqa: PSNR/SSIM on Y (BT.601, pyiqa ycbcr; SSIM on 8-bit "
                                "levels, cs clipped at 0), crop border 0; images rounded to 8 bit")
    assert "RGB (pyiqa; SSIM on 8-bit levels, cs clipped at 0), crop border 4" in MetricSuite(
        ["psnr"], color_space="rgb", crop_border=4).protocol()
    both = protocol_line(["lpips", "lpips_vgg", "maniqa"])
    assert "LPIPS (pyiqa lpips: AlexNet, v0.1); LPIPS-VGG (lpips package, v0.1); MANIQA (pyiqa maniqa-pipal)" in both


@pytest.mark.parametrize("kwargs, flag", [
    ({"metrics": ["psnr", "lpips_alex"]}, "metrics"), ({"metrics": []}, "metrics"),
    ({"color_space": "ycbcr"}, "color_space"), ({"crop_border": -1}, "crop_border"),
    ({"weights": "imagenet"}, "weights"),
])
def test_bad_settings_name_the_flag(kwargs, flag):
    kwargs = {"metrics": ["psnr"], **kwargs}
    with pytest.raises(ConfigError, match=flag):
        MetricSuite(**kwargs)


def test_update_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="B, 3, H, W"):
        MetricSuite(["psnr"]).update(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 8))


# ---------------------------------------------------------------------------------------------------------------
# Offline: weight files.

def test_required_file_names_and_folders_match_the_installed_libraries(empty_caches):
    """The names the check looks for are the names each library would download (read from its own code)."""
    import torch.hub
    import torchvision
    from pyiqa.archs import (
        clip_model,
        dists_arch,
        inception,
        lpips_arch,
        maniqa_arch,
        musiq_arch,
        niqe_arch,
    )
    from timm.models import get_pretrained_cfg

    base = lambda url: url.rsplit("/", 1)[-1]
    expected = {
        "lpips": {base(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url),
                  base(lpips_arch.default_model_urls["0.1_alex"])},
        "lpips_vgg": {base(torchvision.models.VGG16_Weights.IMAGENET1K_V1.url)},
        "dists": {base(torchvision.models.VGG16_Weights.IMAGENET1K_V1.url), base(dists_arch.default_model_urls["url"])},
        "fid": {base(inception.FID_WEIGHTS_URL)},
        "niqe": {base(niqe_arch.default_model_urls["niqe"])},
        "musiq": {base(musiq_arch.default_model_urls["koniq10k"])},
        "maniqa": {base(maniqa_arch.default_model_urls["pipal"]), "model.safetensors"},
        "clipiqa": {base(clip_model._MODELS["RN50"])},
    }
    assert {m: {w.file for w in REQUIRED_FILES[m]} for m in LEARNED} == expected
    assert weight_files.MANIQA_VIT_REPO == get_pretrained_cfg("vit_base_patch8_224").hf_hub_id
    # Folders: torchvision -> hub/checkpoints, pyiqa -> its DEFAULT_CACHE_DIR, CLIP -> hub/clip (pyiqa clip_model.load).
    hub = empty_caches / "torch" / "hub"
    assert {str(w.folder()) for w in REQUIRED_FILES["lpips"]} == {str(hub / "checkpoints"), str(hub / "pyiqa")}
    assert {str(w.folder()) for w in REQUIRED_FILES["lpips_vgg"]} == {str(hub / "checkpoints")}
    assert str(REQUIRED_FILES["niqe"][0].folder()) == str(hub / "pyiqa")
    assert str(REQUIRED_FILES["clipiqa"][0].folder()) == os.path.join(torch.hub.get_dir(), "clip")


@pytest.mark.parametrize("metric", LEARNED)
def test_missing_weights_raise_at_construction_naming_metric_file_and_folder(metric, empty_caches, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("a network was built before the weight check")

    monkeypatch.setattr("ctsr.metrics.suite.build_scorer", no_build)
    monkeypatch.setattr("ctsr.metrics.suite.build_fid_features", no_build)
    with pytest.raises(MissingWeightsError) as err:
        MetricSuite(["psnr", metric])
    msg = str(err.value)
    assert f"metric '{metric}'" in msg and "psnr" not in msg.split("\n")[0]
    for w in REQUIRED_FILES[metric]:
        assert w.file in msg and str(w.folder()) in msg


def test_all_missing_files_are_listed_in_one_error(empty_caches):
    with pytest.raises(MissingWeightsError) as err:
        MetricSuite()
    msg = str(err.value)
    assert all(w.file in msg for m in LEARNED for w in REQUIRED_FILES[m])
    assert "leave lpips, dists, fid, niqe, musiq, maniqa, clipiqa out of `metrics`" in msg


def test_download_weights_lets_each_library_fetch_then_checks(empty_caches, monkeypatch):
    """The wiring only (no network here): each metric's pretrained builder runs, then the same file check."""
    import torchvision

    from ctsr.metrics import download_weights

    built = []
    monkeypatch.setattr(networks, "build_scorer", lambda name, weights: built.append((name, weights)))
    monkeypatch.setattr(networks, "build_fid_features", lambda weights: built.append(("fid", weights)))
    monkeypatch.setattr(torchvision.models, "vgg16", lambda weights: built.append(("vgg16", weights)))
    with pytest.raises(MissingWeightsError, match="niqe_modelparameters.mat"):
        download_weights(["psnr", "lpips", "lpips_vgg", "fid", "niqe"])  # the stand-ins downloaded nothing
    assert built == [("vgg16", "IMAGENET1K_V1"), ("lpips", "pretrained"), ("lpips_vgg", "pretrained"),
                     ("fid", "pretrained"), ("niqe", "pretrained")]


def test_fidelity_metrics_run_offline_without_any_weights(empty_caches):
    suite = MetricSuite(["psnr", "ssim"])
    hr = _to_tensor(_photos())
    suite.update(hr, hr)
    assert suite.compute() == {"psnr": pytest.approx(80.0), "ssim": pytest.approx(1.0)}  # pyiqa: eps 1e-8 -> 80 dB


def test_pretrained_niqe_reads_the_pyiqa_cache(empty_caches):
    """A parameter file placed where the error says is what pyiqa loads: our score equals pyiqa's on that file."""
    import pyiqa

    folder = REQUIRED_FILES["niqe"][0].folder()
    folder.mkdir(parents=True)
    networks._niqe_random_params(folder).rename(folder / "niqe_modelparameters.mat")
    suite = MetricSuite(["niqe"])
    img = _to_tensor(_photos()[:1])
    suite.update(img, img)
    ref = pyiqa.create_metric("niqe", device="cpu", pretrained_model_path=str(folder / "niqe_modelparameters.mat"))
    assert suite.compute()["niqe"] == pytest.approx(ref(img).item(), rel=1e-6)


def test_lpips_column_is_pyiqa_lpips_alex_reading_the_files_the_error_names(empty_caches, sample_dir):
    """Files placed where the check says (AlexNet in hub/checkpoints, the heads in pyiqa's cache) are what pyiqa's
    own ``create_metric('lpips')`` loads, and our ``lpips`` column equals its score (OSEDiff's LPIPS)."""
    import torchvision
    from pyiqa.archs.lpips_arch import LPIPS

    torch.manual_seed(0)
    alexnet, lpips_file = REQUIRED_FILES["lpips"]
    for w in (alexnet, lpips_file):
        w.folder().mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), alexnet.folder() / alexnet.file)
    with mock.patch("torchvision.models.alexnet", lambda *a, **k: torchvision.models.AlexNet()):
        heads = LPIPS(pretrained=False)
    torch.save({k: v.abs() for k, v in heads.state_dict().items() if k.startswith("lin")},
               lpips_file.folder() / lpips_file.file)
    assert not weight_files.missing_files(["lpips"])
    photo = _sample_photos(sample_dir)[0][:128, :128]
    sr, hr = _to_tensor([_distort(photo, "blur", 0)]), _to_tensor([photo])
    suite = MetricSuite(["lpips"])
    suite.update(sr, hr)
    ref = _pyiqa("lpips")(sr, hr).item()
    assert ref > 0 and suite.compute()["lpips"] == pytest.approx(ref, rel=1e-6)
    assert "pyiqa lpips: AlexNet" in suite.protocol()


def _same_attributes(ours: nn.Module, theirs: nn.Module) -> None:
    """The plain attributes of two modules agree (tensors equal, lists of modules of the same types)."""
    a, b = ({k: v for k, v in vars(m).items() if not k.startswith("_")} for m in (ours, theirs))
    assert a.keys() == b.keys(), set(a) ^ set(b)
    for key, value in a.items():
        other = b[key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), key
        elif isinstance(value, list) and value and isinstance(value[0], nn.Module):
            assert [type(v) for v in value] == [type(v) for v in other], key
        elif type(value).__module__.startswith("pyiqa"):
            assert type(value) is type(other), key
        else:
            assert value == other, key


@pytest.mark.parametrize("name", ["lpips", "dists", pytest.param("maniqa", marks=pytest.mark.slow), "clipiqa", "fid"])
def test_random_networks_are_the_libraries_classes_as_their_constructors_build_them(name, monkeypatch):
    """ctsr assembles the classes whose constructors download backbone weights (``networks._assemble``); built by
    the library's own constructor (its downloads stubbed here), each is the same class with the same state dict,
    the same attributes and, given the same weights, the same output."""
    import timm
    import torchvision
    from pyiqa.archs import dists_arch, inception, lpips_arch, maniqa_arch

    with networks._openai_clip_importable():
        from pyiqa.archs import clipiqa_arch
    clip = networks._random_clip_rn50()
    vgg16 = torchvision.models.vgg16
    ours, build, stub, x = {
        "lpips": (networks.random_lpips_alex(), lambda: lpips_arch.LPIPS(pretrained=False),
                  ("torchvision.models.alexnet", lambda *a, **k: torchvision.models.AlexNet()), (2, 3, 64, 64)),
        "dists": (networks.random_dists(), lambda: dists_arch.DISTS(pretrained=False),
                  ("torchvision.models.vgg16", lambda *a, **k: vgg16()), (2, 3, 64, 64)),
        "maniqa": (networks.random_maniqa(), lambda: maniqa_arch.MANIQA(pretrained=False),
                   ("timm.create_model", lambda n, pretrained=False: timm.models.create_model(n)), None),
        "clipiqa": (networks.clipiqa(clip), lambda: clipiqa_arch.CLIPIQA(),
                    (clipiqa_arch, "load", lambda *a, **k: clip), (1, 3, 224, 224)),
        "fid": (networks.random_fid_inception(),
                lambda: inception.InceptionV3(output_blocks=[3], resize_input=False, normalize_input=False),
                (inception, "load_pretrained_network", lambda *a, **k: None), (1, 3, 75, 75)),
    }[name]
    monkeypatch.setattr(*stub)
    theirs = build()
    assert type(ours) is type(theirs)
    state = ours.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(state)
    _same_attributes(ours, theirs)
    for (n, a), (_, b) in zip(ours.named_modules(), theirs.named_modules()):
        assert type(a) is type(b) and len(a._forward_hooks) == len(b._forward_hooks), n
        _same_attributes(a, b)
    if x is not None:
        img = torch.rand(*x, generator=torch.Generator().manual_seed(0))
        args = (img, img.flip(-1)) if name in ("lpips", "dists") else (img,)
        with torch.no_grad():
            a, b = ours.eval()(*args), theirs.eval()(*args)
        a, b = (v[0] if isinstance(v, list) else v for v in (a, b))
        assert torch.equal(a, b)


def test_no_reference_suite_scores_sr_alone_and_full_reference_needs_hr():
    suite = MetricSuite(["niqe"], weights="random")
    img = _to_tensor(_photos()[:1])
    suite.update(img)  # no HR
    alone = suite.compute()["niqe"]
    suite.reset()
    suite.update(img, _to_tensor(_photos()[1:2]))  # an HR is ignored by a no-reference metric
    assert suite.compute()["niqe"] == pytest.approx(alone, rel=1e-9) and np.isfinite(alone)
    with pytest.raises(ValueError, match=r"\['psnr'\] need the HR image"):
        MetricSuite(["psnr", "niqe"], weights="random").update(img)


def test_subset_shares_networks_and_keeps_settings():
    suite = MetricSuite(["psnr", "lpips", "niqe"], crop_border=2, weights="random")
    sub = suite.subset(["lpips", "psnr"])
    assert sub.names == ("psnr", "lpips") and sub.crop_border == 2
    assert sub.metrics["lpips"].scorer is suite.metrics["lpips"].scorer


# ---------------------------------------------------------------------------------------------------------------
# Random mode: every metric builds and gives finite numbers.

@pytest.fixture(scope="module")
def random_suite():
    """All ten metrics with random weights, built once. Big nets on tiny images: one intra-op thread measured ~3x
    faster than two on a 2-core machine shared with other processes (no OpenMP barrier stalls)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield MetricSuite(METRIC_NAMES, weights="random")
    torch.set_num_threads(threads)


def test_random_mode_builds_every_metric_with_finite_scores(random_suite):
    assert random_suite.names == METRIC_NAMES
    assert random_suite.protocol().startswith("RANDOM WEIGHTS")
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 96, 96, generator=g)  # 96: NIQE's block size
    sr = (hr + 0.1 * torch.randn(2, 3, 96, 96, generator=g)).clamp(0, 1)
    suite = random_suite.clone()
    suite.update(sr, hr)
    out = suite.compute()
    assert list(out) == list(METRIC_NAMES)
    assert all(np.isfinite(v) for v in out.values()), out
    assert out["fid"] > 0 and 0 < out["ssim"] < 1 and out["lpips"] > 0 and out["lpips_vgg"] > 0


def test_random_mode_on_64px_skips_niqe_and_fid_with_one_image_is_nan(random_suite):
    # MANIQA is left out for time: it upsamples anything under 224 px, as in the test above
    suite = random_suite.subset([n for n in METRIC_NAMES if n != "maniqa"])
    g = torch.Generator().manual_seed(1)
    sr, hr = torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    assert suite.too_small(64, 64) == ["niqe"]
    suite.update(sr, hr)  # NIQE has no 96x96 block: skipped for this image and counted, the others score it
    assert suite.skipped == {"niqe": 1} and int(suite.metrics["niqe"].update_count) == 0
    assert "niqe (needs 96×96: 1 image(s) skipped, 0 scored)" in suite.skipped_note()
    with pytest.warns(UserWarning, match="FID needs at least 2"):
        out = suite.compute()
    assert "niqe" not in out and np.isnan(out["fid"])  # no NIQE column: no image it could score
    others = {n: v for n, v in out.items() if n != "fid"}
    assert set(others) == set(suite.names) - {"niqe", "fid"} and all(np.isfinite(v) for v in others.values()), out


def test_every_metric_takes_its_smallest_image_and_skips_smaller_ones(random_suite):
    """MIN_SIZES are the real limits of the networks: each metric scores an image of its minimum side and skips
    one pixel less (no error from inside a network, e.g. LPIPS' 'Kernel size can't be greater than actual input
    size'); a 1-pixel image is skipped by all but the metrics that take any size."""
    from ctsr.metrics.suite import MIN_SIZES

    g = torch.Generator().manual_seed(2)
    for name, side in MIN_SIZES.items():
        suite = random_suite.subset([name])
        for s, skipped in ((side, {}), (side - 1, {name: 1})):
            x, y = torch.rand(1, 3, s, s + 7, generator=g), torch.rand(1, 3, s, s + 7, generator=g)
            suite.update(x, y)
            assert suite.scored == {name: 1} and suite.skipped == skipped, (name, s)
        assert np.isfinite(suite.compute()[name])
    tiny = random_suite.subset(["psnr", "dists", "musiq"])
    assert tiny.too_small(1, 1) == []


def test_random_mode_is_reproducible_and_clone_shares_networks(random_suite):
    c = random_suite.clone()
    assert c.metrics["lpips"].scorer is random_suite.metrics["lpips"].scorer
    assert c.metrics["fid"].inception is random_suite.metrics["fid"].inception
    assert c.metrics["psnr"].count == 0 and c.metrics["fid"].real_features_num_samples == 0
    again = MetricSuite(["dists"], weights="random")
    a = dict(again.metrics["dists"].scorer.state_dict())
    b = random_suite.metrics["dists"].scorer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_suite_stays_in_eval_mode(random_suite):
    random_suite.train()
    assert not any(m.training for m in random_suite.modules())


# ---------------------------------------------------------------------------------------------------------------
# FID and DDP-safety.

class _MeanColour(nn.Module):
    """A stand-in feature extractor: per-image mean and std of each channel (6 features)."""

    num_features = 6

    def forward(self, x):
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1)


def test_fid_equals_a_scipy_frechet_distance_on_the_same_features():
    g = torch.Generator().manual_seed(0)
    hr, sr = torch.rand(12, 3, 16, 16, generator=g), torch.rand(12, 3, 16, 16, generator=g) ** 2
    fid = FID(_MeanColour())
    fid.update(sr[:5], hr[:5])
    fid.update(sr[5:], hr[5:])
    f_sr, f_hr = _MeanColour()(sr).double().numpy(), _MeanColour()(hr).double().numpy()
    mu1, mu2 = f_sr.mean(0), f_hr.mean(0)
    s1, s2 = np.cov(f_sr, rowvar=False), np.cov(f_hr, rowvar=False)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert fid.compute().item() == pytest.approx(ref, rel=1e-4)


def test_fid_preprocessing_equals_pyiqa_clean_mode(tmp_path):
    """Our tensor resize equals pyiqa's fid 'clean' loader (PIL bicubic per channel on the saved 8-bit PNG)."""
    from pyiqa.archs.fid_arch import ResizeDataset

    seen = {}

    class Capture(nn.Module):
        def forward(self, x, resize_input, normalize_input):
            seen["x"] = x
            return [torch.zeros(x.shape[0], 2048, 1, 1)]

    img = skdata.astronaut()[:200, 50:250]
    Image.fromarray(img).save(tmp_path / "a.png")
    ref = ResizeDataset([str(tmp_path / "a.png")], mode="clean")[0]
    networks.CleanFIDInception(Capture())(_to_tensor([img]))
    ours = seen["x"][0] * 128 + 128
    assert (ours - ref).abs().max().item() < 5e-3  # out of 255: float32 rounding of the two resamplers


def test_merging_two_halves_equals_the_whole(random_suite):
    """What DDP's sync does: the states of two ranks, reduced with their dist_reduce_fx ('sum'), give the whole
    set's result, for the per-image means and for FID (here on stand-in features; the states do not depend on them)."""
    g = torch.Generator().manual_seed(2)
    hr = torch.rand(6, 3, 32, 32, generator=g)
    sr = (hr + 0.1 * torch.randn(6, 3, 32, 32, generator=g)).clamp(0, 1)
    whole, rank0, rank1 = ({"fid": FID(_MeanColour())} | {n: s.metrics[n] for n in ("psnr", "ssim", "lpips")}
                           for s in (random_suite.clone(), random_suite.clone(), random_suite.clone()))
    for name in whole:
        whole[name].update(sr, hr)
        rank0[name].update(sr[:4], hr[:4])
        rank1[name].update(sr[4:], hr[4:])
        assert all(rank0[name]._reductions[k] is not None for k in rank0[name].metric_state)  # every state reduces
        rank0[name].merge_state(rank1[name])
        assert rank0[name].compute().item() == pytest.approx(whole[name].compute().item(), rel=1e-9), name


# ---------------------------------------------------------------------------------------------------------------
# NIQE offline: BasicSR's pristine parameters (basicsr 1.4.2 sdist), against BasicSR's own calculate_niqe.

ROOT = Path(__file__).resolve().parents[1]
USER_CTSR_CACHE = ctsr_cache()  # read before any test points CTSR_CACHE elsewhere
NIQE_NPZ_SHA256 = "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296"


@pytest.fixture()
def basicsr_niqe(empty_caches):
    """BasicSR's niqe_pris_params.npz (fetched by `make mini-weights`) copied into the test's empty ctsr cache."""
    import shutil

    from ctsr.weights import NIQE_BASICSR_FILE

    source = USER_CTSR_CACHE / NIQE_BASICSR_FILE
    assert source.is_file(), f"{source} missing: run `make mini-weights` (python -m ctsr.mini.assets)"
    (empty_caches / "ctsr").mkdir()
    return Path(shutil.copy(source, empty_caches / "ctsr" / NIQE_BASICSR_FILE))


def _niqe_fixture_images() -> tuple[dict, dict]:
    import importlib.util

    # by path, under its own name: tests/fixtures/*/make_fixtures.py are several modules of one name
    spec = importlib.util.spec_from_file_location("niqe_make_fixtures", ROOT / "tests" / "fixtures" / "niqe" /
                                                  "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    images = module.images

    ref = json.loads((ROOT / "tests" / "fixtures" / "niqe" / "basicsr_niqe.json").read_text())["scores"]
    return images(), ref


def test_niqe_runs_offline_on_basicsrs_parameters_as_pyiqa_would(basicsr_niqe):
    import hashlib

    import pyiqa
    import scipy.io

    assert hashlib.sha256(basicsr_niqe.read_bytes()).hexdigest() == NIQE_NPZ_SHA256  # the file BasicSR ships
    suite = MetricSuite(["niqe"])  # no pyiqa file anywhere: BasicSR's parameters
    assert "NIQE (pyiqa) with BasicSR's pristine parameters" in suite.protocol()
    images, _ = _niqe_fixture_images()
    img = torch.from_numpy(images["coffee"]).permute(2, 0, 1)[None].float() / 255
    suite.update(img, img)
    params = np.load(basicsr_niqe)
    mat = basicsr_niqe.with_suffix(".mat")
    scipy.io.savemat(mat, {"mu_prisparam": params["mu_pris_param"], "cov_prisparam": params["cov_pris_param"]})
    ref = pyiqa.create_metric("niqe", device="cpu", pretrained_model_path=str(mat))
    assert suite.compute()["niqe"] == pytest.approx(ref(img).item(), rel=1e-9)


def test_niqe_equals_basicsrs_calculate_niqe_on_real_photos(basicsr_niqe):
    """Fixtures from BasicSR's own niqe.py (tests/fixtures/niqe/make_fixtures.py). pyiqa's NIQE (YIQ luma, the
    protocol's colour) against BasicSR's on the same luma (convert_to='gray': the same 0.299/0.587/0.114
    weights): within 4e-3. Not within 1e-3: pyiqa filters in float32 where BasicSR uses float64 (its normalised
    image differs by up to 3e-4), which moves some blocks' AGGD shape estimate by one 0.001 step of the grid."""
    scorer = networks.build_scorer("niqe", "pretrained")
    images, ref = _niqe_fixture_images()
    diffs = []
    for name, rgb in images.items():
        img = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
        diffs.append(float(scorer(img)) - ref[name]["gray"])
    diffs = np.abs(diffs)
    assert diffs.max() < 4e-3 and diffs.mean() < 3e-3, diffs  # measured: max 3.8e-3, mean 2.6e-3
    assert ref["chelsea"]["gray"] < ref["coffee"]["gray"] < ref["coffee_blur"]["gray"]  # blur is worse


def test_score_niqe_needs_no_download(basicsr_niqe, sample_dir, tmp_path, capsys):
    from ctsr.cli import main as cli_main

    assert cli_main(["score", str(sample_dir / "val"), "--metrics", "niqe", "--out", str(tmp_path / "t")]) == 0
    table = (tmp_path / "t" / "metrics.md").read_text()
    assert "NIQE" in table and "BasicSR's pristine parameters" in table
