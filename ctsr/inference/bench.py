"""``ctsr bench``: speed and memory of one-step ×4 SR, the bare diffusers graph against the project's upscale path,
measured in the same run (ratios: an absolute time says little across machines).

    ctsr bench                          # SD 2.1-base architecture, random init, bf16, CUDA: eager and compiled
    ctsr bench --size tiny --device cpu     # the script itself: eager rows (no compiling off CUDA), ~20 s on 2 cores

Rows: ``bare`` is VAE encode → UNet → VAE decode of plain diffusers modules (and, for t > 0, the K further UNet
passes of the control step, so both sides run the same number of UNet passes); ``ctsr`` is :class:`Upscaler` on the
LR image (bicubic ×4, encode with the merged stage-1 LoRA, UNet with the control adapter, decode, colour correction).
Both at 512×512 output, batch 1 and 8, t = 0 and 0.5, eager and ``torch.compile``. Then one large upscale
(2048² output by default, tiled) for its peak memory, and the paper's Table 8 row: total and trainable parameters.
Targets on an H100/H200 in bf16: project/bare ≤ 1.15 on every row, compiled t = 0 at batch 8 ≥ 60 images/s.
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctsr.errors import check
from ctsr.inference.upscale import REFERENCE_CELLS, Upscaler, resolve_device

PAPER_TABLE8_CTSR = "1775 / 8.5"  # total / trainable, M (the paper counts as OSEDiff does, with its prompt extractor)


def _numel(module: nn.Module, lora: bool | None = None) -> int:
    """Parameters of ``module``; ``lora``: only LoRA (True), only the rest (False), all (None)."""
    return sum(p.numel() for n, p in module.named_parameters() if lora is None or (("lora_" in n) == lora))


# -- the two graphs ----------------------------------------------------------------------------------------------
def build(size: str, device: torch.device, seed: int = 0):
    """(controllable model, bare UNet, bare VAE, context, Table-8 counts) for ``size`` ``tiny`` or ``sd21``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ctsr.models import configs
    from ctsr.models.control import ControllableSR
    from ctsr.models.generator import OneStepGenerator

    torch.manual_seed(seed)
    if size == "tiny":
        gen = OneStepGenerator("tiny", seed=seed)
        text_params = _numel(gen.prompts.text_encoder)
        bare_unet, bare_vae = UNet2DConditionModel(**configs.TINY_UNET), AutoencoderKL(**configs.TINY_VAE)
    else:
        from transformers import CLIPTextConfig, CLIPTextModel

        gen = OneStepGenerator(configs.SD21_RANDOM, seed=seed)
        with torch.device("meta"):  # the real 23-layer text tower, counted for Table 8 (the build uses 1 layer)
            text_params = _numel(CLIPTextModel(CLIPTextConfig(**configs.SD21_TEXT)))
        with torch.device(device):
            bare_unet, bare_vae = UNet2DConditionModel(**configs.SD21_UNET), AutoencoderKL(**configs.SD21_VAE)
    stage1_trainable = _numel(gen, lora=True)  # UNet + VAE-encoder LoRA, what stage 1 trains
    model = ControllableSR.from_stage1(gen)     # merges the stage-1 UNet LoRA, adds the control LoRA
    with torch.no_grad():
        for n, p in model.generator.unet.named_parameters():
            if "lora_B.control" in n:
                p.normal_(0, 0.01)                  # a control that does something (B = 0 at init)
    counts = dict(
        unet=_numel(gen.unet, lora=False), vae=_numel(gen.vae, lora=False), text=text_params,
        lora=_numel(gen.unet, lora=True) + _numel(gen.vae, lora=True),
        stage1=stage1_trainable, stage2=_numel(gen.unet, lora=True),
    )
    counts["total"] = counts["unet"] + counts["vae"] + counts["text"] + counts["lora"]
    context = model.generator.context.clone()
    return model, bare_unet.eval().requires_grad_(False), bare_vae.eval().requires_grad_(False), context, counts


