"""ResShift and SinSR, the paper's fidelity teachers, from their official checkpoints (written for this project).

* :class:`ResShiftUNet` — the denoiser (no arguments: the released real-world ×4 network, ResShift v3 and SinSR v1);
* :class:`VQAutoencoderF4` — the VQGAN-f4 autoencoder the chain lives in (no arguments: ``autoencoder_vq_f4.pth``);
* :class:`ResidualShiftSampler` — the residual-shifting chain (η schedule, κ), :data:`RESSHIFT_V3`, :data:`SINSR_V1`;
* :class:`ResShiftSR` — the three together as an image SR model, (B, 3, h, w) in [0, 1] → (B, 3, 4h, 4w) in [0, 1],
  usable as any ``sr_model`` (``AnchoredTeacher``, the linear-combination baseline, inference on its own);
* :func:`load_pretrained` / :class:`PretrainedResShift` — that model from the release files, strictly
  (the official state-dict names, buffers included; ``torch.load(weights_only=True)`` or safetensors).

``sr_model`` strings (``ctsr.models.teachers.load_sr_model``): ``resshift``, ``sinsr``, ``resshift:NET[,AUTOENCODER]``,
``sinsr:NET[,AUTOENCODER]`` (the autoencoder defaults to ``autoencoder_vq_f4.pth`` beside NET). See docs/teachers.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ctsr.errors import ConfigError, MissingWeightsError
from ctsr.inference.tiling import pad_to_multiple
from ctsr.models.resshift.autoencoder import VQAutoencoderF4
from ctsr.models.resshift.diffusion import (
    RESSHIFT_V3, SINSR_V1, ResidualShiftSampler, ShiftSchedule, eta_schedule,
)
from ctsr.models.resshift.unet import ResShiftUNet, shifted_window_mask

__all__ = [
    "ResShiftUNet", "VQAutoencoderF4", "ResidualShiftSampler", "ShiftSchedule", "RESSHIFT_V3", "SINSR_V1",
    "eta_schedule", "shifted_window_mask", "ResShiftSR", "PretrainedResShift", "load_pretrained", "load_state_dict",
    "read_checkpoint", "RELEASES", "AUTOENCODER_FILE", "AUTOENCODER_URL", "parse_spec",
]

Variant = Literal["resshift", "sinsr"]

AUTOENCODER_FILE = "autoencoder_vq_f4.pth"
AUTOENCODER_URL = "https://github.com/zsyOAOA/ResShift/releases/download/v2.0/autoencoder_vq_f4.pth"
# variant → (network file, its download address, the release page, the chain)
RELEASES: dict[str, tuple[str, str, str, ShiftSchedule]] = {
    "resshift": ("resshift_realsrx4_s4_v3.pth",
                 "https://github.com/zsyOAOA/ResShift/releases/download/v2.0/resshift_realsrx4_s4_v3.pth",
                 "https://github.com/zsyOAOA/ResShift/releases", RESSHIFT_V3),
    "sinsr": ("SinSR_v1.pth", "https://github.com/wyf0912/SinSR/releases/download/v1.0/SinSR_v1.pth",
              "https://github.com/wyf0912/SinSR/releases", SINSR_V1),
}
WEIGHTS_DIR = "weights"


class ResShiftSR(nn.Module):
    """ResShift / SinSR as an image SR model: (B, 3, h, w) in [0, 1] → (B, 3, 4h, 4w) in [0, 1].

    As the official ``sample_func``: the LR image goes to [−1, 1], is reflect-padded (right/bottom) to a multiple of
    ``pad_multiple`` (64, the released ``lq_size``), sampled, cropped back and clamped. Where reflect padding cannot
    reach (an LR side ≤ the padding) the border is replicated instead. No tiling: the whole image is one chain.

    Args:
        unet / autoencoder / sampler: the three parts (built by :func:`load_pretrained` for the releases).
        seed: noise seed; each call draws from one private CPU generator seeded once (None: the global generator).
        pad_multiple: pad the LR to a multiple of this (≥ the network's ``size_multiple``).
    """

    def __init__(self, unet: ResShiftUNet, autoencoder: VQAutoencoderF4, sampler: ResidualShiftSampler,
                 seed: int | None = 0, pad_multiple: int = 64) -> None:
        super().__init__()
        self.unet = unet.eval().requires_grad_(False)
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.sampler = sampler
        self.scale = sampler.schedule.sf
        self.pad_multiple = max(pad_multiple, unet.size_multiple)
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def train(self, mode: bool = True) -> "ResShiftSR":
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        y = pad_to_multiple(x.float() * 2 - 1, self.pad_multiple)
        out = self.sampler.sample(self.unet, self.autoencoder, y, self.generator)
        out = out[..., : h * self.scale, : w * self.scale].clamp(-1, 1)
        return (out * 0.5 + 0.5).to(x.dtype)


# -- checkpoints ------------------------------------------------------------------------------------------------------
def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a ``.pth`` (``torch.load(weights_only=True)``) or ``.safetensors`` file.

    Unwraps ``{"state_dict": …}`` and drops the ``module.`` / ``_orig_mod.`` prefixes the official loader accepts.
    A pickle that is not weights-only (it would run code to load) is refused with a :class:`ConfigError`.
    """
    from ctsr.checkpoints import load_checkpoint, read_safetensors

    path = Path(path)
    if path.suffix == ".safetensors":
        state = read_safetensors(path, "ResShift weights")[0]
    else:  # torch.load(weights_only=True): a pickle that would run code is refused in one line naming it
        state = load_checkpoint(path, "ResShift weights", any_type=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"'{path}' is not a state dict (a mapping of names to tensors)")
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            key = key[len(prefix):] if key.startswith(prefix) else key
        out[key] = value
    return out


def load_state_dict(module: nn.Module, path: str | Path, what: str) -> nn.Module:
    """Load ``path`` into ``module`` strictly: the same names (buffers included) and shapes, or a one-line error."""
    from ctsr.models.release_weights import load_strict

    return load_strict(module, read_checkpoint(path), path, what)


def _require(path: Path, what: str, url: str, page: str) -> Path:
    if not path.is_file():
        raise MissingWeightsError(
            f"{what} '{path}' not found: download {path.name} from {url} (release page {page}) into '{path.parent}'"
        )
    return path


def load_pretrained(variant: Variant = "resshift", weights: str | Path | None = None,
                    autoencoder: str | Path | None = None, seed: int | None = 0) -> ResShiftSR:
    """The released ResShift v3 (4 steps) or SinSR v1 (1 step) as a :class:`ResShiftSR`.

    weights: the network file (default ``weights/resshift_realsrx4_s4_v3.pth`` / ``weights/SinSR_v1.pth``);
    autoencoder: the VQGAN file (default ``autoencoder_vq_f4.pth`` in the network file's folder).
    """
    if variant not in RELEASES:
        raise ConfigError(f"sr_model: unknown ResShift variant '{variant}' (choose from {', '.join(RELEASES)})")
    name, url, page, schedule = RELEASES[variant]
    net_path = Path(weights).expanduser() if weights else Path(WEIGHTS_DIR) / name
    ae_path = Path(autoencoder).expanduser() if autoencoder else net_path.parent / AUTOENCODER_FILE
    _require(net_path, f"{variant} network", url, page)
    _require(ae_path, f"{variant} autoencoder (VQGAN-f4)", AUTOENCODER_URL, RELEASES["resshift"][2])
    unet = load_state_dict(ResShiftUNet(), net_path, f"{variant} network")
    vae = load_state_dict(VQAutoencoderF4(), ae_path, f"{variant} autoencoder")
    return ResShiftSR(unet, vae, ResidualShiftSampler(schedule), seed=seed)


def parse_spec(spec: str) -> tuple[Variant, str | None, str | None] | None:
    """``resshift`` / ``sinsr`` / ``resshift:NET[,AUTOENCODER]`` → (variant, NET, AUTOENCODER); None if not one."""
    head, _, rest = spec.partition(":")
    if head.lower() not in RELEASES:
        return None
    if not rest:
        return head.lower(), None, None  # type: ignore[return-value]
    net, _, ae = rest.partition(",")
    return head.lower(), net or None, ae or None  # type: ignore[return-value]


class PretrainedResShift(ResShiftSR):
    """:func:`load_pretrained` as a class, for YAML ``class_path`` configs (typed arguments are the schema).

    Args:
        variant: ``resshift`` (v3, 4 steps) or ``sinsr`` (v1, 1 step).
        weights: the network file (default ``weights/resshift_realsrx4_s4_v3.pth`` / ``weights/SinSR_v1.pth``).
        autoencoder: the VQGAN-f4 file (default ``autoencoder_vq_f4.pth`` beside ``weights``).
        seed: the sampler's noise seed (None: the global generator).
    """

    def __init__(self, variant: Variant = "resshift", weights: str | None = None, autoencoder: str | None = None,
                 seed: int | None = 0) -> None:
        model = load_pretrained(variant, weights, autoencoder, seed)
        super().__init__(model.unet, model.autoencoder, model.sampler, seed=seed)
