"""LPIPS (VGG) as the perceptual reconstruction loss of eq. 1, with an explicit choice of backbone weights."""
from __future__ import annotations

import torch
from torch import nn

from ctsr.nets.lpips import LPIPSWeights, build_lpips


class FrozenLPIPS(nn.Module):
    """Wrapper that stays in eval mode; inputs in [-1,1], output (B,1,1,1). The network: :func:`build_lpips`."""

    def __init__(self, weights: LPIPSWeights = "pretrained") -> None:
        super().__init__()
        self.net = build_lpips(weights)

    def train(self, mode: bool = True) -> "FrozenLPIPS":
        return super().train(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(a, b)
