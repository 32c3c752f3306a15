"""Benchmark: the cost of a t sweep (6 values) against one t and against separate single-t evaluations, one run.

    python benchmarks/bench_sweep.py [--size tiny|sd21] [--device cpu|cuda] [--batch 4] [--lr-size 32] [--batches 4]

Every path decodes every t and updates the same PSNR/SSIM suites. ``sweep`` is ``ControllableSR.sweep`` with the
default objective: z0 and the velocity v once per batch, z(t) = z0 + t·v, one decode per t (2 UNet passes for any
number of t). ``sweep, v per t`` is the previous rule (z0 once, one student pass per t > 0); ``separate`` runs
the model once per t; ``one t`` is the sweep of t = 1 alone. Prints ms per image-and-t and the ratios.
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


def run(model, batches, hr, mode: str, device: str, ts=T) -> float:
    suites = {t: MetricSuite(["psnr", "ssim"]).to(device) for t in ts}
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        for x in batches:
            outs = [model(x, t) for t in ts] if mode == "separate" else model.sweep(x, ts)
            for t, sr in zip(ts, outs):
                suites[t].update(sr.float(), hr[: x.shape[0]])
        for s in suites.values():
            s.compute()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def per_t_velocity(model: ControllableSR) -> None:
    """The rule before the endpoint objective: z(t) = z0 + t·ε_S(z0, τ(t)), one student pass per t."""
    model.objective, model.tau_rule = "eq8", "next"


def one_velocity(model: ControllableSR) -> None:
    model.objective, model.tau_rule = "endpoint", "euler"


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
    run(model, batches[:1], hr, "sweep", a.device)  # warm-up
    times: dict[str, list[float]] = {"sweep": [], "sweep, v per t": [], "separate": [], "one t": []}
    for _ in range(a.repeats):  # alternate the paths so background load hits all alike
        times["sweep"].append(run(model, batches, hr, "sweep", a.device))
        times["one t"].append(run(model, batches, hr, "sweep", a.device, ts=[1.0]))
        per_t_velocity(model)
        times["sweep, v per t"].append(run(model, batches, hr, "sweep", a.device))
        one_velocity(model)
        times["separate"].append(run(model, batches, hr, "separate", a.device))
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    n = a.batch * a.batches
    print(f"model {a.size}, device {a.device}, {a.batches} batches x {a.batch} images, LR {a.lr_size}², t = {T}")
    for k in ("sweep", "sweep, v per t", "separate"):
        print(f"{k + ':':<28}{1000 * med[k] / (n * len(T)):8.2f} ms per image and t")
    print(f"{'one t (t = 1):':<28}{1000 * med['one t'] / n:8.2f} ms per image")
    print(f"ratio sweep of 6 t / one t: {med['sweep'] / med['one t']:.2f}x (2 UNet passes either way; the rest is "
          f"decodes and metrics)")
    print(f"ratio v-per-t sweep / sweep: {med['sweep, v per t'] / med['sweep']:.2f}x")
    print(f"ratio separate / sweep: {med['separate'] / med['sweep']:.2f}x (median of {a.repeats} alternating rounds)")

if __name__ == "__main__":
    main()
