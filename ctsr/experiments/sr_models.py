"""Simple image-to-image SR models for ablations that must run without weights (tiny sizes)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Bilinear(nn.Module):
    """Bilinear ×scale: a second weight-free fidelity teacher beside bicubic (Table 5 at tiny size).

    (B, 3, h, w) in [0, 1] → (B, 3, scale·h, scale·w) in [0, 1].
    """

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False).clamp(0, 1)
