"""Metric suite: PSNR/SSIM against scikit-image on the Y channel, FID against a scipy Fréchet distance, weight files
checked before anything is built, random mode, DDP-style state merging. Never touches the network or real caches."""
from __future__ import annotations

import io
import os
import socket

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
    FID,
    METRIC_NAMES,
    REQUIRED_FILES,
    MetricSuite,
    column_name,
    networks,
    psnr,
    quantize_8bit,
    rgb_to_y,
    ssim,
    weight_files,
)

LEARNED = [m for m in METRIC_NAMES if REQUIRED_FILES[m]]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails the test (a library trying to download means a wrong cache path)."""

    def refuse(*args, **kwargs):
        raise AssertionError("test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture()
def empty_caches(tmp_path, monkeypatch):
    """Empty torch hub, pyiqa and Hugging Face caches under tmp_path (the user's caches are never touched)."""
    import huggingface_hub.constants
    from pyiqa.utils import download_util

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(download_util, "DEFAULT_CACHE_DIR", str(tmp_path / "torch" / "hub" / "pyiqa"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


# ---------------------------------------------------------------------------------------------------------------
# PSNR / SSIM against scikit-image on the Y channel computed with numpy.

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


def _sk_scores(srs, hrs, crop: int = 0, rgb: bool = False) -> tuple[np.ndarray, np.ndarray]:
    p, s = [], []
    for sr, hr in zip(srs, hrs):
        a, b = sr.astype(np.float64) / 255.0, hr.astype(np.float64) / 255.0
        if not rgb:
            a, b = _y_numpy(a), _y_numpy(b)
        if crop:
            a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
        p.append(sk_psnr(b, a, data_range=1.0))
        s.append(sk_ssim(b, a, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                         channel_axis=2 if rgb else None))
    return np.array(p), np.array(s)


def test_y_channel_is_bt601_studio_swing():
    img = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.2, 0.5, 0.7]]).T.reshape(1, 3, 1, 4)
    y = rgb_to_y(img).flatten()
    assert torch.allclose(y[:2], torch.tensor([16.0, 235.0]) / 255, atol=1e-6)
    expected = _y_numpy(img.reshape(3, 4).T.double().numpy())
    assert np.allclose(y.double().numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["noise", "blur", "jpeg"])
def test_psnr_ssim_on_y_match_skimage(kind):
    hrs = _photos()
    srs = [_distort(hr, kind, seed=i) for i, hr in enumerate(hrs)]
    sk_p, sk_s = _sk_scores(srs, hrs)
    sr, hr = _to_tensor(srs), _to_tensor(hrs)
    assert np.allclose(psnr(sr, hr).numpy(), sk_p, atol=1e-3, rtol=0)
    assert np.allclose(ssim(sr, hr).numpy(), sk_s, atol=1e-4, rtol=0)

    suite = MetricSuite(["ssim", "psnr"])  # default: Y, no crop, 8-bit (these images are 8-bit already)
    suite.update(sr[:2], hr[:2])
    suite.update(sr[2:], hr[2:])
    out = suite.compute()
    assert list(out) == ["psnr", "ssim"]  # paper order whatever the order asked
    assert out["psnr"] == pytest.approx(sk_p.mean(), abs=1e-3)  # mean of per-image PSNR (BasicSR), not PSNR of mean
    assert out["ssim"] == pytest.approx(sk_s.mean(), abs=1e-4)


def test_crop_border_matches_skimage_on_the_cropped_images():
    hrs = _photos()
    srs = [_distort(hr, "jpeg", 0) for hr in hrs]
    sk_p, sk_s = _sk_scores(srs, hrs, crop=4)
    suite = MetricSuite(["psnr", "ssim"], crop_border=4)
    suite.update(_to_tensor(srs), _to_tensor(hrs))
    out = suite.compute()
    assert out["psnr"] == pytest.approx(sk_p.mean(), abs=1e-3)
    assert out["ssim"] == pytest.approx(sk_s.mean(), abs=1e-4)
    no_crop = _sk_scores(srs, hrs)[0].mean()
    assert abs(out["psnr"] - no_crop) > 1e-3  # the crop changes the number


