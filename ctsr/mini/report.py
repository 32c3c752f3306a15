"""The mini world's evidence: CTSR across t beside bicubic and both teachers, on held-out photos.

Every row sees the same LR files (``data/mini/test/LR``, made once by the suite's Real-ESRGAN degradation). CTSR's
images are what ``ctsr upscale`` writes (the :class:`~ctsr.inference.upscale.Upscaler`, colour fix ``adain``); the
teachers and bicubic are scored as they come. PSNR and SSIM on Y (pyiqa's protocol), NIQE (pyiqa's, on the RGB image),
all on 8-bit images. Writes ``summary.json`` (keys ``t_grid``, ``psnr``, ``ssim``, ``niqe``,
``psnr_to_realness_teacher``, ``bicubic``, ``fidelity_teacher``, ``realness_teacher``, ``targets``, …),
``report.md`` and two figures (PSNR against NIQE, one point per t; a crop of every row).

    python -m ctsr.mini.report --model ctsr/mini/weights/ctsr-mini.safetensors --out results/mini
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

T_GRID = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
TOLERANCE = {"psnr": 0.05, "niqe": 0.05}  # a step against the trend larger than this breaks monotonicity
FIGURES = ("psnr_niqe.png", "crops.png")  # PSNR against NIQE; a crop of every row


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _pairs(test_dir: Path) -> list[tuple[str, Tensor, Tensor]]:
    from ctsr.data.images import list_images, read_image

    pairs = []
    for hr_path in list_images(test_dir / "HR"):
        lr_path = test_dir / "LR" / hr_path.name
        pairs.append((hr_path.stem, read_image(lr_path)[None], read_image(hr_path)[None]))
    if not pairs:
        from ctsr.errors import DataError

        raise DataError(f"'{test_dir}' holds no test pairs: run `python -m ctsr.mini.corpus` (make mini-data)")
    return pairs


def evaluate(model_path: str | Path, test_dir: str | Path = "data/mini/test", realness: str = "weights/"
             "RealESRGAN_x4plus.pth", fidelity: str = "mini", t_grid=T_GRID, keep_images: str | None = None
             ) -> dict:
    """Per-row mean scores over the test photos, and the images of the first photo for the figure."""
    from ctsr.inference.tiling import pad_to_multiple
    from ctsr.inference.upscale import Upscaler
    from ctsr.metrics.functional import psnr, quantize_8bit, ssim
    from ctsr.metrics.networks import build_scorer
    from ctsr.models.export import load_model
    from ctsr.models.teachers import load_sr_model

    niqe = build_scorer("niqe", "pretrained")
    upscaler = Upscaler(load_model(model_path), device="cpu", color="adain")
    teachers = {"fidelity_teacher": load_sr_model(fidelity), "realness_teacher": load_sr_model(realness)}
    scores: dict[str, dict[str, list[float]]] = {}
    shown: dict[str, Tensor] = {}

    def score(row: str, sr: Tensor, hr: Tensor, x_r: Tensor) -> None:
        sr = quantize_8bit(sr)
        s = scores.setdefault(row, {"psnr": [], "ssim": [], "niqe": [], "psnr_to_realness_teacher": []})
        s["psnr"].append(float(psnr(sr, hr)))
        s["ssim"].append(float(ssim(sr, hr)))
        s["niqe"].append(float(niqe(sr)))
        s["psnr_to_realness_teacher"].append(float(psnr(sr, x_r)))

    with torch.no_grad():
        for i, (name, lr, hr) in enumerate(_pairs(Path(test_dir))):
            outs = {"bicubic": F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)}
            outs.update({k: net(lr).float().clamp(0, 1) for k, net in teachers.items()})
            gen = upscaler.model.generator  # what the student's frozen VAE can draw: each teacher's image round-trip
            for key in ("realness_teacher", "fidelity_teacher"):
                h, w = outs[key].shape[-2:]
                x = pad_to_multiple(outs[key], 8)  # the VAE's factor
                outs[f"{key}_vae"] = ((gen.decode(gen.encode_base(x * 2 - 1)) + 1) / 2)[..., :h, :w].clamp(0, 1)
            outs.update({f"t={t:g}": sr.cpu() for t, sr in zip(t_grid, upscaler(lr, list(t_grid)))})
            x_r = quantize_8bit(outs["realness_teacher"])
            for row, sr in outs.items():
                score(row, sr, hr, x_r)
            if i == 0:  # the figure's row: bicubic, T_r, CTSR at three t, T_f, HR
                mid = f"t={t_grid[len(t_grid) // 2]:g}"
                shown = {"name": name, "bicubic": outs["bicubic"], "T_r (Real-ESRGAN)": outs["realness_teacher"],
                         "CTSR t=0": outs[f"t={t_grid[0]:g}"], f"CTSR {mid}": outs[mid],
                         "CTSR t=1": outs[f"t={t_grid[-1]:g}"], "T_f": outs["fidelity_teacher"], "HR": hr}
            if keep_images:
                from ctsr.inference.upscale import _write

                for row, sr in outs.items():
                    _write(quantize_8bit(sr)[0], Path(keep_images) / row / f"{name}.png", 95)
    means = {row: {k: float(np.mean(v)) for k, v in s.items()} for row, s in scores.items()}
    per_image = {row: s for row, s in scores.items()}
    return {"means": means, "per_image": per_image, "shown": shown, "images": [p[0] for p in _pairs(Path(test_dir))]}


def monotone(values: list[float], rising: bool, tol: float) -> tuple[bool, float]:
    """(no step against the trend beyond ``tol``, the largest such step)."""
    steps = np.diff(values) * (1 if rising else -1)
    worst = float(max(0.0, -steps.min())) if len(steps) else 0.0
    return worst <= tol, worst


def targets(summary: dict) -> dict:
    """The issue's targets, met or missed, with the measured values."""
    psnr, niqe = summary["psnr"], summary["niqe"]
    bic, t_r = summary["bicubic"], summary["realness_teacher"]
    out = {}
    gain = psnr[-1] - bic["psnr"]
    out["psnr_t1_vs_bicubic"] = {"met": gain >= 1.0, "value": gain, "needed": ">= 1.0 dB",
                                 "what": "PSNR(t=1) - PSNR(bicubic)"}
    out["niqe_t0_below_t1"] = {"met": niqe[0] < niqe[-1], "value": niqe[-1] - niqe[0], "needed": "> 0",
                               "what": "NIQE(t=1) - NIQE(t=0)"}
    gap = abs(niqe[0] - t_r["niqe"])
    out["niqe_t0_near_realness_teacher"] = {"met": gap <= 1.0, "value": gap, "needed": "<= 1.0",
                                            "what": "distance of NIQE(t=0) to NIQE(realness teacher)"}
    ok, worst = monotone(psnr, True, TOLERANCE["psnr"])
    out["psnr_monotone"] = {"met": ok, "value": worst, "needed": f"<= {TOLERANCE['psnr']} dB",
                            "what": "largest PSNR drop from one t to the next (PSNR should rise with t)"}
    ok, worst = monotone(niqe, True, TOLERANCE["niqe"])
    out["niqe_monotone"] = {"met": ok, "value": worst, "needed": f"<= {TOLERANCE['niqe']}",
                            "what": "largest NIQE drop from one t to the next (NIQE should rise with t: realness "
                                    "falls towards the fidelity end)"}
    return out


