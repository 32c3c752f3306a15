"""Table 9 as a command: the fidelity–realness distillation applied to low-light enhancement, scored beside its two
teachers on LOL-v2-synthetic's test set, in the paper's format (PSNR, SSIM, LPIPS, parameters).

    python -m ctsr.experiments.table9 --size paper [--fidelity SPEC] [--realness SPEC] [--model FILE] [--dry-run]
    python -m ctsr.experiments.table9 --size tiny                 # `make table9 SIZE=tiny`: CPU, minutes

1. Trains stage 1 of the low-light task unless ``--model`` is given: ``ctsr fit --config experiments/lle_stage1.yaml``
   (``tiny``: + ``experiments/tiny_lle_stage1.yaml``) into ``runs/table9/lle-stage1`` (a finished run is skipped, an
   interrupted one resumes; the sweep runner's rules).
2. Scores, image by image on the test pairs (``paper``: ``data/meta/lolv2_syn_test.txt``, written by
   ``data/lolv2_meta.py``; ``tiny``: the sample photos darkened with a fixed seed each): the fidelity teacher, the
   realness teacher and the distilled model (t = 0, or ``--t``), with GSAD's protocol (``--protocol gsad``: its
   brightness matching to the target, :mod:`ctsr.evaluation.lowlight`) or ``plain``.
3. Writes ``results/table9.md`` / ``.csv`` (``tiny``: ``table9-tiny``).

Teachers (``--fidelity`` / ``--realness``, default: what the training config uses — ``paper``: ``gsad`` and
``retidiff``, the paper's GSAD and Reti-Diff from their release files in ``weights/``; ``tiny``: the classical
stand-ins): any ``sr_model`` string of an ``AnchoredTeacher`` at scale 1 — ``gsad[:PATH]``,
``retidiff[:NET[,DECOM]]``, a 1× spandrel checkpoint, ``identity`` / ``gamma`` / ``equalize`` — or
``python:MODULE:FACTORY`` (a callable returning an image-to-image ``nn.Module`` or function). GSAD and Reti-Diff rows
are named as in the paper; other teachers' rows carry their spec. Parameters (M) count every parameter a method
holds (GSAD: all of ``lolv2_syn_gen.pth``, 0.32 M of which never run at inference; Reti-Diff: the network and its
0.02 M Retinex decomposition net; the distilled model: the generator's UNet and VAE).
"""
from __future__ import annotations

import argparse
import importlib
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ctsr.experiments.sweep import (
    EXPERIMENTS_DIR, SIZES, Run, command, execute, fit_argv, in_process_launcher, run_state, subprocess_launcher,
)

CONFIGS = {"stage1": f"{EXPERIMENTS_DIR}/lle_stage1.yaml", "tiny": f"{EXPERIMENTS_DIR}/tiny_lle_stage1.yaml"}
TEST_META = "data/meta/lolv2_syn_test.txt"
TINY_TEST_DIR = "data/samples/val"
PAPER_ROWS = (("GSAD", 28.67, 0.9444, 0.0487, 17.17), ("Reti-Diff", 27.53, 0.9512, 0.0349, 26.11),
              ("GSAD (Distilled)", 28.69, 0.9507, 0.0336, 17.17))


# -- the methods ------------------------------------------------------------------------------------------------------
def load_enhancer(spec: str) -> Callable[[Tensor], Tensor]:
    """An image-to-image enhancer (B, 3, H, W) in [0, 1] → same size: an ``sr_model`` string at scale 1, or
    ``python:MODULE:FACTORY``."""
    if spec.startswith("python:"):
        module, _, factory = spec[len("python:"):].partition(":")
        obj = getattr(importlib.import_module(module), factory)()
        return obj.eval() if isinstance(obj, nn.Module) else obj
    from ctsr.models.teachers import load_sr_model

    model = load_sr_model(spec, scale=1)
    return model.eval() if isinstance(model, nn.Module) else model


def parameters_m(method) -> float | None:
    """Parameters (M) of a method: its network's, the generator's UNet + VAE for a CTSR model; 0 for a formula."""
    if isinstance(method, CTSRMethod):
        gen = method.model.generator
        return sum(p.numel() for m in (gen.unet, gen.vae) for p in m.parameters()) / 1e6
    if isinstance(method, nn.Module):
        return sum(p.numel() for p in method.parameters()) / 1e6
    return None


