"""What the mini world trains before CTSR's two stages: the fidelity teacher and the student's base (VAE).

* **Fidelity teacher** — a compact SR network (Real-ESRGAN's ``SRVGGNetCompact``, the architecture spandrel knows as
  "Compact"), trained with L1 on the mini world's training photos under the suite's Real-ESRGAN degradation: a
  RealESRNet-style regression model, measurably better than bicubic in PSNR. Saved as ``{"params": …}``, the file
  layout of Real-ESRGAN's releases, so ``AnchoredTeacher(sr_model: FILE)`` loads it through spandrel.
* **Base model** — the SD 2.1-base stand-in, in the diffusers layout (``unet/ vae/ text_encoder/ tokenizer/``), so
  ``pretrained: weights/mini/base`` goes through the same loading code as a real SD folder. Its ``AutoencoderKL`` is
  pre-trained here as an autoencoder on the images it will have to represent (the training photos and both
  teachers' outputs on degraded crops of them); its ``UNet2DConditionModel`` and its CLIP text encoder are random
  (the UNet is fully fine-tuned in stage 1: LoRA on a random network has nothing to adapt).

A deep autoencoder trained end to end from random weights learns slowly on a CPU (about 19 dB after 1 000 steps,
where a linear 8×8-patch codec reaches 28 dB in 2 000 steps); trained in three phases it does not: the encoder with
a linear decoder, then the decoder on the encoder's latents, then both together (and the KL term).

    python -m ctsr.mini.pretrain fidelity --out weights/mini/fidelity_compact_x4.pth
    python -m ctsr.mini.pretrain base --out weights/mini/base --fidelity weights/mini/fidelity_compact_x4.pth
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctsr.data.images import list_images, read_image

SCALE = 4


# -- data ----------------------------------------------------------------------------------------------------------
def load_photos(folder: str | Path) -> list[Tensor]:
    """Every image of ``folder`` as (3, H, W) in [0, 1]."""
    files = list_images(folder)
    if not files:
        from ctsr.errors import DataError

        raise DataError(f"'{folder}' holds no images: run `python -m ctsr.mini.corpus` (make mini-data) first")
    return [read_image(f) for f in files]


def random_crops(images: list[Tensor], n: int, size: int, generator: torch.Generator) -> Tensor:
    """n random ``size``² crops with random horizontal flips: (n, 3, size, size)."""
    out = []
    for _ in range(n):
        img = images[int(torch.randint(len(images), (1,), generator=generator))]
        h, w = img.shape[-2:]
        top = int(torch.randint(h - size + 1, (1,), generator=generator))
        left = int(torch.randint(w - size + 1, (1,), generator=generator))
        crop = img[:, top : top + size, left : left + size]
        out.append(crop.flip(-1) if float(torch.rand(1, generator=generator)) < 0.5 else crop)
    return torch.stack(out)


def cosine_lr(step: int, steps: int, lr: float, warmup: int = 100) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def psnr(a: Tensor, b: Tensor) -> float:
    return float((10 * torch.log10(1 / F.mse_loss(a.clamp(0, 1), b, reduction="none").mean((1, 2, 3)))).mean())


class Log:
    def __init__(self, every: int) -> None:
        self.every, self.start = every, time.time()

    def __call__(self, step: int, steps: int, **values) -> None:
        if step % self.every == 0 or step == steps:
            shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
            print(f"  step {step}/{steps} ({time.time() - self.start:.0f} s) {shown}", flush=True)


# -- the fidelity teacher --------------------------------------------------------------------------------------------
def compact_net(num_feat: int = 48, num_conv: int = 12) -> nn.Module:
    from spandrel.architectures.Compact import Compact

    return Compact(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_conv=num_conv, upscale=SCALE, act_type="prelu")


def train_fidelity(train_dir: str | Path, out: str | Path, steps: int = 3000, batch: int = 16, crop: int = 128,
                   num_feat: int = 48, num_conv: int = 12, lr: float = 1e-3, seed: int = 0) -> Path:
    """L1 regression under the Real-ESRGAN degradation (RealESRNet's recipe), written as ``{"params": …}``."""
    from ctsr.checkpoints import atomic_save
    from ctsr.data.degradations import RealESRGANDegradation

    photos = load_photos(train_dir)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = compact_net(num_feat, num_conv)
    degrade = RealESRGANDegradation()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    log = Log(250)
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step - 1, steps, lr)
        hr = random_crops(photos, batch, crop, gen)
        with torch.no_grad():
            lr_img = degrade(hr, generator=gen)
        loss = F.l1_loss(net(lr_img), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log(step, steps, l1=loss.item())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"params": {k: v.detach().clone() for k, v in net.state_dict().items()}}, out)
    return out


# -- the base model ------------------------------------------------------------------------------------------------
def teacher_images(photos: list[Tensor], fidelity: str | Path, realness: str | Path, draws: int = 3,
                   crop: int = 256, seed: int = 1) -> list[Tensor]:
    """Both teachers' outputs on degraded crops of the training photos: what the decoder must be able to draw."""
    from ctsr.data.degradations import RealESRGANDegradation
    from ctsr.models.teachers import load_sr_model

    gen = torch.Generator().manual_seed(seed)
    degrade = RealESRGANDegradation()
    nets = [load_sr_model(str(fidelity)), load_sr_model(str(realness))]
    out = []
    with torch.no_grad():
        for _ in range(draws):
            hr = random_crops(photos, len(photos), crop, gen)
            lr = degrade(hr, generator=gen)
            for net in nets:
                out += list(net(lr).clamp(0, 1))
    return out


