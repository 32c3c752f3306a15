"""The networks behind each metric, built by the library that owns it, with pretrained or random weights.

Every builder returns a frozen ``nn.Module`` in eval mode. Scorers map ``(sr, hr)`` — (B, 3, H, W) in [0, 1] — to
per-image scores (B,); the FID builder returns a feature extractor (B, 3, H, W) -> (B, 2048).

``weights='random'`` is a test-only mode: the SAME classes, with random backbones instead of downloaded files
(seeded, so scores are reproducible, and the global RNG is left untouched). A few libraries load backbone weights
unconditionally in their constructors; for those, the loader is replaced for the duration of the build only:

- lpips: pyiqa ``LPIPS(net='alex', pretrained=False)``; its torchvision AlexNet is built with ``weights=None``, the
  random linear heads made non-negative as trained ones are.
- lpips_vgg: ``build_lpips('random')`` (the lpips package: random VGG16 and linear heads).
- dists: pyiqa ``DISTS(pretrained=False)``; its torchvision VGG16 is built with ``weights=None``.
- fid: pyiqa's FID Inception-v3 with its weight loading skipped and He-initialised convolutions.
- niqe: pyiqa ``NIQE`` reading a generated parameter file: a random pristine mean and a random positive-definite
  covariance (36 features), instead of ``niqe_modelparameters.mat``.
- musiq: pyiqa ``MUSIQ(pretrained=False)`` (the KonIQ architecture: one output).
- maniqa: pyiqa ``MANIQA(pretrained=False)`` with timm's ViT-B/8 built ``pretrained=False``; it scores ONE 224x224
  crop per image instead of 20 (ViT-B/8 takes seconds per crop on a CPU).
- clipiqa: pyiqa ``CLIPIQA`` on a randomly initialised CLIP RN50 (OpenAI's RN50 configuration) instead of RN50.pt;
  the prompts are tokenised with the BPE vocabulary shipped in the ``clip`` package.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctsr.checkpoints import weights_only_loads
from ctsr.errors import ConfigError, describe, shown
from ctsr.nets.lpips import build_lpips
from ctsr.metrics.functional import ColorSpace, psnr, ssim

Weights = Literal["pretrained", "random"]

# pyiqa metric names, as in pyiqa.default_model_configs; OSEDiff's test_metrics.py creates each with pyiqa's defaults
# (LPIPS: AlexNet v0.1; MUSIQ on KonIQ; MANIQA on PIPAL; CLIPIQA with its default RN50 prompts).
PYIQA_NAMES = {"lpips": "lpips", "dists": "dists", "niqe": "niqe", "musiq": "musiq", "maniqa": "maniqa-pipal",
               "clipiqa": "clipiqa"}
# NIQE fits its statistics on 96x96 blocks (pyiqa's niqe(); block_size_h/w = 96): smaller images have none.
NIQE_MIN_SIZE = 96


def _frozen(net: nn.Module) -> nn.Module:
    return net.eval().requires_grad_(False)


class Fidelity(nn.Module):
    """PSNR or SSIM per image, on Y or RGB, with a border crop (no weights)."""

    def __init__(self, kind: Literal["psnr", "ssim"], color_space: ColorSpace = "y", crop_border: int = 0) -> None:
        super().__init__()
        self.kind, self.color_space, self.crop_border = kind, color_space, crop_border

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        fn = psnr if self.kind == "psnr" else ssim
        return fn(sr, hr, self.color_space, self.crop_border)


class LPIPSScore(nn.Module):
    """LPIPS-VGG (lpips package, v0.1 heads; the network the suite trains with) per image, on [0, 1] inputs. The
    ``lpips`` column is pyiqa's AlexNet LPIPS, as OSEDiff reports; this one is the ``lpips_vgg`` column."""

    def __init__(self, weights: Weights = "pretrained") -> None:
        super().__init__()
        self.net = build_lpips(weights)

    def forward(self, sr: Tensor, hr: Tensor) -> Tensor:
        return self.net(sr, hr, normalize=True).reshape(-1)


class PyiqaScore(nn.Module):
    """A pyiqa network (``create_metric(...).net``) per image. Called directly rather than through pyiqa's
    ``InferenceModel``, whose device marker is not a registered parameter and so would not follow ``.to()``."""

    def __init__(self, net: nn.Module, full_reference: bool, min_size: int = 0, name: str = "") -> None:
        super().__init__()
        self.net, self.full_reference, self.min_size, self.name = net, full_reference, min_size, name

    def forward(self, sr: Tensor, hr: Tensor | None = None) -> Tensor:
        if min(sr.shape[-2:]) < self.min_size:
            raise ValueError(
                f"metric '{self.name}' needs images of at least {self.min_size}x{self.min_size} pixels, got "
                f"{tuple(sr.shape[-2:])}; leave '{self.name}' out of `metrics` for smaller images."
            )
        out = self.net(sr, hr) if self.full_reference else self.net(sr)
        return out.reshape(-1)


