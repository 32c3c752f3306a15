"""Reti-Diff (He et al., ICLR 2025, github.com/ChunmingHe/Reti-Diff), Table 9's realness teacher, written for this
project (sources followed: :mod:`ctsr.models.retidiff.rgformer`, :mod:`ctsr.models.retidiff.prior`).

* :class:`RetiDiffNet` — the test network ``RetiDiffS2_Interface`` in its official layout: the RGformer ``G``, the
  image and Retinex prior encoders and denoisers, and the two latent diffusions that hold them (again, as the
  official module does: the same modules under two names each);
* :class:`RetinexDecomposition` — the frozen decomposition net (``retinex_decomnet.pth``);
* :class:`RetiDiffEnhancer` — both as a low-light enhancer, (B, 3, H, W) in [0, 1] → the same size in [0, 1], as
  ``S2_Interface_Model.test`` runs them (reflect-pad to a multiple of 8, decompose, sample both priors, RGformer,
  crop; ``tensor2img`` clamps to [0, 1]);
* :func:`load_pretrained` / :class:`PretrainedRetiDiff` — from the release files, strictly, weights-only.

``sr_model`` strings (scale 1 only): ``retidiff`` (``weights/llie_syn.pth`` + ``weights/retinex_decomnet.pth``) or
``retidiff:NET[,DECOM]`` (DECOM defaults to ``retinex_decomnet.pth`` beside NET).

The release file was trained as ``RetiDiffS2``, whose RGformer has an extra training-only head ``G.decom.*``; the
official test loads it with ``strict_load_g: False``, which drops those names. Here they are the only names allowed
to be dropped: everything else must match name for name, buffers included. Deviations, stated: the priors' x_T come
from a private CPU generator (seed 0, the test config's ``manual_seed``) rather than the global CUDA one.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ctsr.inference.tiling import pad_to_multiple
from ctsr.models.release_weights import load_strict, read_state, require
from ctsr.models.retidiff.prior import (
    FEATS, ImagePriorEncoder, LatentDDPM, PriorDenoiser, RetinexDecomposition, RetinexPriorEncoder, linear_betas,
)
from ctsr.models.retidiff.rgformer import RGformer

__all__ = ["RetiDiffNet", "RGformer", "RetinexDecomposition", "ImagePriorEncoder", "RetinexPriorEncoder",
           "PriorDenoiser", "LatentDDPM", "linear_betas", "RetiDiffEnhancer", "PretrainedRetiDiff", "load_pretrained",
           "parse_spec", "WEIGHTS_FILE", "DECOM_FILE", "RELEASE_PAGE", "TRAINING_ONLY"]

WEIGHTS_FILE = "llie_syn.pth"             # options/test_LLIE_syn.yml: pretrain_network_g
DECOM_FILE = "retinex_decomnet.pth"       # options/test_LLIE_syn.yml: pretrain_decomnet_low
RELEASE_PAGE = ("https://github.com/ChunmingHe/Reti-Diff (README, Requirements: the pretrained-model Google Drive "
                "folder https://drive.google.com/drive/folders/1GeYHroTZhF6vT-vpd7Rw_MgYJNZadb7L)")
DECOM_PAGE = ("https://github.com/ChunmingHe/Reti-Diff/raw/main/pretrained_models/retinex_decomnet.pth "
              "(in the repository's pretrained_models/)")
TRAINING_ONLY = ("G.decom.",)             # RetiDiffS2's training head, dropped by strict_load_g: False
WEIGHTS_DIR = "weights"
WINDOW = 8                                # options/test_LLIE_syn.yml: val.window_size


class RetiDiffNet(nn.Module):
    """``RetiDiffS2_Interface`` (S2_interface_arch.py l. 500–564). Defaults: ``options/test_LLIE_syn.yml``."""

    def __init__(self, n_encoder_res: int = 5, inp_channels: int = 3, out_channels: int = 3, dim: int = 64,
                 num_blocks=(3, 3, 3, 3), num_refinement_blocks: int = 3, heads=(1, 2, 4, 8),
                 ffn_expansion_factor: float = 2.66, bias: bool = False, LayerNorm_type: str = "WithBias",  # noqa: N803
                 n_denoise_res: int = 1, linear_start: float = 0.1, linear_end: float = 0.99,
                 timesteps: int = 4) -> None:
        super().__init__()
        self.G = RGformer(inp_channels, out_channels, dim, num_blocks, num_refinement_blocks, heads,
                          ffn_expansion_factor, bias, LayerNorm_type)
        self.img_condition = ImagePriorEncoder(48, FEATS, n_encoder_res)
        self.rex_condition = RetinexPriorEncoder(64, FEATS, n_encoder_res)
        self.img_denoise = PriorDenoiser(FEATS, n_denoise_res, timesteps)
        self.rex_denoise = PriorDenoiser(FEATS, n_denoise_res, timesteps)
        self.img_diffusion = LatentDDPM(self.img_denoise, self.img_condition, FEATS, timesteps, linear_start,
                                        linear_end)
        self.rex_diffusion = LatentDDPM(self.rex_denoise, self.rex_condition, FEATS, timesteps, linear_start,
                                        linear_end)

    def forward(self, img: Tensor, retinex: Tensor, x_T_rex: Tensor, x_T_img: Tensor) -> Tensor:
        """The enhanced image (unclamped) for ``img`` (B, 3, H, W) in [0, 1] and its Retinex map [R, L]."""
        rex = self.rex_diffusion.sample(retinex, x_T_rex)
        prior = self.img_diffusion.sample(img, x_T_img)
        return self.G(img, rex, prior)


class RetiDiffEnhancer(nn.Module):
    """Reti-Diff as an image enhancer (see the module notes).

    Args:
        net / decom: the two networks.
        seed: the priors' x_T seed; one private CPU generator seeded once (None: the global generator).
    """

    def __init__(self, net: RetiDiffNet, decom: RetinexDecomposition, seed: int | None = 0) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.decom = decom.eval().requires_grad_(False)
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def train(self, mode: bool = True) -> "RetiDiffEnhancer":
        return super().train(False)

    def draw(self, batch: int) -> tuple[Tensor, Tensor]:
        """(x_T of the Retinex chain, x_T of the image chain), in the official order: each chain draws its x_T and
        then, at every step, a noise it does not use (``p_sample`` calls ``noise_like`` and returns the mean only),
        so the image chain's x_T is the (T + 2)-th draw."""
        out = []
        for diffusion in (self.net.rex_diffusion, self.net.img_diffusion):
            shape = (batch, diffusion.channels * 4)
            out.append(torch.randn(shape, generator=self.generator))
            for _ in range(diffusion.num_timesteps):
                torch.randn(shape, generator=self.generator)   # drawn and discarded, as officially
        return out[0], out[1]

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        y = pad_to_multiple(x.float(), WINDOW)
        r, l_ = self.decom(y)
        x_rex, x_img = (t.to(y.device, y.dtype) for t in self.draw(y.shape[0]))
        out = self.net(y, torch.cat([r, l_], dim=1), x_rex, x_img)
        return out[..., :h, :w].clamp(0, 1).to(x.dtype)


