"""Benchmark: the fidelity teacher's share of a stage-1 step — ResShift v3 (4 steps), SinSR (1 step), a spandrel
network (Real-ESRGAN's RRDBNet ×4) and bicubic (free), measured in one run.

    python benchmarks/bench_teacher.py [--student tiny|sd21] [--lr-size 64] [--batch 1] [--repeats 2] [--warmup 1]
    python benchmarks/bench_teacher.py --components [--lr-size 64] [--repeats 3]   # ResShift's UNet vs its VQGAN

Teachers have their released widths with random weights (the cost does not depend on the values): ResShift/SinSR
``ResShiftUNet()`` + ``VQAutoencoderF4()``, Real-ESRGAN x4plus (64 filters, 23 RRDBs) built by spandrel. Each teacher is
an ``AnchoredTeacher`` in a ``DualTeacherDistillation`` (stage 1); a step is the loss (student forward, both teachers,
the stage-1 terms) + backward + AdamW. ``condition`` (x_f = F(x_LR), then the SD encoder) is timed inside the step.
Rounds are interleaved (teacher A, B, C, D, A, …) so machine load drifts hit all alike; medians are printed.
The student: ``tiny`` (the random tiny SD stand-in: the step is the teacher's lower bound) or ``sd21`` (SD 2.1-base
architecture, random init; needs ~10 GB, a GPU is the place for it).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ctsr.lit.stage1 import DualTeacherDistillation
from ctsr.models import configs
from ctsr.models.generator import OneStepGenerator
from ctsr.models.resshift import (
    RESSHIFT_V3, SINSR_V1, ResidualShiftSampler, ResShiftSR, ResShiftUNet, VQAutoencoderF4,
)
from ctsr.models.teachers import AnchoredTeacher


def sr_models() -> dict[str, object]:
    import spandrel.architectures.ESRGAN as esrgan

    unet, vae = ResShiftUNet().eval(), VQAutoencoderF4().eval()   # one copy, shared: same weights, same cost
    return {
        "bicubic": "bicubic",
        "realesrgan (spandrel)": esrgan.ESRGAN(num_filters=64, num_blocks=23, scale=4).eval(),
        "sinsr (1 step)": ResShiftSR(unet, vae, ResidualShiftSampler(SINSR_V1), seed=0),
        "resshift (4 steps)": ResShiftSR(unet, vae, ResidualShiftSampler(RESSHIFT_V3), seed=0),
    }


class Timed:
    """Wraps ``teacher.condition`` and accumulates its wall time (synchronising CUDA around it)."""

    def __init__(self, teacher: AnchoredTeacher, device: torch.device) -> None:
        self.inner, self.device, self.seconds = teacher.condition, device, 0.0
        teacher.condition = self  # type: ignore[method-assign]

    def __call__(self, x_lr: torch.Tensor) -> torch.Tensor:
        sync(self.device)
        start = time.perf_counter()
        out = self.inner(x_lr)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def components(lr_size: int, repeats: int) -> None:
    """ResShift's two costs, interleaved: one UNet evaluation (latent = LR size) and one VQGAN encode + decode (HR)."""
    unet, vae = ResShiftUNet().eval(), VQAutoencoderF4().eval()
    g = torch.Generator().manual_seed(0)
    z, lq = torch.randn(1, 3, lr_size, lr_size, generator=g), torch.rand(1, 3, lr_size, lr_size, generator=g)
    hr = torch.rand(1, 3, 4 * lr_size, 4 * lr_size, generator=g) * 2 - 1
    times: dict[str, list[float]] = {"unet": [], "vq": []}
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            unet(z, torch.tensor([3]), lq=lq)
            times["unet"].append(time.perf_counter() - start)
            start = time.perf_counter()
            vae.decode(vae.encode(hr))
            times["vq"].append(time.perf_counter() - start)
    u, v = statistics.median(times["unet"]), statistics.median(times["vq"])
    print(f"# components, LR {lr_size}², median of {repeats}: UNet {u:.2f} s, VQGAN encode+decode {v:.2f} s "
          f"(= {v / u:.2f} UNet evaluations); predicted ResShift ÷ SinSR = (4U + V)/(U + V) = "
          f"{(4 * u + v) / (u + v):.2f}×")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="tiny", choices=["tiny", "sd21"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lr-size", type=int, default=64, help="LR side (ResShift pads the LR to a multiple of 64)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="timed rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--components", action="store_true", help="time ResShift's UNet and VQGAN apart, then stop")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.components:
        return components(a.lr_size, a.repeats)
    device = torch.device(a.device)
    torch.manual_seed(0)
    generator = OneStepGenerator("tiny" if a.student == "tiny" else configs.SD21_RANDOM, seed=0)
    modules = {}
    for name, sr in sr_models().items():
        teacher = AnchoredTeacher(sr_model=sr)
        module = DualTeacherDistillation(generator, teacher, lpips_weights="random", seed=0).to(device)
        optimiser = module.configure_optimizers()
        modules[name] = (module, optimiser, Timed(teacher, device))
    hr = torch.rand(a.batch, 3, 4 * a.lr_size, 4 * a.lr_size, generator=torch.Generator().manual_seed(1)).to(device)
    lr = torch.nn.functional.interpolate(hr, scale_factor=0.25, mode="area")

    steps: dict[str, list[float]] = {n: [] for n in modules}
    conds: dict[str, list[float]] = {n: [] for n in modules}
    for round_ in range(a.warmup + a.repeats):
        for name, (module, optimiser, timer) in modules.items():
            timer.seconds = 0.0
            sync(device)
            start = time.perf_counter()
            out = module.objective(module.generator, module.teachers(), lr, hr, torch.Generator().manual_seed(round_))
            out["loss"].backward()
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
            sync(device)
            if round_ >= a.warmup:
                steps[name].append(time.perf_counter() - start)
                conds[name].append(timer.seconds)

    med = {n: (statistics.median(steps[n]), statistics.median(conds[n])) for n in modules}
    base = med["realesrgan (spandrel)"][1]
    print(f"# stage-1 step, student={a.student}, LR {a.lr_size}² → HR {4 * a.lr_size}², batch {a.batch}, "
          f"{a.device}, {torch.get_num_threads()} threads, median of {a.repeats}")
    print("| T_f | step (s) | teacher (s) | teacher's share of the step | teacher ÷ spandrel's |")
    print("|---|---|---|---|---|")
    for name, (step, cond) in med.items():
        print(f"| {name} | {step:.3f} | {cond:.3f} | {cond / step:.1%} | {cond / base:.2f}× |")
    r, s = med["resshift (4 steps)"][1], med["sinsr (1 step)"][1]
    print(f"ResShift ÷ SinSR (teacher time): {r / s:.2f}×")


if __name__ == "__main__":
    main()
