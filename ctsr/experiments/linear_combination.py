"""The paper's Table 1 baseline: blend a fidelity model's and a realness model's outputs, α·x_f + (1 − α)·x_r.

    python -m ctsr.experiments.linear_combination --size tiny          # tiny generator vs bicubic, sample photos
    python -m ctsr.experiments.linear_combination --realness osediff --fidelity resshift:weights/resshift_realsrx4_s4_v3.pth \
        --pairs datasets/RealSR/test_LR datasets/RealSR/test_HR        # the paper: OSEDiff and ResShift

Realness model x_r: a trained CTSR file at t = 0 (``ctsr.models.export.load_model``), ``osediff`` (SD 2.1-base +
OSEDiff's LoRA, the paper's choice) or ``tiny`` (an untrained tiny generator). Fidelity model x_f: an
``AnchoredTeacher``'s ``upscale`` of any ``sr_model`` spec (``bicubic``, a spandrel checkpoint). Every α is measured
with the same :class:`~ctsr.metrics.MetricSuite` as the t sweep, in one pass over the data (x_r and x_f computed once
per batch). When the realness model is controllable (a stage-2 file) its own t sweep is measured in the same pass and
drawn in the same fidelity–realness figure, the blends as baseline points.
Writes ``<results>/linear-combination[-tiny].md``/``.csv``/``.png``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

DEFAULT_ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PRESETS = {
    "tiny": {"realness": "tiny", "fidelity": "bicubic", "dirs": ["data/samples/val"], "pairs": None, "crop": 64,
             "metrics": "psnr,ssim,lpips", "metric_weights": "random", "device": "cpu", "base": None},
    "paper": {"realness": "osediff", "fidelity": "resshift:weights/resshift_realsrx4_s4_v3.pth", "dirs": None,
              "pairs": ["datasets/RealSR/test_LR", "datasets/RealSR/test_HR"], "crop": None,
              "metrics": "psnr,ssim,lpips,dists,fid,niqe,musiq,maniqa,clipiqa", "metric_weights": "pretrained",
              "device": "auto", "base": "stabilityai/stable-diffusion-2-1-base"},
}


def blend(x_f: Tensor, x_r: Tensor, alpha: float) -> Tensor:
    """α·x_f + (1 − α)·x_r, images (B, 3, H, W) in [0, 1]; α = 1 is the fidelity model, α = 0 the realness model."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if alpha == 0.0:
        return x_r
    if alpha == 1.0:
        return x_f
    return alpha * x_f + (1.0 - alpha) * x_r


def load_realness(spec: str, base: str | None = None):
    """``tiny`` | ``osediff`` | a CTSR model file → a model called as model(x_lr, t) (a ControllableSR)."""
    from ctsr.models.export import Stage1Only, load_model
    from ctsr.models.generator import OneStepGenerator

    if spec == "tiny":
        return Stage1Only.from_stage1(OneStepGenerator(pretrained="tiny", seed=0)).eval()
    if spec == "osediff":
        gen = OneStepGenerator(pretrained=base or "stabilityai/stable-diffusion-2-1-base",
                               osediff_lora="weights/osediff.pkl")
        return Stage1Only.from_stage1(gen).eval()
    return load_model(spec, pretrained=base)


@torch.no_grad()
def evaluate(realness, fidelity, batches: Iterable[dict], alphas: Sequence[float], make_suite,
             t_values: Sequence[float] = ()) -> tuple[dict[float, dict[str, float]], dict[float, dict[str, float]]]:
    """One pass over ``batches`` ({"lr", "hr"}): ({α: metrics of the blend}, {t: metrics of realness(x, t)}).

    realness: model(x_lr, t) → (B,3,4h,4w) in [0,1]; fidelity: x_lr → (B,3,4h,4w) in [0,1] (e.g. teacher.upscale);
    make_suite: () → a fresh MetricSuite. ``t_values`` (controllable realness model only): its t sweep, reusing z0.
    """
    blends = {float(a): make_suite() for a in alphas}
    sweep = {float(t): make_suite() for t in t_values}
    for batch in batches:
        x_lr, hr = batch["lr"], batch["hr"].float()
        if sweep:
            outs = dict(zip(sweep, realness.sweep(x_lr, list(sweep))))
            x_r = outs[0.0].float().clamp(0, 1) if 0.0 in outs else realness(x_lr, 0.0).float().clamp(0, 1)
            for t, sr in outs.items():
                sweep[t].update(sr.float().clamp(0, 1), hr)
        else:
            x_r = realness(x_lr, 0.0).float().clamp(0, 1)
        x_f = fidelity(x_lr).float().clamp(0, 1)
        for a, suite in blends.items():
            suite.update(blend(x_f, x_r, a), hr)
    return {a: s.compute() for a, s in blends.items()}, {t: s.compute() for t, s in sweep.items()}