class CTSRMethod:
    """A trained low-light CTSR model at one t, as an enhancer (padded to its alignment, cropped back)."""

    def __init__(self, path: str | Path, t: float = 0.0, device: str = "cpu") -> None:
        from ctsr.models.export import load_model

        self.model = load_model(path).to(device).eval()
        self.t, self.device = float(t), device
        scale = getattr(self.model.generator, "scale", 4)
        if scale != 1:
            raise SystemExit(f"table9: '{path}' upscales ×{scale}; Table 9 needs a low-light model (task: lle, "
                             f"scale 1)")

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        from ctsr.inference.tiling import lr_multiple, pad_to_multiple

        h, w = x.shape[-2:]
        xp = pad_to_multiple(x.to(self.device), lr_multiple(self.model.generator.unet, 1))
        return self.model(xp, self.t)[..., :h, :w].float().clamp(0, 1)


# -- the test pairs ---------------------------------------------------------------------------------------------------
def test_pairs(size: str, test_meta: str | None) -> list[tuple[str, Tensor, Tensor]]:
    """(name, low (1,3,H,W), normal (1,3,H,W)) of the test set."""
    from ctsr.data.datasets import center_crop, path_seed, read_pair, read_pair_list
    from ctsr.data.images import list_images, read_image

    if size == "tiny" and test_meta is None:  # normal-light photos, darkened with a fixed seed each (128² crops)
        from ctsr.data.lowlight import SyntheticDarkening

        dark = SyntheticDarkening()
        out = []
        for path in list_images(TINY_TEST_DIR):
            hr = center_crop(read_image(path), 128, 64)[None]
            out.append((path.name, dark(hr, seeds=[path_seed(path)]), hr))
        return out
    meta = Path(test_meta or TEST_META)
    if not meta.is_file():
        raise SystemExit(f"table9: test list '{meta}' not found; write it with `python data/lolv2_meta.py --root "
                         f"<your LOL-v2 copy>` (LOL-v2: https://github.com/flyywh/CVPR-2020-Semi-Low-Light)")
    return [(hr.name, *(t[None] for t in read_pair(lr, hr, 1, "test"))) for lr, hr in read_pair_list(meta)]


