"""GSAD (Hou et al., NeurIPS 2023, github.com/jinnh/GSAD), Table 9's fidelity teacher, written for this project.

* :class:`GSADUNet` — the SR3-style conditional denoiser (no arguments: the released LOL-v2-synthetic network);
* :class:`GSADDiffusion` — the official ``GaussianDiffusion`` layout (``denoise_fn.*`` + schedule buffers) and the
  test-time sampler (10-step linear schedule 2e-3 → 0.84 of ``config/lolv2_syn_test.json``);
* :class:`GSADEnhancer` — the two as a low-light enhancer, (B, 3, H, W) in [0, 1] → the same size in [0, 1];
* :func:`load_pretrained` / :class:`PretrainedGSAD` — that model from the release file ``lolv2_syn_gen.pth``,
  strictly, weights-only.

``sr_model`` strings (``ctsr.models.teachers.load_sr_model``, scale 1 only): ``gsad`` (``weights/lolv2_syn_gen.pth``)
or ``gsad:PATH``. Parity with the official code: tests/fixtures/gsad (README there), tests/test_lowlight_teachers.py.

Deviations from ``test.py``, stated: images whose sides are not multiples of 16 are reflect-padded (right/bottom)
and cropped back (LOL-v2-synthetic's 384² need none); a batch returns every image (the official loop keeps only
``ret_img[-1]``, right for its batch size 1); the noise comes from a private CPU generator (seeded with the test
config's 8477), not the global CUDA one, so samples match the official ones only on the CPU. The brightness
matching of ``test.py`` is scoring, not the model: ``ctsr.evaluation.lowlight`` (``make table9``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ctsr.inference.tiling import pad_to_multiple
from ctsr.models.gsad.diffusion import BUFFERS, LOLV2_SYN_TEST, TRAIN_SCHEDULE, BetaSchedule, GSADDiffusion
from ctsr.models.gsad.unet import GSADUNet
from ctsr.models.release_weights import load_strict, read_state, require

__all__ = ["GSADUNet", "GSADDiffusion", "BetaSchedule", "TRAIN_SCHEDULE", "LOLV2_SYN_TEST", "GSADEnhancer",
           "PretrainedGSAD", "load_pretrained", "load_diffusion", "parse_spec", "WEIGHTS_FILE", "RELEASE_PAGE"]

WEIGHTS_FILE = "lolv2_syn_gen.pth"
RELEASE_PAGE = "https://github.com/jinnh/GSAD (README, Testing: the pretrained-model Google Drive folder " \
               "https://drive.google.com/drive/folders/1KLPm2oOg2Fx4WlbnOXMjN2rbyzzG8Hd-)"
WEIGHTS_DIR = "weights"
TEST_SEED = 8477  # config/lolv2_syn_test.json "seed"


class GSADEnhancer(nn.Module):
    """GSAD as an image enhancer: (B, 3, H, W) in [0, 1] → (B, 3, H, W) in [0, 1] (see the module notes).

    Args:
        diffusion: the network + sampler.
        seed: the noise seed; one private CPU generator seeded once (None: the global generator).
    """

    def __init__(self, diffusion: GSADDiffusion, seed: int | None = TEST_SEED) -> None:
        super().__init__()
        self.diffusion = diffusion.eval().requires_grad_(False)
        self.size_multiple = diffusion.denoise_fn.size_multiple
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def train(self, mode: bool = True) -> "GSADEnhancer":
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        y = pad_to_multiple(x.float() * 2 - 1, self.size_multiple)
        out = self.diffusion.sample(y, self.generator)[..., :h, :w].clamp(-1, 1)
        return (out * 0.5 + 0.5).to(x.dtype)


def load_diffusion(path: str | Path, what: str = "GSAD network", model: GSADDiffusion | None = None) -> GSADDiffusion:
    """The official ``GaussianDiffusion`` state dict at ``path`` (``module.`` prefixes accepted, as ``model.py``'s
    DataParallel fallback) into ``model`` (default: the released network), strictly: every ``denoise_fn.*`` name and
    shape; the schedule buffers may be absent (they are recomputed; the test schedule replaces them anyway)."""
    state = read_state(path, what)
    return load_strict(model if model is not None else GSADDiffusion(), state, path, what, optional=BUFFERS)


def load_pretrained(weights: str | Path | None = None, seed: int | None = TEST_SEED) -> GSADEnhancer:
    """The released LOL-v2-synthetic GSAD (default ``weights/lolv2_syn_gen.pth``) as a :class:`GSADEnhancer`."""
    path = Path(weights).expanduser() if weights else Path(WEIGHTS_DIR) / WEIGHTS_FILE
    require(path, "GSAD (LOL-v2-synthetic) network", RELEASE_PAGE)
    return GSADEnhancer(load_diffusion(path), seed=seed)


def parse_spec(spec: str) -> tuple[str | None] | None:
    """``gsad`` / ``gsad:PATH`` → (PATH or None,); None if ``spec`` is not one."""
    head, _, rest = spec.partition(":")
    if head.lower() != "gsad":
        return None
    return (rest or None,)


class PretrainedGSAD(GSADEnhancer):
    """:func:`load_pretrained` as a class, for YAML ``class_path`` configs.

    Args:
        weights: the release file (default ``weights/lolv2_syn_gen.pth``).
        seed: the sampler's noise seed (None: the global generator).
    """

    def __init__(self, weights: str | None = None, seed: int | None = TEST_SEED) -> None:
        model = load_pretrained(weights, seed)
        super().__init__(model.diffusion, seed=seed)