def bare_graph(unet, vae, context: Tensor, t: float, control_steps: int) -> Callable[[Tensor], Tensor]:
    """x (B, 3, H, W) in [-1, 1] → VAE encode → UNet at τ = 999 → ẑ0 (→ K control passes if t > 0, τ(t_k));
    then decode: the arithmetic of DESIGN §3 and §6 written out on plain diffusers modules."""
    from ctsr.diffusion.schedule import GENERATOR_TIMESTEP, NoiseSchedule

    schedule = NoiseSchedule().to(context.device)
    s = vae.config.scaling_factor

    def run(x: Tensor) -> Tensor:
        b = x.shape[0]
        c = context.to(x.dtype).expand(b, -1, -1)
        z = vae.encode(x).latent_dist.mode() * s
        eps = unet(z, torch.full((b,), float(GENERATOR_TIMESTEP), device=x.device), encoder_hidden_states=c).sample
        z = schedule.x0_from_eps(z, eps, GENERATOR_TIMESTEP)
        if t > 0:  # the default (endpoint) rule: z0 + t·ε_S(z0, τ_c); eq8 with K Euler steps at τ(t_k)
            for k in range(control_steps):
                tau = torch.full((b,), t * k / control_steps * GENERATOR_TIMESTEP, device=x.device)
                z = z + t / control_steps * unet(z, tau, encoder_hidden_states=c).sample
        return vae.decode(z / s).sample.clamp(-1, 1)

    return run


# -- timing ------------------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> tuple[float, float | None]:
    """(ms per call, peak GiB over the timed calls or None off CUDA); CUDA is synchronised around the clock."""
    cuda = device.type == "cuda"
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
    ms = (time.perf_counter() - start) * 1000 / repeats
    return ms, (torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None)


def _gib(x: float | None) -> str:
    return f"{x:6.1f}" if x is not None else "     -"