def summarise(result: dict, t_grid, model_path: str | Path) -> dict:
    m = result["means"]
    rows = [m[f"t={t:g}"] for t in t_grid]
    summary = {
        "t_grid": list(t_grid),
        "psnr": [r["psnr"] for r in rows],
        "ssim": [r["ssim"] for r in rows],
        "niqe": [r["niqe"] for r in rows],
        "psnr_to_realness_teacher": [r["psnr_to_realness_teacher"] for r in rows],
        "bicubic": m["bicubic"],
        "fidelity_teacher": m["fidelity_teacher"],
        "realness_teacher": m["realness_teacher"],
        # each teacher's image through the student's VAE (encode, decode): the best the student can draw of it
        "fidelity_teacher_vae": m["fidelity_teacher_vae"],
        "realness_teacher_vae": m["realness_teacher_vae"],
        "test_images": result["images"],
        "model": {"file": Path(model_path).name, "sha256": sha256(model_path)},
        "protocol": "PSNR/SSIM on Y (BT.601, pyiqa ycbcr), NIQE (pyiqa, BasicSR's pristine parameters when pyiqa's "
                    "are not cached), 8-bit images; CTSR images as `ctsr upscale` writes them (adain colour fix)",
        "per_image": result["per_image"],
    }
    summary["targets"] = targets(summary)
    return summary


