"""LPIPS (VGG) as the perceptual reconstruction loss of eq. 1, with an explicit choice of backbone weights."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ctsr.checkpoints import check_weight_file, weights_only_loads
from ctsr.errors import check
from ctsr.weights import VGG16_FILE, require_file, torch_hub_checkpoints


def build_lpips(weights: Literal["pretrained", "random"] = "pretrained") -> nn.Module:
    """LPIPS-VGG, frozen. ``pretrained``: the ImageNet VGG16 backbone + the LPIPS linear heads (shipped in the
    lpips package); the backbone file must be in torch's hub cache. ``random``: a random VGG16 of the same shape
    (tests and the tiny quick start only — not a perceptual metric)."""
    import lpips

    check(weights in ("pretrained", "random"), "lpips_weights", f"must be pretrained or random, got {weights!r}")
    what = "LPIPS(vgg) loss"
    with weights_only_loads(what):  # torchvision's and lpips' own torch.load calls read tensors only
        if weights == "pretrained":
            path = require_file(torch_hub_checkpoints() / VGG16_FILE, what,
                                "https://download.pytorch.org/models/" + VGG16_FILE)
            check_weight_file(path, what)  # a pickle that would run code: one line, before torchvision reads it
            net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=False, verbose=False)
        else:
            net = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
    return net.eval().requires_grad_(False)


class FrozenLPIPS(nn.Module):
    """Wrapper that stays in eval mode; inputs in [-1,1], output (B,1,1,1)."""

    def __init__(self, weights: Literal["pretrained", "random"] = "pretrained") -> None:
        super().__init__()
        self.net = build_lpips(weights)

    def train(self, mode: bool = True) -> "FrozenLPIPS":
        return super().train(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(a, b)