# -- scoring and the table --------------------------------------------------------------------------------------------
def score(methods: dict[str, Callable[[Tensor], Tensor]], pairs, protocol: str = "gsad",
          lpips_weights: str = "pretrained", log=print) -> dict[str, dict[str, float]]:
    """{method: {psnr, ssim, lpips}} averaged over ``pairs`` under ``protocol``."""
    from ctsr.evaluation.lowlight import LowLightScores
    from ctsr.metrics.networks import build_scorer

    lpips = build_scorer("lpips", lpips_weights)
    rows = {}
    for name, method in methods.items():
        scores = LowLightScores(protocol, lambda a, b: lpips(a, b).mean())
        for _, low, normal in pairs:
            with torch.no_grad():
                out = method(low).float().cpu().clamp(0, 1)
            if out.shape != normal.shape:
                raise SystemExit(f"table9: '{name}' returned {tuple(out.shape)} for a {tuple(normal.shape)} target")
            scores.update(out, normal)
        rows[name] = scores.compute()
        log(f"[table9] {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[name].items()))
    return rows


def write_table9(rows: dict[str, dict[str, float]], params: dict[str, float | None], path_stem: Path,
                 protocol: str, notes: Sequence[str] = ()) -> list[Path]:
    """``<stem>.md`` and ``<stem>.csv`` in the paper's format: Method | PSNR↑ | SSIM↑ | LPIPS↓ | Parameters (M)↓,
    the paper's own rows below for reference."""
    from ctsr.checkpoints import atomic_write_files

    def p(v: float | None) -> str:
        return "–" if v is None else f"{v:.2f}"

    md = ["# Table 9: fidelity–realness distillation for low-light enhancement (LOL-v2-synthetic test)", "",
          f"Protocol: {protocol} (ctsr.evaluation.lowlight): PSNR and SSIM on 8-bit RGB, LPIPS-Alex"
          + (", output brightness matched to the target's mean gray level as GSAD's test.py" if protocol == "gsad"
             else ""), ""]
    md += [*notes, ""] if notes else []
    md += ["| Method | PSNR↑ | SSIM↑ | LPIPS↓ | Parameters (M)↓ |", "|---|---|---|---|---|"]
    csv = ["method,psnr,ssim,lpips,params_m"]
    for name, v in rows.items():
        md.append(f"| {name} | {v['psnr']:.2f} | {v['ssim']:.4f} | {v.get('lpips', float('nan')):.4f} | "
                  f"{p(params.get(name))} |")
        csv.append(f"{name},{v['psnr']:.6g},{v['ssim']:.6g},{v.get('lpips', float('nan')):.6g},"
                   + ("" if params.get(name) is None else f"{params[name]:.6g}"))
    md += ["", "The paper's Table 9, for reference:", "", "| Method | PSNR↑ | SSIM↑ | LPIPS↓ | Parameters (M)↓ |",
           "|---|---|---|---|---|"]
    md += [f"| {n} | {a:.2f} | {b:.4f} | {c:.4f} | {d:.2f} |" for n, a, b, c, d in PAPER_ROWS]
    paths = [path_stem.with_suffix(".md"), path_stem.with_suffix(".csv")]
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_files([(paths[0], ("\n".join(md) + "\n").encode()), (paths[1], ("\n".join(csv) + "\n").encode())],
                       "table 9")
    return paths


def teacher_specs(configs: str | Sequence[str]) -> tuple[str, str]:
    """The (fidelity, realness) ``sr_model`` strings the training configs use (stacked: the last one that sets a
    teacher wins, as ``ctsr fit --config A --config B``)."""
    import yaml

    found = {"fidelity_teacher": "identity", "realness_teacher": "identity"}
    for config in [configs] if isinstance(configs, str) else configs:
        args = (yaml.safe_load(Path(config).read_text()).get("model") or {}).get("init_args") or {}
        for key in found:
            sr_model = ((args.get(key) or {}).get("init_args") or {}).get("sr_model")
            if sr_model is not None:
                found[key] = str(sr_model)
    return found["fidelity_teacher"], found["realness_teacher"]


def method_name(role: str, spec: str) -> str:
    """The paper's row names for its teachers (``GSAD``, ``Reti-Diff``), else ``T_f: SPEC`` / ``T_r: SPEC``."""
    from ctsr.models import gsad, retidiff

    if not spec.startswith("python:"):
        if gsad.parse_spec(spec) is not None:
            return "GSAD"
        if retidiff.parse_spec(spec) is not None:
            return "Reti-Diff"
    return f"{role}: {spec}"


def main(argv: list[str] | None = None, launch: Callable[[Sequence[str]], int] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ctsr.experiments.table9", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=SIZES, default="paper")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--results", default="results")
    p.add_argument("--fidelity", help="the fidelity teacher (default: lle_stage1.yaml's; the paper: GSAD)")
    p.add_argument("--realness", help="the realness teacher (default: lle_stage1.yaml's; the paper: Reti-Diff)")
    p.add_argument("--model", help="the distilled model file / checkpoint / run folder (default: train it)")
    p.add_argument("--t", type=float, default=0.0, help="the distilled model's t (default 0: stage 1)")
    p.add_argument("--test-meta", default=None, help=f"test pair list (paper default {TEST_META})")
    p.add_argument("--protocol", choices=["gsad", "plain"], default="gsad")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--in-process", action="store_true", help="train in this process (tiny)")
    p.add_argument("--dry-run", action="store_true", help="print the training command and stop")
    a = p.parse_args(argv)
    launch = launch or (in_process_launcher if a.in_process else subprocess_launcher)
    configs = [CONFIGS["stage1"]] + ([CONFIGS["tiny"]] if a.size == "tiny" else [])
    root = Path(a.runs_dir) / ("tiny" if a.size == "tiny" else "") / "table9"
    model = a.model
    if model is None:
        folder = root / "lle-stage1"
        state = run_state(folder)
        run = Run("lle-stage1", folder, fit_argv(configs, folder, state), state)
        if a.dry_run:
            print(("# done, skipped: " if state == "done" else "") + shlex.join(command(run.argv)))
            return 0
        execute([run], launch)
        model = str(folder / "checkpoints" / "last.ckpt")
    elif a.dry_run:
        print(f"# scoring {model}")
        return 0
    fid_spec, real_spec = teacher_specs(configs)
    fid_spec, real_spec = a.fidelity or fid_spec, a.realness or real_spec
    methods = {method_name("T_f", fid_spec): load_enhancer(fid_spec),
               method_name("T_r", real_spec): load_enhancer(real_spec),
               f"CTSR-LLE (distilled, t = {a.t:g})": CTSRMethod(model, a.t, a.device)}
    rows = score(methods, test_pairs(a.size, a.test_meta), a.protocol,
                 "random" if a.size == "tiny" else "pretrained")
    params = {name: parameters_m(m) for name, m in methods.items()}
    notes = [f"Distilled model: `{model}`. Teachers: fidelity `{fid_spec}`, realness `{real_spec}` (the paper: GSAD "
             f"and Reti-Diff, `gsad` / `retidiff`: ctsr.models.gsad / ctsr.models.retidiff). Parameters (M): every "
             f"parameter a method holds (GSAD: all of its release file, 0.32 M of which never run; Reti-Diff: with "
             f"its 0.02 M decomposition net; the distilled model: its UNet and VAE)."]
    if a.size == "tiny":
        notes.append("SIZE=tiny: tiny random-init models, LPIPS with random weights, the sample photos darkened "
                     "synthetically — the numbers mean nothing; the path is exercised.")
    stem = Path(a.results) / ("table9-tiny" if a.size == "tiny" else "table9")
    for path in write_table9(rows, params, stem, a.protocol, notes):
        print(f"[table9] wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
