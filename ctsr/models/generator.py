"""OSEDiff's one-step generator (DESIGN §3), the student of both CTSR stages.

x_LR (B,3,h,w) → bicubic ×4 → [-1,1] → z_L = E_φ(x)·s → ε = U_θ(z_L, τ_g = 999, c)
→ ẑ0 = (z_L − √(1−ᾱ_999)·ε)/√ᾱ_999 → x̂ = D(ẑ0/s), clamped.

LoRA (rank 4 by default) is trained on the UNet and the VAE encoder, and the UNet's ``conv_in`` in full; the VAE
decoder is frozen. What OSEDiff does (github.com/cswry/OSEDiff, ``osediff.py``, ``train_osediff.py``,
``test_osediff.py``), and the option that follows it here:

* LoRA scaling: ``initialize_unet`` / ``initialize_vae`` build ``LoraConfig(r=lora_rank, init_lora_weights=
  "gaussian", target_modules=…)`` with no ``lora_alpha``, so peft's default 8 applies: ΔW = (8/r)·B·A, scale 2 at
  rank 4 → ``lora_alpha: 8`` (default).
* ``conv_in``: ``OSEDiff_gen.set_train`` calls ``self.unet.conv_in.requires_grad_(True)`` and ``train_osediff.py``
  adds ``model_gen.unet.conv_in.parameters()`` to the optimiser: the UNet's first convolution is trained in full
  (its base weights and its LoRA), and ``save_model`` stores it → ``train_conv_in: true`` (default).
* the LR latent: ``OSEDiff_gen.forward`` takes ``vae.encode(c_t).latent_dist.sample()`` in training, and
  ``OSEDiff_test.forward`` samples too at test time → ``latent_sampling``: ``auto`` (default) samples in training
  and takes the mode in evaluation (deterministic outputs; the SD VAE's latent std is small), ``sample`` is
  OSEDiff's test behaviour.
* the LR upsampling: OSEDiff's training never upsamples in the network (its degradation resizes the LR back to the
  HR size with a random mode, ``dataloaders/realesrgan.py`` ``degrade_process(resize_bak=True)``, then 8-bit
  rounds); its test script upsamples with PIL, ``input_image.resize((w·4, h·4))`` (PIL's default filter for RGB is
  bicubic, a = −0.5, 8-bit output) → ``lr_upsample``: ``torch`` (default) or ``pil``.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctsr.diffusion.schedule import GENERATOR_TIMESTEP, NoiseSchedule
from ctsr.errors import check
from ctsr.models import configs
from ctsr.models.loading import load_osediff_lora, load_sd_components
from ctsr.models.lora import UNET_TARGETS, VAE_ENCODER_TARGETS, add_lora, lora_parameters
from ctsr.models.prompting import Prompting, build_prompter
from ctsr.models.prompts import PromptEncoder

ADAPTER = "ctsr"
OSEDIFF_LORA_ALPHA = 8.0  # peft's LoraConfig default, which OSEDiff's initialize_unet / initialize_vae leave in place
LR_UPSAMPLE = ("torch", "pil")
# PIL's resampling (libImaging/Resample.c): bicubic with a = −0.5 on support 2, 8-bit fixed-point weights
PIL_BICUBIC_A = -0.5
PIL_PRECISION_BITS = 32 - 8 - 2


def _pil_bicubic(x: Tensor) -> Tensor:
    a = PIL_BICUBIC_A
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _pil_coefficients(n_in: int, n_out: int) -> tuple[Tensor, Tensor]:
    """PIL's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for bicubic: taps (n_out, K) and int weights."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = math.ceil(support) * 2 + 1
    i = torch.arange(n_out, dtype=torch.float64)
    center = (i + 0.5) * scale
    xmin = (center - support + 0.5).long().clamp(min=0)  # C's (int) truncates; the argument is ≥ −1.5 + 0.5
    xmax = (center + support + 0.5).long().clamp(max=n_in)
    k = torch.arange(ksize, dtype=torch.float64)
    taps = xmin[:, None] + k.long()[None]
    valid = k[None] < (xmax - xmin)[:, None]
    w = _pil_bicubic((taps.double() - center[:, None] + 0.5) * (1.0 / filterscale)) * valid
    total = w.sum(1, keepdim=True)
    w = torch.where(total != 0, w / total, w)
    one = float(1 << PIL_PRECISION_BITS)
    weights = torch.where(w < 0, (-0.5 + w * one).trunc(), (0.5 + w * one).trunc()).long()
    return taps.clamp(max=n_in - 1), weights * valid


