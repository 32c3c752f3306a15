"""Cost of the Real-ESRGAN parity modes, each against the other choice in the same run.

* JPEG step alone: BasicSR-style DiffJPEG (``ctsr.data.jpeg``) vs kornia's codec, both through
  ``degradations.jpeg`` on the same canvas and qualities;
* the whole module with the defaults (scale_factor resize, DiffJPEG, Poisson level count) vs the module with one
  mode switched back (``size`` resize, kornia JPEG, 256 Poisson levels), same inputs and parameters; Poisson noise
  forced on every sample for the level-count comparison (the default draws it for half).

Calls alternate after a warm-up; prints the median ms of each and the median ratio of the pairs.

    .venv/bin/python benchmarks/bench_parity.py --batch 16 --size 256 --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ctsr.data.degradations import DegradationConfig, RealESRGANDegradation, jpeg


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def compare(name: str, new, old, device: torch.device, repeats: int) -> None:
    new(), old()  # warm-up
    pairs = [(_time(new, device), _time(old, device)) for _ in range(repeats)]
    a, b = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    ratio = statistics.median(p[1] / p[0] for p in pairs)
    print(f"{name:<44} parity {a * 1e3:8.1f} ms   other {b * 1e3:8.1f} ms   other/parity {ratio:5.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="HR side (square crops)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(args.seed)
    hr = torch.rand(args.batch, 3, args.size, args.size, generator=g, device=device)
    print(f"device {device}, batch {args.batch} × {args.size}², threads {torch.get_num_threads()}")

    # JPEG step alone, on a ragged canvas as in the first order (sizes 0.5–1.0 of the canvas)
    sizes = ([int(args.size * (0.5 + 0.5 * b / max(1, args.batch - 1))) for b in range(args.batch)],) * 2
    quality = torch.rand(args.batch, generator=g, device=device) * 65 + 30
    compare("JPEG step (DiffJPEG vs kornia)", lambda: jpeg(hr, sizes, quality, "diffjpeg"),
            lambda: jpeg(hr, sizes, quality, "kornia"), device, args.repeats)  # fmt: skip

    parity = RealESRGANDegradation(DegradationConfig()).to(device)
    params = parity.sample_params(args.batch, g, device)
    poisson = parity.sample_params(args.batch, g, device)
    for p in (poisson.first, poisson.second):
        p.gaussian_noise = torch.zeros_like(p.gaussian_noise)

    def run(module, prm):
        return lambda: module.apply(hr, prm, torch.Generator(device=device).manual_seed(args.seed))

    for label, modes, prm in (
        ("module: JPEG DiffJPEG vs kornia", dict(jpeg="kornia"), params),
        ("module: resize scale_factor vs size", dict(resize_sampling="size"), params),
        ("module (all Poisson): count vs 256 levels", dict(poisson_levels="256"), poisson),
    ):
        other = RealESRGANDegradation(DegradationConfig(**modes)).to(device)
        compare(label, run(parity, prm), run(other, prm), device, args.repeats)


if __name__ == "__main__":
    main()
