"""The networks behind each metric, built by the library that owns it, with pretrained or random weights.

Every builder returns a frozen ``nn.Module`` in eval mode. Scorers map ``(sr, hr)`` — (B, 3, H, W) in [0, 1] — to
per-image scores (B,); the FID builder returns a feature extractor (B, 3, H, W) -> (B, 2048).

``weights='random'`` is a test-only mode: the SAME classes, with random backbones instead of downloaded files
(seeded, so scores are reproducible, and the global RNG is left untouched). A few libraries load backbone weights
unconditionally in their constructors; those classes are assembled explicitly here (:func:`_assemble`: the class's
own modules and attributes, its own ``forward``, the backbone built without a download), and
``tests/test_metrics.py`` checks each assembly against the library's constructor:

- lpips: pyiqa ``LPIPS`` (AlexNet, v0.1 heads) around torchvision's AlexNet built with ``weights=None``, the random
  linear heads made non-negative as trained ones are.
- lpips_vgg: ``build_lpips('random')`` (the lpips package: random VGG16 and linear heads).
- dists: pyiqa ``DISTS`` around torchvision's VGG16 built with ``weights=None``.
- fid: pyiqa's FID Inception-v3 (``InceptionV3`` over the FID blocks) without its weights, He-initialised
  convolutions.
- niqe: pyiqa ``NIQE`` reading a generated parameter file: a random pristine mean and a random positive-definite
  covariance (36 features), instead of ``niqe_modelparameters.mat``.
- musiq: pyiqa ``MUSIQ(pretrained=False)`` (the KonIQ architecture: one output).
- maniqa: pyiqa ``MANIQA`` (PIPAL configuration) around timm's ViT-B/8 built ``pretrained=False``; it scores ONE
  224x224 crop per image instead of 20 (ViT-B/8 takes seconds per crop on a CPU).
- clipiqa: pyiqa ``CLIPIQA`` on a randomly initialised CLIP RN50 (OpenAI's RN50 configuration) instead of RN50.pt;
  the prompts are tokenised with the BPE vocabulary shipped in the ``clip`` package. With pretrained weights the
  same assembly holds OpenAI's RN50 read as tensors only (:func:`_clip_tensors_only`).
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from collections import OrderedDict
from typing import Literal

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
            net = random_lpips_alex()
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
            net = random_dists()
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
            net = random_maniqa()
            net.test_sample = 1
        else:
            net = _pyiqa_net(name)
        return _frozen(PyiqaScore(net, full_reference=False, name=name))
    if name == "clipiqa":
        net = clipiqa(_random_clip_rn50() if random else _clip_tensors_only("RN50"))
        return _frozen(PyiqaScore(net, full_reference=False, name=name))
    raise ValueError(f"no learned scorer for metric {name!r}")


def build_fid_features(weights: Weights = "pretrained") -> CleanFIDInception:
    """The FID feature extractor: pyiqa's FID Inception-v3 (``pt_inception-2015-12-05-6726825d.pth``), read as
    tensors only (checked first, then loaded through ctsr's weights-only loader)."""
    from pyiqa.archs import inception

    from ctsr.metrics.weight_files import check_present

    if weights == "random":
        with _seeded():
            net = random_fid_inception()
            for m in net.modules():  # He init keeps activations O(1) through the 40-odd conv-BN-ReLU layers
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    else:
        check_present(["fid"])
        with weights_only_loads("metric 'fid' weights"):
            net = inception.InceptionV3(output_blocks=[3], resize_input=False, normalize_input=False)
    return _frozen(CleanFIDInception(net))


# -- explicit constructions: the libraries' classes without the downloads in their constructors ---------------------
def _assemble(cls: type[nn.Module], parts: dict, buffers: dict[str, Tensor] | None = None) -> nn.Module:
    """An instance of ``cls`` made of ``parts`` (submodules, parameters and plain attributes, registered in this
    order, as the constructor registers them) and ``buffers``, instead of by ``cls.__init__``, which downloads
    weights: the same class, its own ``forward``. ``tests/test_metrics.py`` builds each class with its constructor
    (downloads stubbed in the test) and checks the assembly holds the same state, attributes and outputs."""
    obj = cls.__new__(cls)
    nn.Module.__init__(obj)
    for key, value in parts.items():
        setattr(obj, key, value)
    for key, value in (buffers or {}).items():
        obj.register_buffer(key, value)
    return obj


def _renamed(layers: nn.Sequential, start: int) -> list[tuple[str, nn.Module]]:
    """(name, layer) pairs named by their index in the network they come from (as ``add_module(str(x), …)``)."""
    return [(str(start + i), m) for i, m in enumerate(layers)]


def random_lpips_alex() -> nn.Module:
    """pyiqa's ``LPIPS(net='alex', version='0.1')`` with torchvision's AlexNet built ``weights=None`` (pyiqa's
    ``alexnet`` wrapper loads ImageNet weights whatever ``pretrained`` says) and random linear heads."""
    import torchvision
    from pyiqa.archs import lpips_arch

    features = torchvision.models.alexnet(weights=None).features
    cuts = (0, 2, 5, 8, 10, 12)
    backbone = _assemble(lpips_arch.alexnet, {
        **{f"slice{k + 1}": nn.Sequential(OrderedDict(_renamed(features[a:b], a)))
           for k, (a, b) in enumerate(zip(cuts, cuts[1:]))},
        "N_slices": 5})
    backbone.requires_grad_(False)
    chns = [64, 192, 384, 256, 256]
    parts = dict(pnet_type="alex", pnet_tune=False, pnet_rand=False, spatial=False, lpips=True, version="0.1",
                 scaling_layer=lpips_arch.ScalingLayer(), semantic_weight_layer=-1, chns=chns, L=len(chns),
                 net=backbone)
    lins = [lpips_arch.NetLinLayer(c, use_dropout=True) for c in chns]
    parts.update({f"lin{k}": lin for k, lin in enumerate(lins)}, lins=nn.ModuleList(lins))
    return _assemble(lpips_arch.LPIPS, parts).eval()


def random_dists() -> nn.Module:
    """pyiqa's ``DISTS`` with torchvision's VGG16 built ``weights=None`` (pyiqa loads ImageNet weights always)."""
    import torchvision
    from pyiqa.archs import dists_arch

    vgg = torchvision.models.vgg16(weights=None).features
    stages = {"stage1": nn.Sequential(OrderedDict(_renamed(vgg[0:4], 0)))}
    for k, (pool, end, channels) in enumerate(((4, 9, 64), (9, 16, 128), (16, 23, 256), (23, 30, 512)), start=2):
        layers = [(str(pool), dists_arch.L2pooling(channels=channels))] + _renamed(vgg[pool + 1 : end], pool + 1)
        stages[f"stage{k}"] = nn.Sequential(OrderedDict(layers))
    chns = [3, 64, 128, 256, 512, 512]
    net = _assemble(dists_arch.DISTS, stages, buffers={
        "mean": torch.tensor([0.485, 0.456, 0.406]).view(1, -1, 1, 1),
        "std": torch.tensor([0.229, 0.224, 0.225]).view(1, -1, 1, 1)})
    net.requires_grad_(False)
    net.chns = chns
    net.alpha = nn.Parameter(torch.randn(1, sum(chns), 1, 1).normal_(0.1, 0.01))
    net.beta = nn.Parameter(torch.randn(1, sum(chns), 1, 1).normal_(0.1, 0.01))
    return net


def random_maniqa() -> nn.Module:
    """pyiqa's ``MANIQA`` (its defaults, PIPAL's configuration) around timm's ViT-B/8 built ``pretrained=False``
    (pyiqa's constructor asks timm for the pretrained ViT always)."""
    import timm
    from pyiqa.archs import maniqa_arch
    from pyiqa.archs.constants import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
    from timm.models.vision_transformer import Block

    embed_dim, img_size, patch_size, num_tab, drop = 768, 224, 8, 2, 0.1
    size = img_size // patch_size
    swin = dict(patches_resolution=(size, size), depths=[2, 2], num_heads=[4, 4], window_size=4, dim_mlp=768,
                scale=0.13)
    vit, save_output = timm.create_model("vit_base_patch8_224", pretrained=False), maniqa_arch.SaveOutput()
    for layer in vit.modules():
        if isinstance(layer, Block):
            layer.register_forward_hook(save_output)

    def head(activation: nn.Module) -> nn.Sequential:
        return nn.Sequential(nn.Linear(embed_dim // 2, embed_dim // 2), nn.ReLU(), nn.Dropout(drop),
                             nn.Linear(embed_dim // 2, 1), activation)

    return _assemble(maniqa_arch.MANIQA, dict(
        img_size=img_size, patch_size=patch_size, input_size=size, test_sample=20, patches_resolution=(size, size),
        vit=vit, save_output=save_output,
        tablock1=nn.ModuleList(maniqa_arch.TABlock(size**2) for _ in range(num_tab)),
        conv1=nn.Conv2d(embed_dim * 4, embed_dim, 1, 1, 0),
        swintransformer1=maniqa_arch.SwinTransformer(embed_dim=embed_dim, **swin),
        tablock2=nn.ModuleList(maniqa_arch.TABlock(size**2) for _ in range(num_tab)),
        conv2=nn.Conv2d(embed_dim, embed_dim // 2, 1, 1, 0),
        swintransformer2=maniqa_arch.SwinTransformer(embed_dim=embed_dim // 2, **swin),
        fc_score=head(nn.ReLU()), fc_weight=head(nn.Sigmoid()),
        default_mean=torch.Tensor(IMAGENET_INCEPTION_MEAN).view(1, 3, 1, 1),
        default_std=torch.Tensor(IMAGENET_INCEPTION_STD).view(1, 3, 1, 1)))


CLIPIQA_PROMPTS = ("Good image", "bad image", "Sharp image", "blurry image", "sharp edges", "blurry edges",
                   "High resolution image", "low resolution image", "Noise-free image", "noisy image")


def clipiqa(clip_model: nn.Module) -> nn.Module:
    """pyiqa's ``CLIPIQA`` (``model_type='clipiqa'``, RN50, pyiqa's ten prompts) around ``clip_model``, instead of
    the model its constructor loads with ``torch.jit.load`` (TorchScript can run code)."""
    with _openai_clip_importable():
        from pyiqa.archs import clipiqa_arch
        from pyiqa.archs.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    clip_model.requires_grad_(False)
    return _assemble(clipiqa_arch.CLIPIQA, dict(
        clip_model=[clip_model],  # a list, as pyiqa keeps it: not a submodule, not in the state dict
        prompt_pairs=clipiqa_arch.clip.tokenize(list(CLIPIQA_PROMPTS)), model_type="clipiqa", pos_embedding=False,
        default_mean=torch.Tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1),
        default_std=torch.Tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)))


def random_fid_inception() -> nn.Module:
    """pyiqa's ``InceptionV3(output_blocks=[3], resize_input=False, normalize_input=False)`` over the FID Inception
    blocks (``fid_inception_v3`` without ``load_pretrained_network``), random weights."""
    from pyiqa.archs import inception

    net = inception._inception_v3(num_classes=1008, aux_logits=False, pretrained=False)
    for name, block in (("Mixed_5b", inception.FIDInceptionA(192, pool_features=32)),
                        ("Mixed_5c", inception.FIDInceptionA(256, pool_features=64)),
                        ("Mixed_5d", inception.FIDInceptionA(288, pool_features=64)),
                        ("Mixed_6b", inception.FIDInceptionC(768, channels_7x7=128)),
                        ("Mixed_6c", inception.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6d", inception.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6e", inception.FIDInceptionC(768, channels_7x7=192)),
                        ("Mixed_7b", inception.FIDInceptionE_1(1280)),
                        ("Mixed_7c", inception.FIDInceptionE_2(2048))):
        setattr(net, name, block)
    blocks = nn.ModuleList([
        nn.Sequential(net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2)),
        nn.Sequential(net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)),
        nn.Sequential(net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c,
                      net.Mixed_6d, net.Mixed_6e),
        nn.Sequential(net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1)))])
    out = _assemble(inception.InceptionV3, dict(resize_input=False, normalize_input=False, output_blocks=[3],
                                                last_needed_block=3, blocks=blocks, fc=net.fc))
    return out.requires_grad_(False)
