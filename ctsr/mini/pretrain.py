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

import numpy as np
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


def _cubic(x: float, a: float = -0.75) -> float:
    x = abs(x)
    if x <= 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    return (((x - 5) * x + 8) * x - 4) * a if x < 2 else 0.0


def bicubic_phases(scale: int = SCALE) -> list[dict[int, float]]:
    """Weights of torch's bicubic ×scale (align_corners=False, a = −0.75): for output phase p (pixel scale·i + p),
    {offset d: weight of input pixel i + d}, d ∈ −2…2."""
    phases = []
    for p in range(scale):
        x = (p + 0.5) / scale - 0.5
        w = dict.fromkeys(range(-2, 3), 0.0)
        for k in range(-1, 3):
            w[math.floor(x) + k] += _cubic(x - math.floor(x) - k)
        phases.append(w)
    return phases


@torch.no_grad()
def bicubic_init(net: nn.Module, scale: int = SCALE) -> nn.Module:
    """Set a Compact net (≥ 27 features, PReLU) to compute exactly torch's bicubic ×scale away from the borders.

    Compact adds nearest(LR) to a pixel-shuffled body: a body that outputs bicubic − nearest makes the whole net
    bicubic. Conv 1 copies each channel's 3×3 neighbourhood into 27 features, the middle convolutions pass them on,
    the PReLUs start linear (slope 1), the last 3×3 convolution reaches offsets −2…2 and holds the 16 phases' weights.
    Trained from random weights on a CPU, the net stays near nearest-neighbour upsampling (below bicubic) for
    thousands of steps; from here every step is a correction of bicubic."""
    convs = [m for m in net.body if isinstance(m, nn.Conv2d)]
    if convs[0].out_channels < 27:
        raise ValueError("bicubic_init needs num_feat ≥ 27")
    for m in net.body:
        if isinstance(m, nn.PReLU):
            m.weight.fill_(1.0)
    for conv in convs:
        conv.weight.zero_()
        conv.bias.zero_()
    feature = lambda ch, p, q: 9 * ch + 3 * (p + 1) + (q + 1)  # noqa: E731 — channel ch at offset (p, q)
    for ch in range(3):
        for p in (-1, 0, 1):
            for q in (-1, 0, 1):
                convs[0].weight[feature(ch, p, q), ch, 1 + p, 1 + q] = 1.0
    for conv in convs[1:-1]:
        for f in range(27):
            conv.weight[f, f, 1, 1] = 1.0
    split = lambda d: (max(-1, min(1, d)), d - max(-1, min(1, d)))  # noqa: E731 — (last conv's tap, feature offset)
    phases = bicubic_phases(scale)
    for ch in range(3):
        for a in range(scale):
            for b in range(scale):
                out = ch * scale * scale + a * scale + b  # pixel_shuffle's channel order
                for dy in range(-2, 3):
                    for dx in range(-2, 3):
                        w = phases[a][dy] * phases[b][dx] - (1.0 if dy == dx == 0 else 0.0)
                        (u, p), (v, q) = split(dy), split(dx)
                        convs[-1].weight[out, feature(ch, p, q), 1 + u, 1 + v] += w
    return net


def train_fidelity(train_dir: str | Path, out: str | Path, steps: int = 3000, batch: int = 16, crop: int = 64,
                   num_feat: int = 48, num_conv: int = 12, lr: float = 3e-4, seed: int = 0) -> Path:
    """L1 regression under the Real-ESRGAN degradation (RealESRNet's recipe), written as ``{"params": …}``."""
    from ctsr.checkpoints import atomic_save
    from ctsr.data.degradations import RealESRGANDegradation

    photos = load_photos(train_dir)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = bicubic_init(compact_net(num_feat, num_conv))
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
def teacher_images(photos: list[Tensor], fidelity: str | Path | None, realness: str | Path, draws: int = 3,
                   crop: int = 256, seed: int = 1) -> list[Tensor]:
    """Both teachers' outputs on degraded crops of the training photos: what the decoder must be able to draw."""
    from ctsr.data.degradations import RealESRGANDegradation
    from ctsr.models.teachers import load_sr_model

    gen = torch.Generator().manual_seed(seed)
    degrade = RealESRGANDegradation()
    nets = [load_sr_model(str(f)) for f in (fidelity, realness) if f]
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