def _pil_pass(x: Tensor, dim: int, n_out: int) -> Tensor:
    """One separable pass in PIL's fixed point: (Σ v·k + 2^(P−1)) >> P, clipped to 0…255, on int64 levels."""
    taps, weights = _pil_coefficients(x.shape[dim], n_out)
    taps, weights = taps.to(x.device), weights.to(x.device)
    lines = x.movedim(dim, -1)  # (..., n_in)
    acc = torch.zeros(*lines.shape[:-1], n_out, dtype=torch.long, device=x.device)
    for t in range(taps.shape[1]):
        acc += lines[..., taps[:, t]] * weights[:, t]
    acc = (acc + (1 << (PIL_PRECISION_BITS - 1))) >> PIL_PRECISION_BITS
    return acc.clamp(0, 255).movedim(-1, dim)


def pil_bicubic_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """PIL's ``Image.resize(size, Image.BICUBIC)`` of 8-bit RGB images, on tensors: (B,3,h,w) in [0,1] → (B,3,H,W).

    PIL's ``ImagingResample``: a horizontal pass, then a vertical one, each with the bicubic kernel (a = −0.5,
    support 2·max(1, in/out)), the taps cut at the image edges and the weights renormalised (no edge replication),
    weights rounded to 22-bit fixed point, every pass rounded and clipped to 8 bits. The input is rounded to 8-bit
    levels first (PIL holds uint8). Bit-exact with Pillow (``tests/test_models.py``); not differentiable.
    """
    h, w = size
    levels = (x.clamp(0, 1) * 255).round().long()
    if levels.shape[-1] != w:
        levels = _pil_pass(levels, levels.ndim - 1, w)
    if levels.shape[-2] != h:
        levels = _pil_pass(levels, levels.ndim - 2, h)
    return levels.to(x.dtype) / 255


