"""The options the user commands share, each declared once: ``add_<option>(parser)`` adds it to a parser that uses
it, with the same flag, default, choices and help everywhere (``ctsr upscale`` and ``ctsr demo`` build their
upscaler from the same :func:`add_upscaler_options`). Torch-free: the choices come from :mod:`ctsr.choices`.
"""
from __future__ import annotations

import argparse

from ctsr.choices import COLOR_FIXES, PRECISION_NAMES, PROMPTINGS, SHARED_NORMS
from ctsr.errors import ArgumentParser

Parser = argparse.ArgumentParser | argparse._ArgumentGroup

MODEL_SOURCES = ("an exported .safetensors, a stage-2 (or stage-1) .ckpt, a run folder (its newest checkpoint), a "
                 "CTSR folder, a Hugging Face Hub id owner/name[@revision], or mini (default: the mini-world model "
                 "shipped with ctsr)")
# the options of `ctsr upscale` that build its Upscaler and load the model (the demo takes the same)
UPSCALER_OPTIONS = ("device", "precision", "batch_size", "tile", "tile_overlap", "vae_tile", "vae_overlap",
                    "shared_norms", "color", "compile", "control_steps", "pretrained", "osediff_lora", "prompting",
                    "ram_weights", "dape_weights")


def parser(prog: str, description: str) -> ArgumentParser:
    """The parser of ``ctsr <command>``: a command line that does not parse is one line (:class:`ArgumentParser`)."""
    return ArgumentParser(prog=prog, description=description)


def add_ckpt(p: Parser) -> None:
    p.add_argument("--ckpt", default="mini", help=f"model: {MODEL_SOURCES}")


def add_device(p: Parser) -> None:
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")


def add_precision(p: Parser) -> None:
    p.add_argument("--precision", default="auto", choices=["auto", *PRECISION_NAMES],
                   help="default auto: bf16 on CUDA, fp32 on the CPU")


def add_batch_size(p: Parser) -> None:
    p.add_argument("--batch-size", type=int, default=1,
                   help="images of equal size per network call (default 1); tiles per call: as many pixels")


def add_tiling(p: Parser) -> None:
    p.add_argument("--tile", type=int, default=96,
                   help="UNet tile side in latent pixels, ×8 in the output (default 96); 0: none")
    p.add_argument("--tile-overlap", type=int, default=32, help="overlap of UNet tiles in latent pixels (default 32)")
    p.add_argument("--vae-tile", type=int, default=256,
                   help="VAE encoder/decoder tile side in latent pixels (default 256 = 2048 output px); 0: none")
    p.add_argument("--vae-overlap", type=int, default=32, help="overlap of VAE tiles in latent pixels (default 32)")
    p.add_argument("--shared-norms", default="unet", choices=SHARED_NORMS,
                   help="whose tiles normalise with the whole image's GroupNorm statistics, as untiled: unet "
                   "(default), all (the VAE's too: memory about that of the untiled VAE), none (per tile)")


def add_color(p: Parser) -> None:
    p.add_argument("--color", default="adain", choices=COLOR_FIXES,
                   help="colour correction against the bicubic-upscaled input (default adain, as OSEDiff)")


def add_compile(p: Parser) -> None:
    p.add_argument("--compile", action="store_true", help="torch.compile the networks (long runs, equal sizes)")


def add_control_steps(p: Parser) -> None:
    p.add_argument("--control-steps", type=int, default=None,
                   help="K of the K-step control integration (default: the value stored in the model)")


def add_base_overrides(p: Parser, where: str = "model file") -> None:
    """``--pretrained`` and ``--osediff-lora``: where the base model and OSEDiff's LoRA are, over what the file says."""
    p.add_argument("--pretrained", default=None, help=f"override the SD 2.1-base location stored in the {where}")
    p.add_argument("--osediff-lora", default=None, help=f"override the OSEDiff LoRA file stored in the {where}")


def add_prompting(p: Parser) -> None:
    p.add_argument("--prompting", default="model", choices=PROMPTINGS,
                   help="the prompt c: model (default: as the model file records; fixed when it records none), fixed "
                   "(the model's prompt for every image) or dape (per-image DAPE tags, as OSEDiff; the prompt is "
                   "written beside the outputs as <name>.txt)")
    p.add_argument("--ram-weights", default=None,
                   help="with DAPE prompts: RAM's ram_swin_large_14m.pth (default: as recorded, weights/…)")
    p.add_argument("--dape-weights", default=None,
                   help="with DAPE prompts: DAPE.pth (default: as recorded, weights/DAPE.pth); '' for plain RAM")


def add_upscaler_options(p: Parser) -> None:
    """Every option in :data:`UPSCALER_OPTIONS`, in the order ``ctsr upscale --help`` shows them."""
    add_device(p)
    add_precision(p)
    add_batch_size(p)
    add_tiling(p)
    add_color(p)
    add_compile(p)
    add_control_steps(p)
    add_base_overrides(p)
    add_prompting(p)


def add_table_stem(p: Parser) -> None:
    p.add_argument("--stem", default="metrics", help="the table's file name (metrics)")