def figures(summary: dict, shown: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.plot(summary["niqe"], summary["psnr"], "o-", color="tab:blue", label="CTSR, t = 0 … 1")
    for t, x, y in zip(summary["t_grid"], summary["niqe"], summary["psnr"]):
        ax.annotate(f"t={t:g}", (x, y), textcoords="offset points", xytext=(5, -10), fontsize=8)
    marks = {"bicubic": ("s", "gray"), "fidelity_teacher": ("^", "tab:green"), "realness_teacher": ("v", "tab:red")}
    for key, (marker, color) in marks.items():
        ax.plot(summary[key]["niqe"], summary[key]["psnr"], marker, color=color, ms=9,
                label=key.replace("_", " "))
        if f"{key}_vae" in summary:  # the teacher's image through the student's VAE: the end of t it can reach
            ax.plot(summary[f"{key}_vae"]["niqe"], summary[f"{key}_vae"]["psnr"], marker, color=color, ms=9,
                    mfc="none", label=key.replace("_", " ") + " through the student's VAE")
    ax.set_xlabel("NIQE ↓ (more natural to the left)")
    ax.set_ylabel("PSNR (Y) ↑ [dB]")
    ax.set_title(f"Mini world, {len(summary['test_images'])} held-out photos")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / FIGURES[0], dpi=120)
    plt.close(fig)

    name = shown.pop("name")
    hr = shown["HR"]
    h, w = hr.shape[-2:]
    size = min(h, w, 192)
    top, left = (h - size) // 2, (w - size) // 2
    keys = list(shown)
    fig, axes = plt.subplots(1, len(keys), figsize=(2.2 * len(keys), 2.6))
    for ax, key in zip(axes, keys):
        img = shown[key][0, :, top : top + size, left : left + size].clamp(0, 1).permute(1, 2, 0).numpy()
        ax.imshow(img, interpolation="nearest")
        ax.set_title(key, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{name} (held out), a centre crop", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / FIGURES[1], dpi=110)
    plt.close(fig)
    return list(FIGURES)


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def write_report(summary: dict, out: Path, pictures: list[str], notes: dict[str, str] | None = None) -> Path:
    notes = notes or {}
    lines = ["# Mini world: CTSR on held-out photos", "",
             f"Model `{summary['model']['file']}` (sha256 `{summary['model']['sha256'][:16]}…`); test photos: "
             f"{', '.join(summary['test_images'])}. {summary['protocol']}.", "",
             _row(["row", "PSNR↑", "SSIM↑", "NIQE↓", "PSNR to T_r"]), _row(["---"] * 5)]
    for key, label in (("bicubic", "bicubic"), ("fidelity_teacher", "fidelity teacher T_f"),
                       ("realness_teacher", "realness teacher T_r (Real-ESRGAN x4plus)"),
                       ("fidelity_teacher_vae", "T_f's image through the student's VAE (t = 1's ceiling)"),
                       ("realness_teacher_vae", "T_r's image through the student's VAE (t = 0's ceiling)")):
        r = summary[key]
        lines.append(_row([label, f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", f"{r['niqe']:.3f}",
                           f"{r['psnr_to_realness_teacher']:.2f}"]))
    for i, t in enumerate(summary["t_grid"]):
        lines.append(_row([f"CTSR t = {t:g}", f"{summary['psnr'][i]:.2f}", f"{summary['ssim'][i]:.4f}",
                           f"{summary['niqe'][i]:.3f}", f"{summary['psnr_to_realness_teacher'][i]:.2f}"]))
    lines += ["", "## Targets", "", _row(["target", "measured", "needed", "met"]), _row(["---"] * 4)]
    for key, tgt in summary["targets"].items():
        lines.append(_row([tgt["what"], f"{tgt['value']:.3f}", tgt["needed"], "yes" if tgt["met"] else "**no**"]))
    missed = [k for k, v in summary["targets"].items() if not v["met"]]
    if missed:
        lines += ["", "Missed, and why:"]
        lines += [f"- `{k}`: {notes.get(k, 'see the figures and the per-image scores in summary.json.')}"
                  for k in missed]
    lines += ["", *[f"![{p}]({p})" for p in pictures], ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    from ctsr.mini import MODEL

    parser = argparse.ArgumentParser(prog="python -m ctsr.mini.report", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(MODEL), help="the CTSR model file (default: the shipped one)")
    parser.add_argument("--test", default="data/mini/test", help="folder with HR/ and LR/ (make mini-data)")
    parser.add_argument("--realness", default="weights/RealESRGAN_x4plus.pth")
    parser.add_argument("--fidelity", default="mini")
    parser.add_argument("--out", default="results/mini")
    parser.add_argument("--notes", help="a JSON file: target key → why it was missed (written into report.md; "
                        "default: notes.json in --out when it is there)")
    parser.add_argument("--rewrite", action="store_true",
                        help="only rewrite report.md from the summary.json and figures already in --out (new notes)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    notes_file = Path(args.notes) if args.notes else out / "notes.json"
    notes = json.loads(notes_file.read_text()) if notes_file.is_file() else None
    if args.rewrite:
        summary = json.loads((out / "summary.json").read_text())
        pictures = [p for p in FIGURES if (out / p).is_file()]
        print(write_report(summary, out, pictures, notes).read_text())
        return 0
    result = evaluate(args.model, args.test, args.realness, args.fidelity)
    summary = summarise(result, T_GRID, args.model)
    pictures = figures(summary, result["shown"], out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(write_report(summary, out, pictures, notes).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
