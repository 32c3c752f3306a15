"""Architectures by name: SD 2.1-base (loaded from a hub id or a folder) and ``tiny`` (same classes, random init).

The tiny variant keeps every structural property the code relies on — 4 latent channels, an 8× VAE, cross-attention
blocks with linear projections (as SD 2.x), a CLIP text encoder with a 77-token context — at channels ≤ 64, so a
full training step runs on a CPU in well under a second.
"""
from __future__ import annotations

import json
from pathlib import Path

SD21_BASE = "stabilityai/stable-diffusion-2-1-base"
VAE_SCALING_FACTOR = 0.18215
TINY = "tiny"
SD21_RANDOM = "sd21-random"
MINI = "mini"  # the mini world's base model, shipped in the package (ctsr/mini/weights/base, diffusers layout)  # the SD 2.1-base architecture, random init (benchmarks without weights)

TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=(4, 8),
    norm_num_groups=16,
    use_linear_projection=True,
)

TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 32, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
    scaling_factor=VAE_SCALING_FACTOR,
)

TINY_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=32,
)


# The mini world's base (ctsr.mini.pretrain): the same classes at CPU size. Its VAE keeps SD's 8× reduction with 16
# latent channels (as SD 3): a small autoencoder trained for minutes on a CPU cannot squeeze 8×8×3 pixels into 4
# numbers well enough for the fidelity end (a linear 8×8 codec: 4 channels 24 dB, 16 channels 28 dB on photos).
MINI_LATENT_CHANNELS = 16
MINI_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(32, 64, 64, 64),
    layers_per_block=1,
    latent_channels=MINI_LATENT_CHANNELS,
    norm_num_groups=16,
    mid_block_add_attention=False,
    sample_size=128,
    scaling_factor=1.0,
)
# 1.4 M parameters; cross-attention at the middle level only (at the top one it costs 2.5× a step on a CPU)
MINI_UNET = dict(
    sample_size=16,
    in_channels=MINI_LATENT_CHANNELS,
    out_channels=MINI_LATENT_CHANNELS,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=16,
    use_linear_projection=True,
)
MINI_TEXT = dict(TINY_TEXT, vocab_size=2 * 256 + 2, bos_token_id=512, eos_token_id=513, pad_token_id=513)


# stabilityai/stable-diffusion-2-1-base, unet/config.json and vae/config.json (diffusers defaults left out)
SD21_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
    mid_block_scale_factor=1,
    upcast_attention=False,
)
SD21_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=768,
    scaling_factor=0.18215,
)
# text_encoder/config.json (OpenCLIP ViT-H/14 text tower). `sd21-random` builds it with one layer: only its
# (1, 77, 1024) output is used, once; the full tower is counted for Table 8.
SD21_TEXT = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
    layer_norm_eps=1e-5,
)


def write_tiny_tokenizer(folder: str | Path) -> Path:
    """Write a character-level CLIP BPE vocabulary (no merges) that ``CLIPTokenizer`` loads like the real one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # GPT-2/CLIP byte-to-unicode table: every byte gets a printable character.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def tiny_vocab_size() -> int:
    return 2 * 256 + 2