def test_rgb_mode_equals_torchmetrics_and_skimage():
    from torchmetrics.functional.image import structural_similarity_index_measure
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    hrs = _photos()
    srs = [_distort(hr, "noise", i) for i, hr in enumerate(hrs)]
    sr, hr = _to_tensor(srs), _to_tensor(hrs)
    suite = MetricSuite(["psnr", "ssim"], color_space="rgb")
    suite.update(sr, hr)
    out = suite.compute()

    tm_psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))  # per image, then the mean
    tm_psnr.update(sr.double(), hr.double())
    assert out["psnr"] == pytest.approx(tm_psnr.compute().item(), abs=1e-4)
    # SSIM: torchmetrics' SSIM map, averaged over the valid region (windows inside the image) as BasicSR/skimage.
    _, ssim_map = structural_similarity_index_measure(sr.double(), hr.double(), data_range=1.0, return_full_image=True)
    assert out["ssim"] == pytest.approx(ssim_map[..., 5:-5, 5:-5].mean().item(), abs=1e-6)
    sk_p, sk_s = _sk_scores(srs, hrs, rgb=True)
    assert out["psnr"] == pytest.approx(sk_p.mean(), abs=1e-3)
    assert out["ssim"] == pytest.approx(sk_s.mean(), abs=1e-4)
    # torchmetrics' own SSIM mean also counts the reflected 5-pixel border: close, but not the protocol.
    tm_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
    tm_ssim.update(sr.double(), hr.double())
    assert out["ssim"] == pytest.approx(tm_ssim.compute().item(), abs=1e-2)


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
        "PSNR↑", "SSIM↑", "LPIPS↓", "DISTS↓", "FID↓", "NIQE↓", "MUSIQ↑", "MANIQA↑", "CLIPIQA↑"]
    assert suite.higher_is_better == {"psnr": True, "ssim": True}
    assert all(suite.metrics[n].higher_is_better for n in suite.names)
    assert suite.protocol() == "PSNR/SSIM on Y (BT.601), crop border 0; images rounded to 8 bit"
    assert "RGB, crop border 4" in MetricSuite(["psnr"], color_space="rgb", crop_border=4).protocol()


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
    from pyiqa.archs import clip_model, dists_arch, inception, maniqa_arch, musiq_arch, niqe_arch
    from timm.models import get_pretrained_cfg

    base = lambda url: url.rsplit("/", 1)[-1]
    expected = {
        "lpips": {base(torchvision.models.VGG16_Weights.IMAGENET1K_V1.url)},
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
    assert {str(w.folder()) for w in REQUIRED_FILES["lpips"]} == {str(hub / "checkpoints")}
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
        download_weights(["psnr", "lpips", "fid", "niqe"])  # the stand-ins downloaded nothing
    assert built == [("vgg16", "IMAGENET1K_V1"), ("lpips", "pretrained"), ("fid", "pretrained"),
                     ("niqe", "pretrained")]


def test_fidelity_metrics_run_offline_without_any_weights(empty_caches):
    suite = MetricSuite(["psnr", "ssim"])
    hr = _to_tensor(_photos())
    suite.update(hr, hr)
    assert suite.compute() == {"psnr": float("inf"), "ssim": pytest.approx(1.0)}


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


# ---------------------------------------------------------------------------------------------------------------
# Random mode: every metric builds and gives finite numbers.

@pytest.fixture(scope="module")
def random_suite():
    """All nine metrics with random weights, built once. Big nets on tiny images: one intra-op thread measured ~3x
    faster than two on a 2-core machine shared with other processes (no OpenMP barrier stalls)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield MetricSuite(weights="random")
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
    assert out["fid"] > 0 and 0 < out["ssim"] < 1 and out["lpips"] > 0


def test_random_mode_on_64px_and_fid_with_one_image_is_nan(random_suite):
    suite = random_suite.clone()
    g = torch.Generator().manual_seed(1)
    sr, hr = torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    with pytest.raises(ValueError, match="'niqe' needs images of at least 96x96"):
        suite.update(sr, hr)  # NIQE has no 96x96 block; the error says so before any metric is updated
    assert all(int(m.update_count) == 0 for m in suite.metrics.values())
    # The others on 64x64 (MANIQA is left out for time: it upsamples anything under 224 px, as in the test above).
    for name, metric in suite.metrics.items():
        if name not in ("niqe", "maniqa"):
            metric.update(sr, hr)
    with pytest.warns(UserWarning, match="FID needs at least 2"):
        fid = suite.metrics["fid"].compute()
    assert torch.isnan(fid)
    others = {n: suite.metrics[n].compute().item() for n in suite.names if n not in ("fid", "niqe", "maniqa")}
    assert all(np.isfinite(v) for v in others.values()), others


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
