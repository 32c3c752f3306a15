"""Batched Real-ESRGAN degradation against the same module run one sample at a time, in one run.

Both paths get the same HR batch and the same per-sample parameters (drawn once); the loop calls
``apply`` with batch 1 for each sample. The two alternate ``--repeats`` times after a warm-up; prints the median
ms per batch and images/s of each, and the median ratio of the pairs, in wall-clock and process CPU time.

    .venv/bin/python benchmarks/bench_degrade.py --batch 16 --size 512 --device cpu --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ctsr.data.degradations import operations  # where jpeg reads its chunk size
from ctsr.data.degradations import RealESRGANDegradation


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call."""
    _sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512, help="HR side (square crops)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-groups", type=int, default=None,
                        help="RealESRGANDegradation(max_groups=...); default: the module's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ablate", action="store_true",
        help="also time the batched path with the first session's settings (4 groups, one JPEG call per step)",
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    module = RealESRGANDegradation(max_groups=args.max_groups).to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    hr = torch.rand(args.batch, 3, args.size, args.size, generator=generator, device=device)
    params = module.sample_params(args.batch, generator, device)

    def batched() -> None:
        module.apply(hr, params, torch.Generator(device=device).manual_seed(args.seed))

    def per_sample() -> None:
        g = torch.Generator(device=device).manual_seed(args.seed)
        for b in range(args.batch):
            module.apply(hr[b : b + 1], params.select([b]), g)

    old_module = RealESRGANDegradation(max_groups=4).to(device)

    def batched_old() -> None:
        chunk = operations.JPEG_CPU_CHUNK_PIXELS
        operations.JPEG_CPU_CHUNK_PIXELS = 1 << 62
        try:
            old_module.apply(hr, params, torch.Generator(device=device).manual_seed(args.seed))
        finally:
            operations.JPEG_CPU_CHUNK_PIXELS = chunk

    batched(), per_sample()  # warm-up: kornia's DCT basis, the allocator, cuDNN's choices
    # the paths alternate, so a shared host's load drifts over all alike; ratios are medians of the pairs'
    runs, old = [], []
    for _ in range(args.repeats):
        runs.append((_timed(batched, device), _timed(per_sample, device)))
        if args.ablate:
            old.append(_timed(batched_old, device)[0])
    t_batched, cpu_batched = (statistics.median(r[0][i] for r in runs) for i in (0, 1))
    t_loop, cpu_loop = (statistics.median(r[1][i] for r in runs) for i in (0, 1))
    ratio = statistics.median(r[1][0] / r[0][0] for r in runs)
    ratio_cpu = statistics.median(r[1][1] / r[0][1] for r in runs)
    threads = torch.get_num_threads() if device.type == "cpu" else None
    print(
        f"device={device} threads={threads} batch={args.batch} size={args.size} repeats={args.repeats} "
        f"max_groups={args.max_groups} torch={torch.__version__}"
    )
    print(f"batched     {1000 * t_batched:10.1f} ms/batch  {args.batch / t_batched:8.2f} images/s  (CPU {cpu_batched:.2f} s)")
    print(f"per-sample  {1000 * t_loop:10.1f} ms/batch  {args.batch / t_loop:8.2f} images/s  (CPU {cpu_loop:.2f} s)")
    print(f"speed-up (per-sample / batched, median of {args.repeats} pairs): {ratio:.2f}x wall, {ratio_cpu:.2f}x CPU time")
    if args.ablate:
        t_old = statistics.median(old)
        gain = statistics.median(o / r[0][0] for o, r in zip(old, runs))
        print(f"batched, 4 groups + one JPEG call {1000 * t_old:10.1f} ms/batch; speed-up of the current settings: {gain:.2f}x")


if __name__ == "__main__":
    main()
