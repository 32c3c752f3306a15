"""What both LightningModules share: LoRA-only checkpoints and a per-rank noise generator."""
from __future__ import annotations

import torch

from ctsr.errors import ConfigError


class LoRACheckpointMixin:
    """Checkpoints hold the trainable (LoRA) weights only — megabytes, not gigabytes — plus what Lightning needs
    to resume (optimiser, loops, callbacks). Loading checks that every trainable weight is present."""

    strict_loading = False  # the frozen base weights come from the config, not from the checkpoint

    def _trainable_keys(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self._trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        if hasattr(self, "generator") and hasattr(self.generator, "config"):
            checkpoint["ctsr_generator_config"] = dict(self.generator.config)
        if getattr(self, "_noise_generator", None) is not None:
            checkpoint["ctsr_noise_generator"] = self._noise_generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = sorted(self._trainable_keys() - set(checkpoint.get("state_dict", {})))
        if missing:
            raise ConfigError(
                f"ckpt_path: the checkpoint lacks {len(missing)} trainable weights of this model, e.g. '{missing[0]}'"
                f" (was it written with another lora_rank or model config?)"
            )
        self._resume_noise_state = checkpoint.get("ctsr_noise_generator")

    def noise_generator(self, device: torch.device, seed: int) -> torch.Generator:
        """The generator of τ and noise draws: one stream per rank (ranks must not share noise)."""
        gen = getattr(self, "_noise_generator", None)
        if gen is None or gen.device != device:
            rank = self.trainer.global_rank if self._trainer is not None else 0
            gen = torch.Generator(device=device).manual_seed(seed + 7919 * rank)
            state = getattr(self, "_resume_noise_state", None)
            if state is not None:
                gen.set_state(state)
                self._resume_noise_state = None
            self._noise_generator = gen
        return gen


def adamw(params, lr: float, betas: tuple[float, float], weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters (check lora_rank)")
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