class LinearCodec(nn.Module):
    """The 8×8-patch linear codec the first two phases lean on: pixel-unshuffle + 1×1 convolutions."""

    def __init__(self, channels: int, factor: int = 8) -> None:
        super().__init__()
        self.decode = nn.Sequential(nn.Conv2d(channels, 3 * factor * factor, 1), nn.PixelShuffle(factor))


def train_vae(vae: nn.Module, images: list[Tensor], test: Tensor, steps: tuple[int, int, int] = (1500, 2500, 2500),
              batch: int = 8, crop: int = 64, lr: float = 1e-3, kl_weight: float = 1e-6, seed: int = 0) -> dict:
    """Three phases (module docstring). Returns the test PSNR after each phase."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    channels = vae.config.latent_channels
    linear = LinearCodec(channels, 2 ** (len(vae.config.block_out_channels) - 1))
    with torch.no_grad():  # a posterior std of e^-4 at the start: the samples are the means, not noise
        vae.quant_conv.bias[channels:] = -8.0
    scores = {}

    def encode(x: Tensor, sample: bool) -> tuple[Tensor, Tensor]:
        dist = vae.encode(x).latent_dist
        return (dist.sample(gen) if sample else dist.mode()), dist.kl().mean()

    def test_psnr() -> float:
        vae.eval()
        with torch.no_grad():
            out = torch.cat([(vae.decode(encode(t[None] * 2 - 1, False)[0]).sample + 1) / 2 for t in test])
        vae.train()
        return psnr(out, test)

    phases = (("encoder", list(vae.encoder.parameters()) + list(vae.quant_conv.parameters()) +
               list(linear.parameters())),
              ("decoder", list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())),
              ("joint", list(vae.parameters())))
    for (name, params), n in zip(phases, steps):
        if n == 0:
            continue
        print(f"VAE phase '{name}': {n} steps", flush=True)
        vae.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=lr)
        log = Log(500)
        for step in range(1, n + 1):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step - 1, n, lr)
            x = random_crops(images, batch, crop, gen) * 2 - 1
            if name == "encoder":
                z, kl = encode(x, sample=False)
                rec = linear.decode(z)
            else:
                z, kl = encode(x, sample=name == "joint")
                rec = vae.decode(z.detach() if name == "decoder" else z).sample
            loss = F.l1_loss(rec, x) + (kl_weight * kl if name == "joint" else 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log(step, n, l1=F.l1_loss(rec, x).item())
        scores[name] = test_psnr() if name != "encoder" else float("nan")
        print(f"VAE phase '{name}': test PSNR {scores[name]:.2f} dB", flush=True)
    vae.requires_grad_(False).eval()
    return scores


def build_base(out: str | Path, train_dir: str | Path, test_dir: str | Path, fidelity: str | Path,
               realness: str | Path, vae_steps: tuple[int, int, int] = (1500, 2500, 2500), seed: int = 0) -> dict:
    """Write the mini base model (diffusers layout) with a pre-trained VAE; returns its record (scores, configs)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ctsr.models import configs

    out = Path(out)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**configs.MINI_VAE)
    unet = UNet2DConditionModel(**configs.MINI_UNET)
    text = CLIPTextModel(CLIPTextConfig(**configs.MINI_TEXT))
    photos = load_photos(train_dir)
    images = photos + teacher_images(photos, fidelity, realness)
    test = random_crops(load_photos(test_dir), 16, 128, torch.Generator().manual_seed(seed + 1))
    scores = train_vae(vae, images, test, vae_steps, seed=seed)
    tok_dir = configs.write_tiny_tokenizer(out / ".tokenizer-src")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    for name, part in (("vae", vae), ("unet", unet), ("text_encoder", text)):
        part.save_pretrained(out / name, safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    record = {"vae_test_psnr": scores, "vae_steps": list(vae_steps), "seed": seed}
    (out / "mini_base.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctsr.mini.pretrain", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    fid = sub.add_parser("fidelity", help="train the compact fidelity teacher")
    fid.add_argument("--out", default="weights/mini/fidelity_compact_x4.pth")
    fid.add_argument("--train", default="data/mini/train/HR")
    fid.add_argument("--steps", type=int, default=3000)
    base = sub.add_parser("base", help="write the base model folder with a pre-trained VAE")
    base.add_argument("--out", default="weights/mini/base")
    base.add_argument("--train", default="data/mini/train/HR")
    base.add_argument("--val", default="data/mini/val/HR")
    base.add_argument("--fidelity", default="weights/mini/fidelity_compact_x4.pth")
    base.add_argument("--realness", default="weights/RealESRGAN_x4plus.pth")
    base.add_argument("--vae-steps", type=int, nargs=3, default=(1500, 2500, 2500))
    args = parser.parse_args(argv)
    if args.what == "fidelity":
        print(train_fidelity(args.train, args.out, args.steps))
    else:
        print(build_base(args.out, args.train, args.val, args.fidelity, args.realness, tuple(args.vae_steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
