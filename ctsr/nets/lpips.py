"""LPIPS-VGG (the lpips package, v0.1 heads), frozen, with an explicit choice of backbone weights: the loss of eq. 1
(:class:`ctsr.losses.perceptual.FrozenLPIPS`) and the ``lpips_vgg`` metric (:mod:`ctsr.metrics.networks`)."""
from __future__ import annotations

from typing import Literal

from torch import nn

from ctsr.checkpoints import check_weight_file, weights_only_loads
from ctsr.errors import check
from ctsr.quiet import lpips_backbone_warnings
from ctsr.weights import VGG16_FILE, require_file, torch_hub_checkpoints

LPIPSWeights = Literal["pretrained", "random"]


def build_lpips(weights: LPIPSWeights = "pretrained") -> nn.Module:
    """LPIPS-VGG, frozen. ``pretrained``: the ImageNet VGG16 backbone + the LPIPS linear heads (shipped in the
    lpips package); the backbone file must be in torch's hub cache. ``random``: a random VGG16 of the same shape
    (tests and the tiny quick start only — not a perceptual metric)."""
    import lpips

    check(weights in ("pretrained", "random"), "lpips_weights", f"must be pretrained or random, got {weights!r}")
    what = "LPIPS(vgg) loss"
    # torchvision's and lpips' own torch.load calls read tensors only; lpips builds its VGG with torchvision's
    # deprecated `pretrained=` argument (two warnings a user cannot act on)
    with weights_only_loads(what), lpips_backbone_warnings():
        if weights == "pretrained":
            path = require_file(torch_hub_checkpoints() / VGG16_FILE, what,
                                "https://download.pytorch.org/models/" + VGG16_FILE)
            check_weight_file(path, what)  # a pickle that would run code: one line, before torchvision reads it
            net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=False, verbose=False)
        else:
            net = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
    return net.eval().requires_grad_(False)