def write_results(folder: Path, stem: str, rows: dict[float, dict[str, float]], ctsr_rows: dict[float, dict],
                  protocol: str, title: str) -> list[Path]:
    """The α table (``write_tables``, its first column named α) and the fidelity–realness figure."""
    from ctsr.callbacks.t_sweep import fidelity_realness_figure, write_tables

    write_tables(folder, rows, protocol, title, stem)
    md, csv_path = folder / f"{stem}.md", folder / f"{stem}.csv"
    md.write_text(md.read_text().replace("| t |", "| α (× fidelity) |", 1))
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(["alpha" + lines[0][1:]] + lines[1:]) + "\n")
    out = [md, csv_path]
    names = next(iter(rows.values())).keys()
    x = "lpips" if "lpips" in names else next((n for n in names if n not in ("psnr", "ssim")), None)
    y = "psnr" if "psnr" in names else "ssim"
    if x:
        curve = ctsr_rows or ({0.0: rows[0.0]} if 0.0 in rows else {})  # a stage-1 model: its one point, t = 0
        fig = fidelity_realness_figure(curve, {f"blend α={a:g}": r for a, r in rows.items()}, x, y)
        fig.axes[0].set_title(title, fontsize=8)
        fig.savefig(folder / f"{stem}.png")
        out.append(folder / f"{stem}.png")
    return out


def _short(spec: str) -> str:
    """A model's label in titles: the run folder of a checkpoint, the stem of a file, or the name itself."""
    return Path(spec).parent.parent.name if spec.endswith(".ckpt") else Path(spec).stem


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ctsr.experiments.linear_combination",
                                description="Table 1 baseline: α·x_f + (1 − α)·x_r for α in a list.")
    p.add_argument("--size", choices=sorted(PRESETS), default="paper", help="preset for every unset option")
    p.add_argument("--realness", help="tiny | osediff | a CTSR .ckpt/.safetensors (evaluated at t = 0)")
    p.add_argument("--fidelity", help="the AnchoredTeacher sr_model: bicubic or a spandrel checkpoint")
    p.add_argument("--dirs", nargs="*", help="HR folders, degraded with a fixed seed per image")
    p.add_argument("--pairs", nargs=2, metavar=("LR_DIR", "HR_DIR"), help="a paired LR/HR test set")
    p.add_argument("--crop", type=int, help="centre crop of the HR images (multiple of 32; none: whole images)")
    p.add_argument("--alphas", default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS))
    p.add_argument("--t-values", default="0,0.2,0.4,0.6,0.8,1", help="the CTSR sweep, for a controllable model")
    p.add_argument("--metrics")
    p.add_argument("--metric-weights", choices=("pretrained", "random"))
    p.add_argument("--color-space", choices=("y", "rgb"), default="y")
    p.add_argument("--base", help="SD 2.1-base location (hub id or folder) for osediff / CTSR files")
    p.add_argument("--device")
    p.add_argument("--results", default="results")
    p.add_argument("--dry-run", action="store_true", help="print the settings and stop (loads nothing)")
    a = p.parse_args(argv)
    preset = PRESETS[a.size]
    for k, v in preset.items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    if a.dirs is None and a.pairs is None:
        p.error("give --dirs or --pairs")
    alphas = [float(x) for x in a.alphas.split(",")]
    stem = "linear-combination" + ("-tiny" if a.size == "tiny" else "")
    settings = (f"realness={a.realness} (t=0) fidelity={a.fidelity} alphas={alphas} data={a.pairs or a.dirs} "
                f"crop={a.crop} metrics={a.metrics} ({a.metric_weights}) -> {a.results}/{stem}.md/.csv/.png")
    print(f"[linear-combination] {settings}")
    if a.dry_run:
        return 0

    from ctsr.data.datamodule import SRDataModule
    from ctsr.metrics import MetricSuite
    from ctsr.models.teachers import AnchoredTeacher

    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          "cpu" if a.device == "auto" else a.device)
    dm = SRDataModule(val_dirs=a.dirs, val_pairs=[a.pairs] if a.pairs else None, val_crop_size=a.crop,
                      val_batch_size=1 if a.crop is None else 2, num_workers=0)
    dm.setup("validate")
    realness = load_realness(a.realness, a.base).to(device)
    teacher = AnchoredTeacher(sr_model=a.fidelity).to(device)
    prototype = MetricSuite(a.metrics.split(","), a.color_space, 0, a.metric_weights).to(device)
    ts = [float(t) for t in a.t_values.split(",")] if getattr(realness, "supports_control", False) else []
    batches = (dm.on_after_batch_transfer({k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}, 0)
               for b in dm.val_dataloader())
    rows, ctsr_rows = evaluate(realness, teacher.upscale, batches, alphas, lambda: prototype.clone().to(device), ts)
    title = f"Table 1: α·{_short(a.fidelity)} + (1−α)·{_short(a.realness)}" + (" — tiny (meaningless scores)" if a.size == "tiny" else "")
    files = write_results(Path(a.results), stem, rows, ctsr_rows, prototype.protocol(), title)
    print(Path(files[0]).read_text())
    print("[linear-combination] wrote " + ", ".join(map(str, files)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
