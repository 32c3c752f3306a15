"""Loading SD 2.1-base components and OSEDiff's LoRA file, with errors a user can act on.

``pretrained`` is a hub id (``stabilityai/stable-diffusion-2-1-base``), a local folder in the diffusers layout
(``unet/ vae/ text_encoder/ tokenizer/``), or ``tiny`` (random-init models of the same classes, for tests and the
quick start). Offline (``HF_HUB_OFFLINE=1``) a hub id is served from the Hugging Face cache or not at all.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ctsr.errors import ConfigError, MissingWeightsError, describe
from ctsr.models import configs
from ctsr.models.lora import merge_and_remove_lora
from ctsr.quiet import no_loading_bars

HF_CACHE_HINT = "the Hugging Face cache (HF_HOME, default ~/.cache/huggingface)"


@dataclass
class SDComponents:
    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object


def _random_components(unet_config: dict, vae_config: dict, text_config: dict, seed: int = 0) -> SDComponents:
    """Random-init networks of the real classes and the character-level CLIP tokenizer (``tiny``, ``sd21-random``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    # A private folder per call: a shared one let one process read vocab.json while another rewrote it (CI,
    # pytest-xdist). CLIPTokenizer reads both files in __init__, so the folder can go right after.
    with tempfile.TemporaryDirectory(prefix="ctsr-tiny-tokenizer-") as tmp:
        tok_dir = configs.write_tiny_tokenizer(tmp)
        tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    return SDComponents(unet, vae, text_encoder, tokenizer)


def _where_to_put(source: str) -> str:
    if Path(source).expanduser().exists() or source.startswith((".", "/", "~")):
        return f"the folder '{source}' (diffusers layout: unet/, vae/, text_encoder/, tokenizer/)"
    return (
        f"{HF_CACHE_HINT}: on a connected machine run `huggingface-cli download {source}` and copy the cache, "
        f"or download it to a folder and set `pretrained: /that/folder`"
    )


def load_part(source: str, subfolder: str, loader, what: str, local_files_only: bool | None = None, **kwargs):
    """``loader.from_pretrained(source, subfolder=…)`` with a :class:`MissingWeightsError` that names the part."""
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    local = Path(source).expanduser()
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1
    if looks_local and not local.exists():
        raise MissingWeightsError(f"{what}: the folder '{source}' does not exist. Put {_where_to_put(source)}.")
    try:
        with no_loading_bars():  # transformers' "Loading weights" bar: noise in every command's output
            return loader.from_pretrained(
                str(local) if local.exists() else source,
                subfolder=subfolder,
                local_files_only=local_files_only,
                **kwargs,
            )
    except (OSError, ValueError) as err:  # huggingface_hub's offline/not-found errors derive from OSError
        raise MissingWeightsError(
            f"{what}: could not load '{subfolder}' from '{source}' ({describe(err)}). Put it in {_where_to_put(source)}."
        ) from None


def load_sd_components(
    pretrained: str = configs.SD21_BASE, local_files_only: bool | None = None, seed: int = 0
) -> SDComponents:
    """UNet, VAE, CLIP text encoder and tokenizer of SD 2.1-base (or ``tiny`` / ``sd21-random``, random init)."""
    tiny_vocab = dict(vocab_size=configs.tiny_vocab_size(), bos_token_id=512, eos_token_id=513, pad_token_id=513)
    if pretrained == configs.TINY:
        return _random_components(configs.TINY_UNET, configs.TINY_VAE, {**configs.TINY_TEXT, **tiny_vocab}, seed)
    if pretrained == configs.SD21_RANDOM:
        text = {**configs.SD21_TEXT, **tiny_vocab, "num_hidden_layers": 1}
        return _random_components(configs.SD21_UNET, configs.SD21_VAE, text, seed)
    if pretrained == configs.MINI:  # the mini world's base, shipped inside the package (ctsr.mini)
        from ctsr.mini import BASE

        if not BASE.is_dir():
            raise MissingWeightsError(f"the mini world's base model '{BASE}' is missing (build it with `make mini "
                                      f"SHIP=1`)")
        pretrained = str(BASE)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    what = f"Stable Diffusion base model '{pretrained}'"
    fp32 = {"torch_dtype": torch.float32}  # fp16 files (the mini base, fp16 variants) are trained on in fp32
    unet = load_part(pretrained, "unet", UNet2DConditionModel, what, local_files_only, **fp32)
    vae = load_part(pretrained, "vae", AutoencoderKL, what, local_files_only, **fp32)
    text_encoder = load_part(pretrained, "text_encoder", CLIPTextModel, what, local_files_only, **fp32)
    tokenizer = load_part(pretrained, "tokenizer", CLIPTokenizer, what, local_files_only)
    return SDComponents(unet, vae, text_encoder, tokenizer)


OSEDIFF_KEYS = ("rank_unet", "rank_vae", "state_dict_unet", "state_dict_vae")


def read_osediff_file(path: str | Path) -> dict:
    """Read OSEDiff's released ``.pkl`` safely (``weights_only=True``: tensors, lists, ints, strings only)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(
            f"OSEDiff LoRA file '{path}' not found. Download osediff.pkl from the OSEDiff release "
            f"(github.com/cswry/OSEDiff, folder preset/models/) and put it at that path, or set `osediff_lora: null`."
        )
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors vary by cause (truncated, foreign objects, not a pickle)
        raise MissingWeightsError(
            f"OSEDiff LoRA file '{path}' could not be read safely ({describe(err)}). Is it the released osediff.pkl, downloaded completely?"
        ) from None
    missing = [k for k in OSEDIFF_KEYS if not isinstance(sd, dict) or k not in sd]
    if missing:
        raise ConfigError(f"osediff_lora: '{path}' is not an OSEDiff LoRA file (missing keys {missing})")
    return sd


def _osediff_groups(sd: dict, prefix: str) -> dict[str, list[str]]:
    """Adapter name → target module list, as OSEDiff saved them (``unet_lora_encoder_modules`` → ``default_encoder``)."""
    groups = {}
    for key, value in sd.items():
        if key.startswith(prefix) and key.endswith("_modules"):
            part = key[len(prefix) : -len("_modules")]
            groups[f"default_{part}"] = list(value)
    return groups


def _apply_lora_state(model: nn.Module, groups: dict, rank: int, state: dict, what: str) -> None:
    from peft import LoraConfig

    for name, targets in groups.items():
        model.add_adapter(LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=targets), adapter_name=name)
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ConfigError(
            f"osediff_lora: {len(unknown)} {what} weights do not match this base model, e.g. '{unknown[0]}'. "
            f"Is `pretrained` SD 2.1-base?"
        )
    lora_keys = [k for k in own if "lora_" in k]
    absent = [k for k in lora_keys if k not in state]
    if absent:
        raise ConfigError(f"osediff_lora: {what} LoRA weight '{absent[0]}' is missing from the file")
    model.load_state_dict(state, strict=False)
    model.set_adapter(list(groups))
    merge_and_remove_lora(model)


def load_osediff_lora(unet: nn.Module, vae: nn.Module, path: str | Path) -> None:
    """Merge OSEDiff's LoRA (and its ``conv_in``) into ``unet`` and ``vae`` in place."""
    sd = read_osediff_file(path)
    unet_groups = _osediff_groups(sd, "unet_lora_")
    vae_groups = _osediff_groups(sd, "vae_lora_")
    if not unet_groups:
        raise ConfigError(f"osediff_lora: '{path}' names no UNet target modules (unet_lora_*_modules)")
    _apply_lora_state(unet, unet_groups, int(sd["rank_unet"]), sd["state_dict_unet"], "UNet")
    if vae_groups:
        _apply_lora_state(vae, vae_groups, int(sd["rank_vae"]), sd["state_dict_vae"], "VAE")
