"""Benchmark: a t sweep that computes z0 once per batch against separate single-t evaluations, same data, one run.

    python benchmarks/bench_sweep.py [--size tiny|sd21] [--device cpu|cuda] [--batch 4] [--lr-size 32] [--batches 4]

Both paths decode every t and update the same PSNR/SSIM suites; the sweep shares the stage-1 pass (VAE encode +
UNet at τ = 999) across the t values, the baseline repeats it for every t. Prints ms per image-and-t and the ratio.
"""
from __future__ import annotations

import argparse
import time

import torch

from ctsr.metrics import MetricSuite
from ctsr.models.control import ControllableSR
from ctsr.models import configs
from ctsr.models.generator import OneStepGenerator

T = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def build(size: str, device: str) -> ControllableSR:
    gen = OneStepGenerator("tiny" if size == "tiny" else configs.SD21_RANDOM)  # random init, no weights needed
    return ControllableSR.from_stage1(gen, None).to(device).eval()


def run(model, batches, hr, sweep: bool, device: str) -> float:
    suites = {t: MetricSuite(["psnr", "ssim"]).to(device) for t in T}
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        for x in batches:
            outs = model.sweep(x, T) if sweep else [model(x, t) for t in T]
            for t, sr in zip(T, outs):
                suites[t].update(sr.float(), hr[: x.shape[0]])
        for s in suites.values():
            s.compute()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny", choices=["tiny", "sd21"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.manual_seed(0)
    model = build(a.size, a.device)
    with torch.no_grad():  # a control that does something
        for n, q in model.generator.unet.named_parameters():
            if "lora_B.control" in n:
                q.normal_(0, 0.02)
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(a.batch, 3, a.lr_size, a.lr_size, generator=g).to(a.device) for _ in range(a.batches)]
    hr = torch.rand(a.batch, 3, 4 * a.lr_size, 4 * a.lr_size, generator=g).to(a.device)
    run(model, batches[:1], hr, True, a.device)  # warm-up
    pairs = []
    for _ in range(a.repeats):  # alternate the two paths so background load hits both alike
        pairs.append((run(model, batches, hr, True, a.device), run(model, batches, hr, False, a.device)))
    sweep = sorted(p[0] for p in pairs)[len(pairs) // 2]
    separate = sorted(p[1] for p in pairs)[len(pairs) // 2]
    n = a.batch * a.batches * len(T)
    print(f"model {a.size}, device {a.device}, {a.batches} batches x {a.batch} images, LR {a.lr_size}², t = {T}")
    print(f"sweep (z0 once per batch):   {1000 * sweep / n:8.2f} ms per image and t")
    print(f"separate single-t passes:    {1000 * separate / n:8.2f} ms per image and t")
    print(f"ratio separate/sweep: {separate / sweep:.2f}x (median of {a.repeats} alternating pairs)")


if __name__ == "__main__":
    main()