def run_bench(size: str = "sd21", device: str | None = None, precision: str = "auto", repeats: int = 10,
              warmup: int = 2, batches: Sequence[int] = (1, 8), ts: Sequence[float] = (0.0, 0.5),
              resolution: int | None = None, large: int | None = None, compile: bool | None = None) -> int:
    """``ctsr bench``: the rows above, printed; ``resolution``/``large`` default to 512/2048 (``sd21``) or 64/0
    (``tiny``), ``compile`` to on CUDA only. The arguments are the command's options (:mod:`ctsr.cli.bench`)."""
    check(repeats >= 1, "--repeats", f"must be ≥ 1, got {repeats}")
    check(warmup >= 0, "--warmup", f"must be ≥ 0, got {warmup}")
    check(all(b >= 1 for b in batches), "--batches", f"each must be ≥ 1, got {batches}")
    check(all(0 <= t <= 1 for t in ts), "--t", f"each must lie in [0, 1], got {ts}")
    check((resolution is None or resolution > 0) and (large is None or large >= 0),
          "--resolution/--large", "must be positive (--large 0: skip)")
    resolution = resolution or (512 if size == "sd21" else 64)
    large = large if large is not None else (2048 if size == "sd21" else 0)
    check(resolution % 64 == 0 and large % 64 == 0, "--resolution/--large", "must be multiples of 64")
    device = resolve_device(device)
    compile_rows = device.type == "cuda" if compile is None else compile

    model, bare_unet, bare_vae, context, n = build(size, device)
    up = Upscaler(model, str(device), precision, batch_size=max(batches))
    dtype, K = up.dtype, model.control_steps
    for module in (bare_unet, bare_vae):
        nn.Module.to(module, device=device, dtype=dtype)
    context = context.to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    import diffusers

    print(f"ctsr bench: {size} (random init), {name}, {str(dtype).removeprefix('torch.')}, "
          f"{resolution}×{resolution} output, torch {torch.__version__}, diffusers {diffusers.__version__}")
    M = 1e6
    print(f"Table 8 row (this model): total {n['total'] / M:.2f} M parameters (UNet {n['unet'] / M:.2f} + VAE "
          f"{n['vae'] / M:.2f} + text encoder {n['text'] / M:.2f} + LoRA {n['lora'] / M:.2f}); trainable "
          f"{n['stage1'] / M:.2f} M in stage 1 (UNet + VAE-encoder LoRA), {n['stage2'] / M:.2f} M in stage 2 "
          f"(control LoRA). Paper, CTSR: {PAPER_TABLE8_CTSR} M (with a prompt extractor; here a fixed prompt)")
    print(f"{'graph':<10}{'mode':<9}{'batch':>5}{'t':>5}{'UNet':>6}{'ms/img':>10}{'img/s':>9}{'peak GiB':>10}"
          f"{'ctsr/bare':>11}")
    sys.stdout.flush()

    g = torch.Generator().manual_seed(0)
    lr = resolution // 4
    inputs = {b: torch.rand(b, 3, lr, lr, generator=g).to(device) for b in batches}
    results: dict[tuple, float] = {}  # (mode, batch, t) → ctsr images/s
    ratios: dict[tuple, float] = {}
    bare_gib = sum(p.numel() * p.element_size() for m in (bare_unet, bare_vae) for p in m.parameters()) / 2**30

    def rows(mode: str) -> None:
        n_warmup = warmup if mode == "eager" else max(2, warmup)  # the first compiled calls compile
        for b in batches:
            x_lr = inputs[b]
            x_hr = (F.interpolate(x_lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1) * 2 - 1)
            x_hr = x_hr.to(dtype)
            for t in ts:
                passes = 1 + (K if t > 0 else 0)
                bare = bare_graph(bare_unet, bare_vae, context, t, K)
                ms_bare, mem_bare = timed(lambda: bare(x_hr), device, repeats, n_warmup)  # noqa: B023 (run now)
                ms_ctsr, mem_ctsr = timed(lambda: up(x_lr, [t]), device, repeats, n_warmup)  # noqa: B023
                results[(mode, b, t)] = b * 1000 / ms_ctsr
                ratios[(mode, b, t)] = ms_ctsr / ms_bare
                for graph, ms, mem, ratio in (("bare", ms_bare, mem_bare, ""),
                                              ("ctsr", ms_ctsr, mem_ctsr, f"{ms_ctsr / ms_bare:.3f}")):
                    print(f"{graph:<10}{mode:<9}{b:>5}{t:>5g}{passes:>6}{ms / b:>10.2f}{b * 1000 / ms:>9.1f}"
                          f"{_gib(mem):>10}{ratio:>11}")
                print(f"ratio ctsr/bare {mode} batch {b} t={t:g}: {ms_ctsr / ms_bare:.3f}")
                sys.stdout.flush()

    rows("eager")
    if large:  # eager, batch 1, as `ctsr upscale` runs by default (compiled, every new tile shape would recompile)
        x_big = torch.rand(1, 3, large // 4, large // 4, generator=g).to(device)
        t, budget = max(ts), up.tiling.max_cells
        if device.type == "cuda":
            torch.cuda.empty_cache()
        large_ms = {}
        for shared in ("unet", "none"):  # the UNet tiles' GroupNorm statistics: the image's (default) or each tile's
            up.tiling = tl = replace(up.tiling, max_cells=REFERENCE_CELLS, shared_norms=shared)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            ms, mem = timed(lambda: up(x_big, [t]), device, 1, 1)
            large_ms[shared] = ms
            peak = ("peak -" if mem is None
                    else f"peak {mem:.1f} GiB, {mem - bare_gib:.1f} without the bare graph's weights")
            print(f"large: {large}×{large} output, t={t:g}, batch 1, eager, UNet tiles {tl.tile}/{tl.overlap}, "
                  f"VAE tiles {tl.vae_tile}/{tl.vae_overlap} (latent px), norms "
                  f"shared {shared}: {ms:.0f} ms, {peak} (target: ≤ 24 GiB)")
            sys.stdout.flush()
        up.tiling = replace(up.tiling, shared_norms="unet", max_cells=budget)
        print(f"ratio shared/per-tile norms, large: {large_ms['unet'] / large_ms['none']:.3f}")
    if compile_rows:
        import torch._dynamo as dynamo

        dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)  # 2 batch sizes × 3 UNets, …
        for module in (bare_unet, bare_vae.encoder, bare_vae.decoder, up.teacher_unet, up.student_unet,
                       model.generator.vae.encoder, model.generator.vae.decoder):
            if module is not None:
                module.compile(dynamic=False)
        rows("compiled")

    worst = max(ratios.values())
    throughput = results.get(("compiled", 8, 0.0))
    verdict = size == "sd21" and device.type == "cuda"
    print(f"targets{'' if verdict else ' (judged for --size sd21 on CUDA only)'}: ctsr/bare ≤ 1.15 on every row: "
          f"worst {worst:.3f}{(' PASS' if worst <= 1.15 else ' FAIL') if verdict else ''}; compiled t=0 batch 8 "
          f"≥ 60 img/s: " + (f"{throughput:.1f}{(' PASS' if throughput >= 60 else ' FAIL') if verdict else ''}"
                             if throughput is not None else "not measured"))
    return 0