class OneStepGenerator(nn.Module):
    """The one-step SR network G with its own ε-prediction ``eps`` (the student UNet ε_S).

    Args:
        pretrained: SD 2.1-base as a hub id or a local folder (diffusers layout), or ``tiny`` (random init).
        osediff_lora: OSEDiff's released ``osediff.pkl``; merged into the base weights before the new LoRA.
        lora_rank: rank of the trainable LoRA on the UNet.
        vae_lora_rank: rank of the trainable LoRA on the VAE encoder (0: encoder frozen too).
        lora_alpha: peft's ``lora_alpha`` of both fresh LoRAs, ΔW = (alpha / rank)·B·A. Default 8, OSEDiff's (peft's
            default, which OSEDiff's ``initialize_unet`` / ``initialize_vae`` keep): scale 2 at rank 4. Files
            written before this option existed used alpha = rank (scale 1), see ``from_config``.
        train_conv_in: train the UNet's ``conv_in`` in full besides its LoRA, as OSEDiff (``OSEDiff_gen.set_train``,
            ``train_osediff.py``); its base weights are then saved with the LoRA weights.
        prompt: the text prompt c for every image (computed once through the CLIP text encoder).
        prompting: per-image prompts (:mod:`ctsr.models.prompting`): ``{mode: dape, ...}`` conditions the UNet (and
            the teachers, which read ``context``) on each image's DAPE tags, as OSEDiff runs; null / ``mode: fixed``:
            ``prompt`` for every image (the default).
        scale: the upscaling factor: 4 (×4 SR, the paper) or 1 (same-size restoration: the low-light task of
            Table 9, ``task: lle``; the input is encoded as it is). Files written before this option are ×4.
        latent_sampling: how the LR latent is taken from the encoder's distribution: ``auto`` samples in training
            (OSEDiff's ``OSEDiff_gen.forward``) and takes the mode in evaluation (deterministic; OSEDiff's
            ``OSEDiff_test.forward`` samples), ``mode`` or ``sample`` always.
        lr_upsample: the ×4 upsampling of x_LR before the encoder. ``torch`` (default): ``F.interpolate(bicubic)``
            (a = −0.75, edge pixels repeated), differentiable and on the device; the suite trains with it, so its
            own models must be run with it. ``pil``: PIL's bicubic (a = −0.5, taps cut at the edges, 8-bit output,
            ``pil_bicubic_resize``), as OSEDiff's ``test_osediff.py`` prepares its input: use it to reproduce
            OSEDiff's released outputs with its weights (on 128² photo crops the two inputs differ by up to 8/255,
            0.3–0.4/255 on average).
        gradient_checkpointing: trade compute for memory in the UNet and the VAE encoder.
        seed: initialisation seed of the ``tiny`` models.
        unet_training: ``lora`` (default: a LoRA of ``lora_rank`` on the pretrained UNet, OSEDiff's set-up) or
            ``full`` (every UNet weight trains; for a randomly initialised UNet, as the mini world's, where a
            low-rank update of random weights has nothing to adapt). The VAE encoder keeps its LoRA either way.
        generator_timestep: τ_g, the timestep at which the UNet reads z_L (OSEDiff: 999). At 999 the step
            ẑ0 = (z_L − √(1−ᾱ)·ε)/√ᾱ multiplies the UNet's error by 1/√ᾱ_999 = 14.6, which SD's pretrained UNet
            absorbs; a UNet trained from random weights on a CPU does not (the mini world uses 100, where a zero
            output already gives ẑ0 ≈ z_L and the UNet learns a correction).
    """

    # how the networks run over tiles, or None (whole images): a ctsr.inference.tiling.Tiling, set by the Upscaler
    # and by tiled_inference; eps, the encoder and the decoder read it at every call
    tiling = None

    def __init__(
        self,
        pretrained: str = configs.SD21_BASE,
        osediff_lora: str | None = None,
        lora_rank: int = 4,
        vae_lora_rank: int = 4,
        lora_alpha: float = OSEDIFF_LORA_ALPHA,
        train_conv_in: bool = True,
        prompt: str = "",
        latent_sampling: Literal["auto", "mode", "sample"] = "auto",
        lr_upsample: Literal["torch", "pil"] = "torch",
        gradient_checkpointing: bool = False,
        seed: int = 0,
        unet_training: Literal["lora", "full"] = "lora",
        generator_timestep: float = GENERATOR_TIMESTEP,
        prompting: Prompting | None = None,
        scale: int = 4,
    ) -> None:
        super().__init__()
        check(lora_rank >= 1, "lora_rank", f"must be ≥ 1, got {lora_rank}")
        check(unet_training in ("lora", "full"), "unet_training", f"must be lora or full, got {unet_training!r}")
        check(0 <= generator_timestep <= GENERATOR_TIMESTEP, "generator_timestep",
              f"must lie in [0, {GENERATOR_TIMESTEP}], got {generator_timestep}")
        check(vae_lora_rank >= 0, "vae_lora_rank", f"must be ≥ 0, got {vae_lora_rank}")
        check(lora_alpha > 0, "lora_alpha", f"must be > 0, got {lora_alpha}")
        check(latent_sampling in ("auto", "mode", "sample"), "latent_sampling", f"unknown value {latent_sampling!r}")
        check(lr_upsample in LR_UPSAMPLE, "lr_upsample", f"must be torch or pil, got {lr_upsample!r}")
        check(isinstance(scale, int) and scale in (1, 2, 4), "scale", f"must be 1, 2 or 4, got {scale!r}")
        self.scale = scale
        self.pretrained = pretrained
        self.latent_sampling = latent_sampling
        self.lr_upsample = lr_upsample
        # what rebuilds this network without Lightning (saved in checkpoints and exported files)
        self.config = dict(pretrained=pretrained, osediff_lora=osediff_lora, lora_rank=lora_rank,
                           vae_lora_rank=vae_lora_rank, lora_alpha=float(lora_alpha), train_conv_in=bool(train_conv_in),
                           prompt=prompt, latent_sampling=latent_sampling, lr_upsample=lr_upsample, seed=seed,
                           unet_training=unet_training, generator_timestep=float(generator_timestep),
                           scale=scale)
        prompting = Prompting.parse(prompting)  # a stored config holds a dict
        if prompting is not None:
            self.config["prompting"] = prompting.as_config()
        self.unet_training = unet_training
        self.generator_timestep = float(generator_timestep)
        parts = load_sd_components(pretrained, seed=seed)
        if osediff_lora:
            load_osediff_lora(parts.unet, parts.vae, osediff_lora)
        self.unet = parts.unet.requires_grad_(False)
        self.vae = parts.vae.requires_grad_(False)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.prompts = PromptEncoder(parts.text_encoder, parts.tokenizer)
        self.register_buffer("context", self.prompts.encode(prompt), persistent=False)
        self.prompter = build_prompter(prompting, self.prompts, prompt, self.upsample)  # None: the fixed prompt
        self.schedule = NoiseSchedule()
        if unet_training == "lora":
            add_lora(self.unet, lora_rank, UNET_TARGETS, ADAPTER, alpha=lora_alpha)
        else:
            self.unet.requires_grad_(True)
        if vae_lora_rank:
            add_lora(self.vae, vae_lora_rank, VAE_ENCODER_TARGETS, ADAPTER, alpha=lora_alpha)
        for p in lora_parameters(self):
            p.requires_grad_(True)
        if train_conv_in:  # OSEDiff: unet.conv_in.requires_grad_(True), base weights and LoRA alike
            self.unet.conv_in.requires_grad_(True)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.vae.encoder.gradient_checkpointing = True

    @staticmethod
    def complete_config(config: dict) -> dict:
        """A saved ``config`` (checkpoint or exported file) as it was trained. Files written before
        ``lora_alpha``, ``train_conv_in`` and ``lr_upsample`` existed were trained with alpha = rank, a frozen
        ``conv_in`` and torch's bicubic: those are filled in when absent."""
        cfg = dict(config)
        cfg.setdefault("lora_alpha", float(cfg.get("lora_rank", 4)))
        cfg.setdefault("train_conv_in", False)
        cfg.setdefault("lr_upsample", "torch")
        cfg.setdefault("unet_training", "lora")
        cfg.setdefault("generator_timestep", float(GENERATOR_TIMESTEP))
        cfg.setdefault("scale", 4)
        return cfg

    @classmethod
    def from_config(cls, config: dict, **overrides) -> OneStepGenerator:
        """Rebuild from a saved ``config`` (:meth:`complete_config`: old files keep their function)."""
        return cls(**{**cls.complete_config(config), **overrides})

    # -- pieces ---------------------------------------------------------------------------------------------
    def use_context(self, context: Tensor | None = None) -> None:
        """Condition the next passes on per-image prompt embeddings c (B, 77, D) (``prompting``); None: the fixed
        prompt's (1, 77, D) again. Everything that reads ``context`` (ε_S, the teachers through the losses, the
        control model) follows."""
        if "fixed_context" not in self._buffers:
            self.register_buffer("fixed_context", self.context, persistent=False)
        self.context = self.fixed_context if context is None else context.to(self.fixed_context.device)

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
        return self._latent(self.encoder_dist(x), sample, generator)

    @torch.no_grad()
    def encode_base(self, x: Tensor) -> Tensor:
        """Latent of the frozen base encoder (adapters off, mode): the target space of GT and anchored teachers."""
        if getattr(self.vae, "_hf_peft_config_loaded", False):
            self.vae.disable_adapters()
            try:
                return self._latent(self.encoder_dist(x), False, None)
            finally:
                self.vae.enable_adapters()
        return self._latent(self.encoder_dist(x), False, None)

    def encoder_dist(self, x: Tensor):
        """The VAE encoder's latent distribution of x (B,3,H,W) in [-1,1] (over tiles when ``tiling`` is set)."""
        return self.vae.encode(x).latent_dist if self.tiling is None else self.tiling.encode(self.vae, x)

    def decode(self, z: Tensor) -> Tensor:
        """x = D(z/s) clamped to [-1,1]: (B,4,h,w) → (B,3,8h,8w)."""
        z = z / self.scaling_factor
        x = self.vae.decode(z).sample if self.tiling is None else self.tiling.decode(self.vae, z)
        return x.clamp(-1, 1)

    def eps(self, z_t: Tensor, tau: Tensor | float, context: Tensor | None = None, unet: nn.Module | None = None
            ) -> Tensor:
        """ε_S(z_τ, τ, c): the student UNet with its LoRA (or ``unet``, another UNet of the same configuration),
        over tiles when ``tiling`` is set. ``tau`` scalar or (B,), int or float."""
        unet = self.unet if unet is None else unet
        if self.tiling is not None:
            return self.tiling.eps(self, unet, z_t, tau, context)
        return self.unet_eps(unet, z_t, tau, context)

    def unet_eps(self, unet: nn.Module, z_t: Tensor, tau: Tensor | float, context: Tensor | None = None) -> Tensor:
        """One call of ``unet`` on z_t (B,4,h,w) at τ with the context c (the prompt's unless given)."""
        tau = torch.as_tensor(tau, device=z_t.device, dtype=torch.float32).reshape(-1).expand(z_t.shape[0])
        c = self.batch_context(z_t.shape[0], context).to(z_t.dtype)
        return unet(z_t, tau, encoder_hidden_states=c).sample

    # -- the generator ---------------------------------------------------------------------------------------
    def upsample(self, x_lr: Tensor) -> Tensor:
        """x_LR (B,3,h,w) in [0,1] → ×``scale`` in [0,1], by ``lr_upsample`` (torch's or PIL's bicubic); scale 1:
        the input as it is."""
        s = self.scale
        if s == 1:
            return x_lr.clamp(0, 1)
        if self.lr_upsample == "pil":
            return pil_bicubic_resize(x_lr, (s * x_lr.shape[-2], s * x_lr.shape[-1]))
        return F.interpolate(x_lr, scale_factor=s, mode="bicubic", align_corners=False).clamp(0, 1)

    def lr_latent(self, x_lr: Tensor, generator: torch.Generator | None = None, sample: bool | None = None) -> Tensor:
        """z_L of x_LR (B,3,h,w) in [0,1]: bicubic ×4 (``lr_upsample``), to [-1,1], encode."""
        return self.encode(self.upsample(x_lr) * 2 - 1, generator, sample)

    def latent(self, x_lr: Tensor, generator: torch.Generator | None = None, sample: bool | None = None) -> Tensor:
        """ẑ0 of the one-step generator: (B,3,h,w) in [0,1] → (B,4,h/2,w/2)."""
        z_l = self.lr_latent(x_lr, generator, sample)
        if self.prompter is not None:
            self.prompter.update(self, x_lr)  # c from x_LR's tags (unless a caller pinned it)
        eps = self.eps(z_l, self.generator_timestep)
        return self.schedule.x0_from_eps(z_l, eps, self.generator_timestep)

    def forward(self, x_lr: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """x_LR (B,3,h,w) in [0,1] → (x̂ (B,3,4h,4w) in [0,1], ẑ0 (B,4,h/2,w/2))."""
        z0_hat = self.latent(x_lr, generator)
        return (self.decode(z0_hat) + 1) / 2, z0_hat

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
