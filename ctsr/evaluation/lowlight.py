"""Low-light scores as Table 9 reports them: PSNR, SSIM, LPIPS of an enhanced image against its normal-light target.

Two protocols:

* ``gsad`` — GSAD's ``test.py`` (github.com/jinnh/GSAD), whose LOL-v2-synthetic numbers Table 9 repeats: the output
  is quantised to 8 bits (round), then its brightness is matched to the target's ("following LLFlow and KinD"): the
  mean gray level (OpenCV's BGR2GRAY weights 0.299 R + 0.587 G + 0.114 B) of output and target, output × their
  ratio, clipped to [0, 1]; both images go back to 8 bits by truncation (``astype(np.uint8)``, as there — the target
  ``v / 255 · 255`` can land one level lower). PSNR on the 8-bit RGB arrays (float64 MSE, peak 255); SSIM as
  scikit-image's ``structural_similarity`` over the three channels (7×7 uniform window, sample covariance, data
  range 255: the call GSAD makes, ``multichannel=True``); LPIPS-Alex on images in [−1, 1].
* ``plain`` — no brightness matching: 8-bit (rounded) RGB, the same PSNR, SSIM and LPIPS.

Written for this project from GSAD's test.py and utils/util.py (read, not copied); GSAD feeds OpenCV's BGR arrays to
LPIPS (its ``tensor2img`` swaps the channels), here LPIPS sees RGB — the one step not reproduced.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

Protocol = Literal["gsad", "plain"]
GRAY = np.array([0.299, 0.587, 0.114])  # OpenCV's BGR2GRAY weights, per R, G, B


def to_uint8(x: Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] → (H, W, 3) uint8, rounded (GSAD's ``tensor2img``; a PNG writer's rounding)."""
    return np.clip((x.detach().float().cpu().clamp(0, 1).numpy().transpose(1, 2, 0) * 255.0).round(), 0, 255
                   ).astype(np.uint8)


def gt_mean_adjust(out_u8: np.ndarray, gt_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GSAD's brightness matching on 8-bit RGB arrays; returns the adjusted output and the target, both 8-bit."""
    out, gt = out_u8 / 255.0, gt_u8 / 255.0
    mean_out = float((out.astype(np.float32) @ GRAY.astype(np.float32)).mean())
    mean_gt = float((gt.astype(np.float32) @ GRAY.astype(np.float32)).mean())
    adjusted = np.clip(out * (mean_gt / mean_out), 0, 1) if mean_out > 0 else out
    return (adjusted * 255).astype(np.uint8), (gt * 255).astype(np.uint8)


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(20 * np.log10(255.0 / np.sqrt(mse)))


def ssim_u8(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=-1, data_range=255))


def prepare_pair(sr: Tensor, hr: Tensor, protocol: Protocol = "gsad") -> tuple[np.ndarray, np.ndarray]:
    """One (output, target) pair (3, H, W) in [0, 1] → the two 8-bit RGB arrays the protocol scores."""
    out_u8, gt_u8 = to_uint8(sr), to_uint8(hr)
    if protocol == "gsad":
        return gt_mean_adjust(out_u8, gt_u8)
    if protocol != "plain":
        raise ValueError(f"protocol must be gsad or plain, got {protocol!r}")
    return out_u8, gt_u8


class LowLightScores:
    """PSNR, SSIM and LPIPS averaged over images (``update`` per batch, ``compute`` at the end).

    Args:
        protocol: ``gsad`` or ``plain`` (module docstring).
        lpips: an LPIPS callable on (B, 3, H, W) in [0, 1] pairs (e.g. a ``MetricSuite(["lpips"])``'s network), or
            None to leave the column out.
    """

    def __init__(self, protocol: Protocol = "gsad", lpips=None) -> None:
        self.protocol, self.lpips = protocol, lpips
        self.values: dict[str, list[float]] = {"psnr": [], "ssim": [], "lpips": []}

    @torch.no_grad()
    def update(self, sr: Tensor, hr: Tensor) -> None:
        for i in range(sr.shape[0]):
            out, gt = prepare_pair(sr[i], hr[i], self.protocol)
            self.values["psnr"].append(psnr_u8(out, gt))
            self.values["ssim"].append(ssim_u8(out, gt))
            if self.lpips is not None:
                a = torch.from_numpy(out.transpose(2, 0, 1).copy()).float()[None] / 255
                b = torch.from_numpy(gt.transpose(2, 0, 1).copy()).float()[None] / 255
                self.values["lpips"].append(float(self.lpips(a, b)))

    def compute(self) -> dict[str, float]:
        return {k: float(np.mean(v)) for k, v in self.values.items() if v}