def load_net(path: str | Path, model: RetiDiffNet | None = None, what: str = "Reti-Diff network") -> RetiDiffNet:
    """The release ``llie_syn.pth`` (BasicSR: ``params_ema``, else ``params``) into ``model`` (default: the
    released configuration), strictly but for the training-only ``G.decom.*`` names."""
    state = read_state(path, what, wrappers=("params_ema", "params"))
    return load_strict(model if model is not None else RetiDiffNet(), state, path, what, ignored=TRAINING_ONLY)


def load_decom(path: str | Path, what: str = "Reti-Diff Retinex decomposition") -> RetinexDecomposition:
    return load_strict(RetinexDecomposition(), read_state(path, what), path, what)


def load_pretrained(weights: str | Path | None = None, decom: str | Path | None = None,
                    seed: int | None = 0) -> RetiDiffEnhancer:
    """The released LOL-v2-synthetic Reti-Diff: ``weights`` (default ``weights/llie_syn.pth``) and ``decom``
    (default ``retinex_decomnet.pth`` beside it)."""
    net_path = Path(weights).expanduser() if weights else Path(WEIGHTS_DIR) / WEIGHTS_FILE
    decom_path = Path(decom).expanduser() if decom else net_path.parent / DECOM_FILE
    require(net_path, "Reti-Diff (LOL-v2-synthetic) network", RELEASE_PAGE)
    require(decom_path, "Reti-Diff Retinex decomposition net", DECOM_PAGE)
    return RetiDiffEnhancer(load_net(net_path), load_decom(decom_path), seed=seed)


def parse_spec(spec: str) -> tuple[str | None, str | None] | None:
    """``retidiff`` / ``retidiff:NET[,DECOM]`` → (NET, DECOM); None if ``spec`` is not one."""
    head, _, rest = spec.partition(":")
    if head.lower() not in ("retidiff", "reti-diff"):
        return None
    net, _, decom = rest.partition(",")
    return net or None, decom or None


class PretrainedRetiDiff(RetiDiffEnhancer):
    """:func:`load_pretrained` as a class, for YAML ``class_path`` configs.

    Args:
        weights: the network file (default ``weights/llie_syn.pth``).
        decom: the decomposition file (default ``retinex_decomnet.pth`` beside ``weights``).
        seed: the priors' noise seed (None: the global generator).
    """

    def __init__(self, weights: str | None = None, decom: str | None = None, seed: int | None = 0) -> None:
        model = load_pretrained(weights, decom, seed)
        super().__init__(model.net, model.decom, seed=seed)
