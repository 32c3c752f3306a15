"""Classical low-light enhancers: stand-in teachers for the low-light task (``task: lle``, Table 9) where the paper's
GSAD (fidelity) and Reti-Diff (realness) are not available, as bicubic stands in for an SR model.

``sr_model`` strings of an ``AnchoredTeacher`` with ``scale: 1`` (:func:`ctsr.models.teachers.load_sr_model`):

* ``identity`` — the input as it is (a floor);
* ``gamma`` — :class:`GammaBrighten`: one gamma curve per image that brings its mean luminance to ``target``
  (smooth, faithful colours: the fidelity stand-in of the tiny and mini worlds);
* ``equalize`` — :class:`Equalize`: per-channel histogram equalisation (kornia), contrast and detail pushed up at
  the cost of faithful tones (the realness stand-in).

Images are (B, 3, H, W) in [0, 1] in and out. No weights, deterministic, any device.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma


class Identity(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(0, 1)


class GammaBrighten(nn.Module):
    """y = x^γ with γ = log(target) / log(mean luma of x), per image (γ clamped to [γ_min, 1]: never darker)."""

    def __init__(self, target: float = 0.45, gamma_min: float = 0.1, eps: float = 1e-3) -> None:
        super().__init__()
        self.target, self.gamma_min, self.eps = target, gamma_min, eps

    def forward(self, x: Tensor) -> Tensor:
        x = x.float().clamp(0, 1)
        luma = (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1).mean(dim=(1, 2)).clamp(self.eps, 1 - self.eps)
        gamma = (torch.log(torch.tensor(self.target)) / torch.log(luma)).clamp(self.gamma_min, 1.0)
        return x.clamp_min(self.eps).pow(gamma.view(-1, 1, 1, 1)).clamp(0, 1)


class Equalize(nn.Module):
    """Per-channel histogram equalisation (``kornia.enhance.equalize``, 256 bins)."""

    def forward(self, x: Tensor) -> Tensor:
        from kornia.enhance import equalize

        return equalize(x.float().clamp(0, 1)).clamp(0, 1)


BASELINES = {"identity": Identity, "gamma": GammaBrighten, "equalize": Equalize}