class CleanFIDInception(nn.Module):
    """Inception-v3 pool features (2048) for FID, preprocessed as pyiqa's ``fid`` (clean-fid, mode 'clean'):
    8-bit images, bicubic antialiased resize to 299x299 (PyTorch's antialiased bicubic equals PIL's to ~2e-5 of the
    0-255 range), then (x - 128) / 128 into the pytorch-fid port of the TF Inception (2015-12-05 weights)."""

    num_features = 2048  # read by torchmetrics' FrechetInceptionDistance (skips its dummy forward)

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        self.inception = inception

    def forward(self, img: Tensor) -> Tensor:
        x = img.float().clamp(0, 1).mul(255).round()
        x = F.interpolate(x, size=(299, 299), mode="bicubic", align_corners=False, antialias=True).clamp(0, 255)
        x = (x - 128.0) / 128.0
        return self.inception(x, False, False)[0].flatten(1)


@contextlib.contextmanager
def _seeded(seed: int = 0) -> Iterator[None]:
    """Random builds are reproducible and leave the caller's RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _openai_clip_importable() -> Iterator[None]:
    """openai-clip 1.0.1 runs ``from pkg_resources import packaging`` (for a torch version check) and setuptools
    >= 81 no longer ships pkg_resources; lend it a stand-in exposing ``packaging`` while pyiqa imports clip."""
    try:
        import pkg_resources  # noqa: F401

        yield
        return
    except ImportError:
        pass
    import packaging.version

    shim = types.ModuleType("pkg_resources")
    shim.packaging = packaging  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = shim
    try:
        yield
    finally:
        if sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]


def _pyiqa_net(name: str, **kwargs) -> nn.Module:
    import pyiqa

    return pyiqa.create_metric(PYIQA_NAMES[name], device=torch.device("cpu"), **kwargs).net


def _random_clip_rn50(*args, **kwargs) -> nn.Module:
    from pyiqa.archs.clip_model import CLIP

    # OpenAI CLIP RN50: embed 1024, input 224, ResNet (3, 4, 6, 3) width 64; text: context 77, vocab 49408,
    # width 512, 8 heads, 12 layers (what build_model reads from RN50.pt's state dict).
    return CLIP(1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12).float().eval()  # as build_model


def _niqe_random_params(folder: Path, seed: int = 0) -> Path:
    import scipy.io

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((36, 36))
    path = folder / "niqe_random_params.mat"
    scipy.io.savemat(path, {"mu_prisparam": rng.standard_normal((1, 36)), "cov_prisparam": a @ a.T / 36 + np.eye(36)})
    return path


def _niqe_pretrained_params(folder: Path) -> Path:
    """pyiqa's ``niqe_modelparameters.mat`` when cached; else BasicSR's ``niqe_pris_params.npz`` (the same MATLAB
    pristine model, as BasicSR's niqe.py uses it) written as the ``.mat`` pyiqa's NIQE reads. Neither reader can
    run code: scipy.io.loadmat reads MATLAB arrays, ``np.load(allow_pickle=False)`` refuses object arrays."""
    from ctsr.metrics.weight_files import NIQE_BASICSR, check_file, niqe_parameters

    path, _ = niqe_parameters()
    if path.suffix == ".mat":
        return path
    import scipy.io

    check_file(path, "metric 'niqe' weights", NIQE_BASICSR.keys)
    with np.load(path, allow_pickle=False) as params:
        mu, cov = params["mu_pris_param"], params["cov_pris_param"]
    out = folder / "niqe_basicsr_params.mat"
    scipy.io.savemat(out, {"mu_prisparam": mu, "cov_prisparam": cov})
    return out


def _clip_tensors_only(name: str, device: str | torch.device = "cpu", jit: bool = False,
                       download_root: str | None = None) -> nn.Module:
    """pyiqa's ``clip_model.load`` for CLIP-IQA, reading the file as tensors only: OpenAI's ``RN50.pt`` is a
    TorchScript archive, which pyiqa opens with ``torch.jit.load`` (TorchScript can run code); here its tensors
    are read by :func:`ctsr.checkpoints.read_weights` (a state-dict file: weights-only) and handed to pyiqa's
    ``build_model``. A missing file is downloaded as pyiqa would (a connected machine)."""
    from pyiqa.archs.clip_model import _MODELS, _download, build_model

    from ctsr.checkpoints import read_weights
    from ctsr.metrics.weight_files import clip_cache_dir

    if name in _MODELS:
        root = Path(download_root) if download_root else clip_cache_dir()
        path = root / os.path.basename(_MODELS[name])
        if not path.is_file():
            _download(_MODELS[name], str(root))
    else:
        path = Path(name)
    what = "metric 'clipiqa' weights"
    state = dict(read_weights(path, what))
    try:
        model = build_model(state).to(device)
    except (KeyError, IndexError, AssertionError, RuntimeError, ValueError) as err:
        raise ConfigError(f"{what}: '{shown(path)}' is not an OpenAI CLIP model file ({describe(err)})") from None
    if str(device) == "cpu":
        model.float()
    return model


def build_scorer(name: str, weights: Weights = "pretrained") -> nn.Module:
    """The per-image scorer of a learned or parametric metric (lpips, lpips_vgg, dists, niqe, musiq, maniqa,
    clipiqa).
    Pretrained mode lets the library read (or, on a connected machine, download) its files; check them first
    with :func:`ctsr.metrics.weight_files.check_weights` to fail clearly offline. Files are read as tensors only:
    every present file is checked before the library touches it, and while the network is built every
    ``torch.load`` goes through ctsr's weights-only loader (:func:`ctsr.checkpoints.weights_only_loads`)."""
    from ctsr.metrics.weight_files import check_present

    random = weights == "random"
    if not random:
        check_present([name])
    with _seeded() if random else contextlib.nullcontext(), weights_only_loads(f"metric '{name}' weights"):
        return _build_scorer(name, random)


def _build_scorer(name: str, random: bool) -> nn.Module:
    weights: Weights = "random" if random else "pretrained"
    if name == "lpips":  # pyiqa's LPIPS-Alex: sr is its first input, hr the reference, as pyiqa's forward
        if random:
            import torchvision

            alexnet = torchvision.models.alexnet
            with mock.patch("torchvision.models.alexnet", lambda *a, **k: alexnet(weights=None)):
                net = _pyiqa_net(name, pretrained=False)
            with torch.no_grad():  # trained LPIPS heads are non-negative (a distance); so are the random ones
                for lin in net.lins:
                    lin.model[-1].weight.abs_()
        else:
            net = _pyiqa_net(name)
        return _frozen(PyiqaScore(net, full_reference=True, name=name))
    if name == "lpips_vgg":
        return _frozen(LPIPSScore(weights))
    if name == "dists":
        if random:
            import torchvision

            vgg16 = torchvision.models.vgg16
            with mock.patch("torchvision.models.vgg16", lambda *a, **k: vgg16(weights=None)):
                net = _pyiqa_net(name, pretrained=False)
        else:
            net = _pyiqa_net(name)
        return _frozen(PyiqaScore(net, full_reference=True, name=name))
    if name == "niqe":
        with tempfile.TemporaryDirectory() as tmp:  # NIQE reads the file in its constructor
            params = _niqe_random_params(Path(tmp)) if random else _niqe_pretrained_params(Path(tmp))
            net = _pyiqa_net(name, pretrained_model_path=str(params))
        return _frozen(PyiqaScore(net, full_reference=False, min_size=NIQE_MIN_SIZE, name=name))
    if name == "musiq":
        net = _pyiqa_net(name, pretrained=False) if random else _pyiqa_net(name)
        return _frozen(PyiqaScore(net, full_reference=False, name=name))
    if name == "maniqa":
        if random:
            import timm

            create = timm.create_model
            with mock.patch("timm.create_model", lambda n, *a, pretrained=False, **k: create(n, *a, **k)):
                net = _pyiqa_net(name, pretrained=False)
            net.test_sample = 1
        else:
            net = _pyiqa_net(name)
        return _frozen(PyiqaScore(net, full_reference=False, name=name))
    if name == "clipiqa":
        with _openai_clip_importable():
            from pyiqa.archs import clipiqa_arch
        with mock.patch.object(clipiqa_arch, "load", _random_clip_rn50 if random else _clip_tensors_only):
            net = _pyiqa_net(name)
        return _frozen(PyiqaScore(net, full_reference=False, name=name))
    raise ValueError(f"no learned scorer for metric {name!r}")


def build_fid_features(weights: Weights = "pretrained") -> CleanFIDInception:
    """The FID feature extractor: pyiqa's FID Inception-v3 (``pt_inception-2015-12-05-6726825d.pth``), read as
    tensors only (checked first, then loaded through ctsr's weights-only loader)."""
    from pyiqa.archs import inception

    from ctsr.metrics.weight_files import check_present

    if weights == "random":
        with _seeded(), mock.patch.object(inception, "load_pretrained_network", lambda *a, **k: None):
            net = inception.InceptionV3(output_blocks=[3], resize_input=False, normalize_input=False)
            for m in net.modules():  # He init keeps activations O(1) through the 40-odd conv-BN-ReLU layers
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    else:
        check_present(["fid"])
        with weights_only_loads("metric 'fid' weights"):
            net = inception.InceptionV3(output_blocks=[3], resize_input=False, normalize_input=False)
    return _frozen(CleanFIDInception(net))
