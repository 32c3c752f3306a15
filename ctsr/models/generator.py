"""OSEDiff's one-step generator (DESIGN §3), the student of both CTSR stages.

x_LR (B,3,h,w) → bicubic ×4 → [-1,1] → z_L = E_φ(x)·s → ε = U_θ(z_L, τ_g = 999, c)
→ ẑ0 = (z_L − √(1−ᾱ_999)·ε)/√ᾱ_999 → x̂ = D(ẑ0/s), clamped.

LoRA (rank 4 by default) is trained on the UNet and the VAE encoder; the VAE decoder is frozen.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctsr.diffusion.schedule import GENERATOR_TIMESTEP, NoiseSchedule
from ctsr.errors import check
from ctsr.models import configs
from ctsr.models.loading import load_osediff_lora, load_sd_components
from ctsr.models.lora import UNET_TARGETS, VAE_ENCODER_TARGETS, add_lora, lora_parameters
from ctsr.models.prompts import PromptEncoder

ADAPTER = "ctsr"


class OneStepGenerator(nn.Module):
    """The one-step SR network G with its own ε-prediction ``eps`` (the student UNet ε_S).

    Args:
        pretrained: SD 2.1-base as a hub id or a local folder (diffusers layout), or ``tiny`` (random init).
        osediff_lora: OSEDiff's released ``osediff.pkl``; merged into the base weights before the new LoRA.
        lora_rank: rank of the trainable LoRA on the UNet.
        vae_lora_rank: rank of the trainable LoRA on the VAE encoder (0: encoder frozen too).
        prompt: the text prompt c for every image (computed once through the CLIP text encoder).
        latent_sampling: how the LR latent is taken from the encoder's distribution: ``auto`` samples in training
            and takes the mode in evaluation (OSEDiff), ``mode`` or ``sample`` always.
        gradient_checkpointing: trade compute for memory in the UNet and the VAE encoder.
        seed: initialisation seed of the ``tiny`` models.
    """

    def __init__(
        self,
        pretrained: str = configs.SD21_BASE,
        osediff_lora: str | None = None,
        lora_rank: int = 4,
        vae_lora_rank: int = 4,
        prompt: str = "",
        latent_sampling: Literal["auto", "mode", "sample"] = "auto",
        gradient_checkpointing: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check(lora_rank >= 1, "lora_rank", f"must be ≥ 1, got {lora_rank}")
        check(vae_lora_rank >= 0, "vae_lora_rank", f"must be ≥ 0, got {vae_lora_rank}")
        check(latent_sampling in ("auto", "mode", "sample"), "latent_sampling", f"unknown value {latent_sampling!r}")
        self.pretrained = pretrained
        self.latent_sampling = latent_sampling
        # what rebuilds this network without Lightning (saved in checkpoints and exported files)
        self.config = dict(pretrained=pretrained, osediff_lora=osediff_lora, lora_rank=lora_rank,
                           vae_lora_rank=vae_lora_rank, prompt=prompt, latent_sampling=latent_sampling, seed=seed)
        parts = load_sd_components(pretrained, seed=seed)
        if osediff_lora:
            load_osediff_lora(parts.unet, parts.vae, osediff_lora)
        self.unet = parts.unet.requires_grad_(False)
        self.vae = parts.vae.requires_grad_(False)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.prompts = PromptEncoder(parts.text_encoder, parts.tokenizer)
        self.register_buffer("context", self.prompts.encode(prompt), persistent=False)
        self.schedule = NoiseSchedule()
        add_lora(self.unet, lora_rank, UNET_TARGETS, ADAPTER)
        if vae_lora_rank:
            add_lora(self.vae, vae_lora_rank, VAE_ENCODER_TARGETS, ADAPTER)
        for p in lora_parameters(self):
            p.requires_grad_(True)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.vae.encoder.gradient_checkpointing = True

    # -- pieces ---------------------------------------------------------------------------------------------
    def batch_context(self, batch: int, context: Tensor | None = None) -> Tensor:
        c = self.context if context is None else context
        return c.expand(batch, -1, -1) if c.shape[0] == 1 else c

    def _latent(self, dist, sample: bool, generator: torch.Generator | None) -> Tensor:
        return (dist.sample(generator) if sample else dist.mode()) * self.scaling_factor

    def encode(self, x: Tensor, generator: torch.Generator | None = None, sample: bool | None = None) -> Tensor:
        """LR latent with the LoRA encoder: x (B,3,H,W) in [-1,1] → (B,4,H/8,W/8). ``sample`` overrides
        ``latent_sampling`` (a frozen teacher's pass takes the mode)."""
        if sample is None:
            sample = self.latent_sampling == "sample" or (self.latent_sampling == "auto" and self.training)
        return self._latent(self.vae.encode(x).latent_dist, sample, generator)

    @torch.no_grad()
    def encode_base(self, x: Tensor) -> Tensor:
        """Latent of the frozen base encoder (adapters off, mode): the target space of GT and anchored teachers."""
        if getattr(self.vae, "_hf_peft_config_loaded", False):
            self.vae.disable_adapters()
            try:
                return self._latent(self.vae.encode(x).latent_dist, False, None)
            finally:
                self.vae.enable_adapters()
        return self._latent(self.vae.encode(x).latent_dist, False, None)

    def decode(self, z: Tensor) -> Tensor:
        """x = D(z/s) clamped to [-1,1]: (B,4,h,w) → (B,3,8h,8w)."""
        return self.vae.decode(z / self.scaling_factor).sample.clamp(-1, 1)

    def eps(self, z_t: Tensor, tau: Tensor | float, context: Tensor | None = None) -> Tensor:
        """ε_S(z_τ, τ, c): the student UNet with its LoRA. ``tau`` scalar or (B,), int or float."""
        tau = torch.as_tensor(tau, device=z_t.device, dtype=torch.float32).reshape(-1).expand(z_t.shape[0])
        c = self.batch_context(z_t.shape[0], context).to(z_t.dtype)
        return self.unet(z_t, tau, encoder_hidden_states=c).sample

    # -- the generator ---------------------------------------------------------------------------------------
    def lr_latent(self, x_lr: Tensor, generator: torch.Generator | None = None, sample: bool | None = None) -> Tensor:
        """z_L of x_LR (B,3,h,w) in [0,1]: bicubic ×4, to [-1,1], encode."""
        x = F.interpolate(x_lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
        return self.encode(x * 2 - 1, generator, sample)

    def latent(self, x_lr: Tensor, generator: torch.Generator | None = None, sample: bool | None = None) -> Tensor:
        """ẑ0 of the one-step generator: (B,3,h,w) in [0,1] → (B,4,h/2,w/2)."""
        z_l = self.lr_latent(x_lr, generator, sample)
        eps = self.eps(z_l, GENERATOR_TIMESTEP)
        return self.schedule.x0_from_eps(z_l, eps, GENERATOR_TIMESTEP)

    def forward(self, x_lr: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """x_LR (B,3,h,w) in [0,1] → (x̂ (B,3,4h,4w) in [0,1], ẑ0 (B,4,h/2,w/2))."""
        z0_hat = self.latent(x_lr, generator)
        return (self.decode(z0_hat) + 1) / 2, z0_hat

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