def train_vae(vae: nn.Module, images: list[Tensor], test: Tensor, steps: tuple[int, int, int] = (1500, 3000, 2000),
              batch: int = 4, crop: int = 128, lr: tuple[float, float, float] = (1e-3, 1e-3, 3e-4),
              kl_weight: float = 1e-6, seed: int = 0) -> dict:
    """Three phases (module docstring). Returns the test PSNR after each phase. Crops of 128²: the GroupNorms see
    the statistics of 16×16 latents, as in use (trained on 8×8 ones, the decoder lost 3 dB on 128² test crops)."""
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
    for (name, params), n, peak in zip(phases, steps, lr):
        if n == 0:
            continue
        print(f"VAE phase '{name}': {n} steps", flush=True)
        vae.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=peak)
        log = Log(500)
        for step in range(1, n + 1):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step - 1, n, peak)
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
        if name == "encoder":  # trained against a linear decoder: the VAE's own decoder is not trained yet
            print("VAE phase 'encoder' done (the decoder is trained next)", flush=True)
            continue
        scores[name] = test_psnr()
        print(f"VAE phase '{name}': test PSNR {scores[name]:.2f} dB", flush=True)
    vae.requires_grad_(False).eval()
    return scores


def latent_scale(vae: nn.Module, photos: list[Tensor], seed: int = 3) -> float:
    """1 / std of the encoder's latents on photo crops: SD's ``scaling_factor`` (unit-variance latents, which the
    noise schedule assumes), measured as SD's authors did."""
    x = random_crops(photos, 32, 128, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        z = torch.cat([vae.encode(x[i : i + 8] * 2 - 1).latent_dist.mode() for i in range(0, len(x), 8)])
    return float(1 / z.std())


def train_denoiser(unet: nn.Module, vae: nn.Module, context: Tensor, images: list[Tensor], steps: int = 3000,
                   batch: int = 16, bank: int = 1024, lr: float = 1e-3, seed: int = 0) -> dict:
    """Pre-train the UNet as SD's was: ε-prediction on the VAE's latents of photo crops, τ ~ U{0 … 999}, the
    prompt "" as context. (In stage 1 the student's UNet is also the denoiser ε_S of the distillation terms: from
    random weights that term would first have to teach it denoising from scratch.) The latents of ``bank`` 128²
    crops (with flips) are encoded once. Returns the loss at the start and the end."""
    from ctsr.diffusion.schedule import NoiseSchedule

    gen = torch.Generator().manual_seed(seed + 7)
    schedule = NoiseSchedule()
    s = vae.config.scaling_factor
    with torch.no_grad():
        crops = random_crops(images, bank, 128, gen)
        latents = torch.cat([vae.encode(crops[i : i + 16] * 2 - 1).latent_dist.mode() * s
                             for i in range(0, bank, 16)])
    unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    log, losses = Log(500), []
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step - 1, steps, lr)
        z0 = latents[torch.randint(len(latents), (batch,), generator=gen)]
        z0 = torch.where(torch.rand(batch, 1, 1, 1, generator=gen) < 0.5, z0, z0.flip(-1))
        tau = torch.randint(0, schedule.num_train_timesteps, (batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        pred = unet(schedule.add_noise(z0, noise, tau), tau, encoder_hidden_states=context.expand(batch, -1, -1))
        loss = F.mse_loss(pred.sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        log(step, steps, mse=loss.item())
    unet.eval().requires_grad_(False)
    return {"denoiser_mse_first_100": float(np.mean(losses[:100])), "denoiser_mse_last_100": float(np.mean(losses[-100:]))}


def build_base(out: str | Path, train_dir: str | Path, test_dir: str | Path, fidelity: str | Path,
               realness: str | Path, vae_steps: tuple[int, int, int] = (1500, 3000, 2000), unet_steps: int = 3000,
               seed: int = 0) -> dict:
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
    vae.register_to_config(scaling_factor=latent_scale(vae, photos))
    tok_dir = configs.write_tiny_tokenizer(out / ".tokenizer-src")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    from ctsr.models.prompts import PromptEncoder

    context = PromptEncoder(text, tokenizer).encode("")  # the student's prompt (OneStepGenerator's default)
    scores.update(train_denoiser(unet, vae, context, photos, unet_steps, seed=seed))
    for name, part in (("vae", vae), ("unet", unet), ("text_encoder", text)):
        part.save_pretrained(out / name, safe_serialization=True)
    tokenizer.save_pretrained(out / "tokenizer")
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    record = {"vae_test_psnr": scores, "vae_steps": list(vae_steps), "seed": seed,
              "scaling_factor": vae.config.scaling_factor}
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
    base.add_argument("--fidelity", default="weights/mini/fidelity_compact_x4.pth",
                      help="its outputs join the VAE's training images ('' = Real-ESRGAN's only)")
    base.add_argument("--realness", default="weights/RealESRGAN_x4plus.pth")
    base.add_argument("--vae-steps", type=int, nargs=3, default=(1500, 3000, 2000))
    base.add_argument("--unet-steps", type=int, default=3000)
    args = parser.parse_args(argv)
    if args.what == "fidelity":
        print(train_fidelity(args.train, args.out, args.steps))
    else:
        print(build_base(args.out, args.train, args.val, args.fidelity, args.realness, tuple(args.vae_steps),
                         args.unet_steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
