"""LoRA through peft: the target lists of OSEDiff, adding adapters, and merging them into the base weights."""
from __future__ import annotations

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

# OSEDiff's UNet targets (DESIGN §3); peft matches each as a suffix of the module name.
UNET_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut", "conv_out",
    "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
]
# VAE encoder only (the decoder stays frozen), plus quant_conv that maps the encoder output to the moments.
VAE_ENCODER_TARGETS = (
    r"^(encoder\..*(conv|conv1|conv2|conv_in|conv_out|conv_shortcut|to_q|to_k|to_v|to_out\.0)|quant_conv)$"
)


def add_lora(model: nn.Module, rank: int, targets, adapter_name: str = "default", alpha: float | None = None) -> None:
    """Add a fresh LoRA adapter (Gaussian A, zero B: the model's output is unchanged at init) and make it active.

    ``alpha`` is peft's ``lora_alpha``: the adapter adds (alpha / rank)·B·A to each target weight. None: alpha =
    rank (scale 1). OSEDiff leaves peft's default (8, scale 2 at rank 4); ``OneStepGenerator`` passes that.
    """
    widest = max_lora_rank(model)
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= widest:
        from ctsr.errors import ConfigError

        raise ConfigError(f"LoRA rank {rank!r}: must be an integer in [1, {widest}] for this model (a rank above "
                          f"min(in, out) of its widest layer adds nothing); refused before any layer is built")
    config = LoraConfig(
        r=rank, lora_alpha=rank if alpha is None else alpha, init_lora_weights="gaussian", target_modules=targets
    )
    model.add_adapter(config, adapter_name=adapter_name)
    model.set_adapter(adapter_name)


def max_lora_rank(model: nn.Module) -> int:
    """The largest useful LoRA rank of ``model``: min(in, out) of its widest linear or convolutional layer."""
    widths = [min(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    widths += [min(m.in_channels, m.out_channels) for m in model.modules() if isinstance(m, nn.Conv2d)]
    return max(widths, default=1)


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_" in n]


@torch.no_grad()
def merge_and_remove_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter of ``model`` into its base weights and put the plain layers back.

    After this the model is an ordinary diffusers module again (no peft wrappers, no adapter config), and its
    forward pass equals the forward pass with all adapters active.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            adapters = [a for a in module.lora_A.keys()] if hasattr(module, "lora_A") else None
            module.merge(adapter_names=adapters)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    if hasattr(model, "_hf_peft_config_loaded"):
        model._hf_peft_config_loaded = False
    return model
