"""The paper's ablations as commands: a registry of experiments, each a list of variants (override YAMLs stacked on a
base config), run one ``ctsr fit`` each, then collected into one table.

    python -m ctsr.experiments.sweep ablation-lambda --size tiny            # train + evaluate every variant, table
    python -m ctsr.experiments.sweep ablation-lambda --dry-run             # print the commands only
    python -m ctsr.experiments.sweep ablation-lambda --collect-only        # table from the runs done so far

Runs: ``<runs>/<experiment>/<run>`` (``<runs>/tiny/<experiment>/<run>`` for ``--size tiny``), a TensorBoard folder
each, so ``tensorboard --logdir <runs>/<experiment>`` shows the variants side by side.
Skip/resume: the runner writes a ``done`` marker into a run's folder only when the run's final step has been validated
(``metrics.md`` records the step it measured, which must be the step of ``checkpoints/last.ckpt``); a re-run skips
marked runs, resumes a run that has ``checkpoints/last.ckpt`` but no marker (``--ckpt_path last``: same optimiser
state, step counter and data stream), validates (``ctsr validate``) a run whose training finished but whose final
validation did not, and starts the others fresh — whatever moment a kill interrupted. Tables: ``<results>/<experiment>.md``/``.csv``
(``<experiment>-tiny.*`` for tiny runs, so tiny numbers never overwrite paper numbers).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

EXPERIMENTS_DIR = "experiments"
ABLATIONS = f"{EXPERIMENTS_DIR}/ablations"
BASES = {"stage1": f"{EXPERIMENTS_DIR}/stage1.yaml", "stage2": f"{EXPERIMENTS_DIR}/stage2.yaml"}
TINY = {"stage1": f"{EXPERIMENTS_DIR}/tiny_stage1.yaml", "stage2": f"{EXPERIMENTS_DIR}/tiny_stage2.yaml"}
# the mini world (README "Mini world"): the shipped mini model fine-tuned per variant, measured on held-out photos
MINI = {"stage1": f"{EXPERIMENTS_DIR}/mini/ablation_stage1.yaml"}
OVERLAYS = {"tiny": TINY, "mini": MINI}
DONE = "done"
SIZES = ("paper", "tiny", "mini")


@dataclass(frozen=True)
class Variant:
    """One row of an ablation table.

    name: the row's label and (unless ``run`` is given) its run folder name.
    factor / value: what the row varies (``lambda_rn`` / ``0.6``), the table's first two columns.
    configs: override YAMLs stacked after the base (and, for tiny, after the tiny overrides).
    tiny_configs: replaces ``configs`` for ``--size tiny`` where the paper file names real weights.
    run: the run folder, when several rows are the same configuration (the defaults of Table 6 appear in each of
        its three blocks but train once).
    """

    name: str
    factor: str
    value: str
    configs: tuple[str, ...] = ()
    tiny_configs: tuple[str, ...] | None = None
    run: str | None = None

    @property
    def run_name(self) -> str:
        return self.run or self.name

    def files(self, size: str) -> tuple[str, ...]:
        return self.tiny_configs if size == "tiny" and self.tiny_configs is not None else self.configs


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    base: str                       # "stage1" | "stage2"
    variants: tuple[Variant, ...]
    columns: tuple[str, ...]        # the metrics the paper's table shows (``--metrics`` changes them)
    per_t: bool = False             # one table row per (variant, t) — stage-2 models have a t sweep
    needs_stage1: bool = False      # tiny: train a tiny stage-1 run first and start every variant from it


def _grid(factor: str, values: Sequence[float], default: float) -> list[Variant]:
    out = []
    for v in values:
        name = f"{factor}-{v:g}"
        if v == default:  # the defaults: one run shared by the three blocks of Table 6
            out.append(Variant(name, factor, f"{v:g}", (), run="defaults"))
        else:
            out.append(Variant(name, factor, f"{v:g}", (f"{ABLATIONS}/{factor}_{v:g}.yaml",)))
    return out


LAMBDA_GRID = {
    "lambda_rn": ((0.6, 0.8, 1.0, 1.2, 1.4), 1.0),
    "lambda_fl": ((1.6, 1.8, 2.0, 2.2, 2.4), 2.0),
    "gamma_time": ((4.5, 5.0, 5.5, 6.0, 6.5, 0.0), 5.5),
}

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e for e in (
        Experiment(
            "ablation-lambda", "Table 6: λ_rn, λ_fl, γ_time, one factor at a time around the defaults (+ γ_time = 0)",
            "stage1", tuple(v for f, (vals, d) in LAMBDA_GRID.items() for v in _grid(f, vals, d)),
            ("psnr", "lpips"),
        ),
        Experiment(
            "ablation-distill", "Table 4: stage 1 with and without the dual-teacher distillation terms", "stage1",
            (Variant("without-distill", "distill", "without", (f"{ABLATIONS}/no_distill.yaml",)),
             Variant("with-distill", "distill", "with (defaults)", ())),
            ("psnr", "ssim", "lpips", "clipiqa", "maniqa"),
        ),
        Experiment(
            "ablation-teacher", "Table 5: the fidelity teacher T_f, SinSR vs ResShift (tiny: bilinear vs bicubic)",
            "stage1",
            (Variant("sinsr", "fidelity_teacher", "SinSR v1, 1 step (tiny: bilinear)",
                     (f"{ABLATIONS}/teacher_sinsr.yaml",), (f"{ABLATIONS}/teacher_bilinear.yaml",)),
             Variant("resshift", "fidelity_teacher", "ResShift v3, 4 steps, stage1.yaml (tiny: bicubic)", ())),
            ("psnr", "ssim", "lpips", "clipiqa", "maniqa"),
        ),
        Experiment(
            "ablation-stage2-path", "Stage-2 control paths (DESIGN §6) × objectives (endpoint, the default; eq8, "
            "the paper's): fidelity, noise, denoise; a t sweep each", "stage2",
            tuple(Variant(f"path-{p}" + ("" if o == "endpoint" else f"-{o}"), "path, objective", f"{p}, {o}",
                          (f"{ABLATIONS}/stage2_path_{p}.yaml", f"{ABLATIONS}/stage2_objective_{o}.yaml"))
                  for p in ("fidelity", "noise", "denoise") for o in ("endpoint", "eq8")),
            ("psnr", "ssim", "lpips", "niqe", "musiq"), per_t=True, needs_stage1=True,
        ),
    )
}


# -- commands ---------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One ``ctsr fit`` of a sweep: its folder and its command (``state``: done | resume | new)."""

    name: str
    folder: Path
    argv: list[str]
    state: str
    variants: list[Variant] = field(default_factory=list)


def save_dir(experiment: str, size: str, runs_dir: str | Path = "runs") -> Path:
    return Path(runs_dir) / experiment if size == "paper" else Path(runs_dir) / size / experiment


def run_state(folder: Path) -> str:
    if (folder / DONE).is_file() and (folder / "metrics.csv").is_file():
        return "done"
    if (folder / "checkpoints" / "last.ckpt").is_file():
        return "resume"
    return "new"


def metrics_step(folder: Path) -> int | None:
    """The step the run's tables were measured at (``metrics.md``: "… metrics at step N"), None without tables."""
    md, csv_file = folder / "metrics.md", folder / "metrics.csv"
    if not md.is_file() or not csv_file.is_file():
        return None
    found = re.search(r"metrics at step (\d+)", md.read_text(errors="replace").split("\n", 1)[0])
    return int(found.group(1)) if found else None


def checkpoint_step(folder: Path) -> int | None:
    """The step of ``checkpoints/last.ckpt`` (read as tensors only), None when there is none readable."""
    from ctsr.checkpoints import load_checkpoint
    from ctsr.errors import CTSRError

    path = folder / "checkpoints" / "last.ckpt"
    if not path.is_file():
        return None
    try:
        step = load_checkpoint(path).get("global_step")
    except CTSRError:
        return None
    return step if isinstance(step, int) else None


def validate_argv(fit: Sequence[str], folder: Path) -> list[str]:
    """The ``ctsr validate`` of a run: its ``fit`` arguments, the checkpoint its training ended with."""
    argv, skip = ["validate"], False
    for a in list(fit)[1:]:
        if skip:
            skip = False
            continue
        if a == "--ckpt_path":
            skip = True
            continue
        argv.append(a)
    return argv + ["--ckpt_path", str(folder / "checkpoints" / "last.ckpt")]


def fit_argv(configs: Sequence[str], folder: Path, state: str, extra: Sequence[str] = ()) -> list[str]:
    """The ``ctsr fit`` arguments (without the program): stacked configs, the run folder, resume if needed."""
    argv = ["fit"]
    for c in configs:
        argv += ["--config", c]
    argv += ["--trainer.logger.init_args.save_dir", str(folder.parent), "--trainer.logger.init_args.name", folder.name]
    argv += list(extra)
    if state == "resume":
        argv += ["--ckpt_path", "last"]
    return argv


def plan(experiment: str, size: str = "paper", runs_dir: str | Path = "runs", stage1_ckpt: str | None = None,
         ) -> list[Run]:
    """The runs of ``experiment`` in order (a tiny stage-2 experiment first trains its tiny stage-1 run)."""
    exp = EXPERIMENTS[experiment]
    if size not in SIZES:
        raise ValueError(f"--size must be one of {SIZES}, got {size!r}")
    if size in OVERLAYS and exp.base not in OVERLAYS[size]:
        raise ValueError(f"{experiment} has no {size} version (its base is {exp.base}; {size}: "
                         f"{', '.join(OVERLAYS[size])} only)")
    root = save_dir(experiment, size, runs_dir)
    runs: list[Run] = []
    extra: list[str] = []
    if exp.base == "stage2":
        if size == "tiny" and stage1_ckpt is None:
            folder = root / "stage1"
            configs = [BASES["stage1"], TINY["stage1"]]
            runs.append(Run("stage1", folder, fit_argv(configs, folder, run_state(folder)), run_state(folder)))
            stage1_ckpt = str(folder / "checkpoints" / "last.ckpt")
        if stage1_ckpt is not None:  # else: stage2.yaml's own stage1_ckpt (runs/ctsr-stage1/checkpoints/last.ckpt)
            extra = ["--model.init_args.stage1_ckpt", stage1_ckpt]
    by_run: dict[str, Run] = {}
    for v in exp.variants:
        if v.run_name in by_run:
            by_run[v.run_name].variants.append(v)
            continue
        folder = root / v.run_name
        overlay = [OVERLAYS[size][exp.base]] if size in OVERLAYS else []
        configs = [BASES[exp.base]] + overlay + list(v.files(size))
        state = run_state(folder)
        run = Run(v.run_name, folder, fit_argv(configs, folder, state, extra), state, [v])
        by_run[v.run_name] = run
        runs.append(run)
    return runs


def command(argv: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "ctsr.cli", *argv]


def subprocess_launcher(argv: Sequence[str]) -> int:
    return subprocess.run(command(argv), check=False).returncode


def in_process_launcher(argv: Sequence[str]) -> int:
    """``ctsr.cli.main`` in this process: one start-up (imports) for a whole tiny sweep instead of one per run."""
    from ctsr.cli import main as ctsr_main

    return ctsr_main(list(argv)) or 0


def execute(runs: Sequence[Run], launch: Callable[[Sequence[str]], int] = subprocess_launcher,
            log: Callable[[str], None] = print) -> dict[str, float]:
    """Run every run not yet done; write its ``done`` marker once its final step is validated. Returns {run: seconds}
    of the runs made. Stops at the first failure (exit status of the run)."""
    times: dict[str, float] = {}
    for run in runs:
        if run.state == "done":
            log(f"[sweep] skip {run.folder} (done)")
            continue
        log(f"[sweep] {'resume' if run.state == 'resume' else 'run'} {run.folder}: {shlex.join(command(run.argv))}")
        start = time.perf_counter()
        rc = launch(run.argv)
        if rc != 0:
            raise SystemExit(f"[sweep] {run.folder}: `ctsr fit` exited with status {rc}; fix it and re-run the same "
                             f"command (finished runs are skipped, this one resumes from its last checkpoint)")
        step = checkpoint_step(run.folder)
        if step is None:
            raise SystemExit(f"[sweep] {run.folder}: no readable checkpoints/last.ckpt after training (is a "
                             f"ModelCheckpoint with save_last among trainer.callbacks?)")
        if metrics_step(run.folder) != step:  # trained to the end, but the final validation did not happen
            argv = validate_argv(run.argv, run.folder)
            log(f"[sweep] validate {run.folder} at step {step}: {shlex.join(command(argv))}")
            rc = launch(argv)
            if rc != 0:
                raise SystemExit(f"[sweep] {run.folder}: `ctsr validate` exited with status {rc}")
        times[run.name] = time.perf_counter() - start
        measured = metrics_step(run.folder)
        if measured != step:
            raise SystemExit(f"[sweep] {run.folder}: metrics.md/metrics.csv measured step {measured}, the final "
                             f"checkpoint is step {step} (is TSweepEvaluation among trainer.callbacks?)")
        (run.folder / DONE).write_text(json.dumps({"argv": list(run.argv), "step": step,
                                                   "seconds": round(times[run.name], 1),
                                                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        run.state = "done"
        log(f"[sweep] done {run.folder} (step {step}) in {times[run.name]:.1f} s")
    return times


# -- tables ---------------------------------------------------------------------------------------------------------
def read_metrics(path: Path) -> dict[float, dict[str, float]]:
    """A run's ``metrics.csv`` (written at its last validation) → {t: {metric: value}}."""
    with open(path, newline="") as f:
        return {float(r["t"]): {k: float(v) for k, v in r.items() if k != "t"} for r in csv.DictReader(f)}


def collect(experiment: str, size: str = "paper", runs_dir: str | Path = "runs", results: str | Path = "results",
            metrics: Sequence[str] | None = None) -> tuple[Path, list[dict[str, str]]]:
    """Write ``<results>/<experiment>[-tiny].md`` and ``.csv``: one row per variant (per t for stage-2 sweeps).
    ``metrics``: the columns (default: the paper table's; ``["all"]``: every metric measured). Runs without
    metrics yet show as ``—``. Returns the Markdown path and the rows."""
    from ctsr.metrics import METRIC_NAMES, column_name

    exp = EXPERIMENTS[experiment]
    root = save_dir(experiment, size, runs_dir)
    measured = {v.name: read_metrics(root / v.run_name / "metrics.csv")
                for v in exp.variants if (root / v.run_name / "metrics.csv").is_file()}
    present = [m for m in METRIC_NAMES if any(m in row for rows in measured.values() for row in rows.values())]
    if metrics is None:
        names = [m for m in exp.columns if m in present] or present
    elif list(metrics) == ["all"]:
        names = present
    else:
        names = list(metrics)
    rows: list[dict[str, str]] = []
    for v in exp.variants:
        per_t = measured.get(v.name, {})
        ts = sorted(per_t) if (exp.per_t and per_t) else [None]
        for t in ts:
            row = per_t.get(t) if t is not None else (per_t[min(per_t)] if per_t else None)
            cells = {"factor": v.factor, "value": v.value, "run": v.run_name}
            if exp.per_t:
                cells["t"] = "" if t is None else f"{t:g}"
            for m in names:
                cells[m] = f"{row[m]:.6g}" if row and m in row else ""
            rows.append(cells)
    out = Path(results)
    out.mkdir(parents=True, exist_ok=True)
    stem = experiment + ("" if size == "paper" else f"-{size}")
    keys = ["factor", "value"] + (["t"] if exp.per_t else []) + names + ["run"]
    with open(out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    protocol = _protocol(root, exp)
    head = ["factor", "value"] + (["t"] if exp.per_t else []) + [column_name(m) for m in names] + ["run"]
    suffix = {"tiny": " — tiny models (numbers mean nothing about SR)",
              "mini": " — mini world (the shipped mini model fine-tuned per variant; held-out photos)"}.get(size, "")
    lines = [f"# {exp.title}" + suffix, "",
             f"Runs: `{root}/<run>` (TensorBoard: `tensorboard --logdir {root}`).", ""]
    if protocol:
        lines += [f"Protocol: {protocol}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r[k] for k in keys]
        cells = [_fmt(k, c) for k, c in zip(keys, cells)]
        lines.append("| " + " | ".join(cells) + " |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return out / f"{stem}.md", rows


def _fmt(key: str, cell: str) -> str:
    from ctsr.metrics import METRIC_NAMES

    if key not in METRIC_NAMES:
        return cell
    if cell == "":
        return "—"
    value = float(cell)
    if not math.isfinite(value):
        return cell
    return f"{value:.2f}" if key in ("psnr", "fid", "musiq") else f"{value:.4f}"


def _protocol(root: Path, exp: Experiment) -> str:
    """The PSNR/SSIM protocol line of the TSweepEvaluation tables of the runs (the first one found)."""
    for v in exp.variants:
        md = root / v.run_name / "metrics.md"
        if md.is_file():
            for line in md.read_text().splitlines():
                if line.startswith("Protocol:"):
                    return line.split(":", 1)[1].strip()
    return ""


# -- sweep-t: `ctsr test` of one controllable checkpoint ---------------------------------------------------------------
TINY_EVAL = """# written by ctsr.experiments.sweep (sweep-t, tiny): eval.yaml on the CPU, the sample photos, random-weight LPIPS
trainer:
  accelerator: cpu
  precision: 32-true
  enable_progress_bar: false
  callbacks:
    - class_path: ctsr.callbacks.t_sweep.TSweepEvaluation
      init_args: {metrics: [psnr, ssim, lpips], metric_weights: random, num_images: 2}
data:
  init_args: {test_pairs: null, test_dirs: [data/samples/val], val_crop_size: 64, val_batch_size: 2, num_workers: 0}
"""


def sweep_t(ckpt: str, size: str = "paper", runs_dir: str | Path = "runs", results: str | Path = "results",
            dry_run: bool = False, launch: Callable[[Sequence[str]], int] = subprocess_launcher) -> int:
    """``ctsr test --config experiments/eval.yaml --ckpt_path CKPT`` into ``<runs>[/tiny]/sweep-t/<run>``, then the
    run's t table copied to ``<results>/sweep-t[-tiny].md``/``.csv``."""
    folder = save_dir("sweep-t", size, runs_dir) / Path(ckpt).parent.parent.name
    argv = ["test", "--config", f"{EXPERIMENTS_DIR}/eval.yaml"]
    if size == "tiny":
        argv += ["--config", str(folder.parent / "tiny_eval.yaml")]
    argv += ["--trainer.logger.init_args.save_dir", str(folder.parent), "--trainer.logger.init_args.name",
             folder.name, "--ckpt_path", ckpt]
    print(shlex.join(command(argv)))
    if dry_run:
        return 0
    if not Path(ckpt).is_file():
        hint = " (make ablation-stage2-path SIZE=tiny writes the default one)" if size == "tiny" else ""
        raise SystemExit(f"[sweep-t] checkpoint '{ckpt}' not found; give CKPT=…{hint}")
    if size == "tiny":
        folder.parent.mkdir(parents=True, exist_ok=True)
        (folder.parent / "tiny_eval.yaml").write_text(TINY_EVAL)
    rc = launch(argv)
    if rc != 0:
        return rc
    stem = "sweep-t" + ("-tiny" if size == "tiny" else "")
    Path(results).mkdir(parents=True, exist_ok=True)
    for ext in ("md", "csv"):
        text = (folder / f"metrics.{ext}").read_text()
        if ext == "md":
            text = text + f"\nModel: `{ckpt}`; run folder `{folder}`.\n"
        (Path(results) / f"{stem}.{ext}").write_text(text)
    print((Path(results) / f"{stem}.md").read_text())
    return 0


# -- command line ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None, launch: Callable[[Sequence[str]], int] = subprocess_launcher) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctsr.experiments.sweep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS) + ["sweep-t"])
    parser.add_argument("--size", choices=SIZES, default="paper",
                        help="paper: experiments/stage*.yaml as they are (real weights); tiny: + tiny_stage*.yaml; mini "
                             "(stage-1 ablations): + experiments/mini/ablation_stage1.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the commands (and what is done) and stop")
    parser.add_argument("--collect-only", action="store_true", help="write the table from the runs done so far")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--results", default="results")
    parser.add_argument("--stage1-ckpt", default=None, help="stage-2 experiments: the stage-1 checkpoint to start from")
    parser.add_argument("--metrics", default=None, help="table columns, comma-separated (default: the paper's; 'all')")
    parser.add_argument("--in-process", action="store_true",
                        help="run every `ctsr fit` in this process (saves the start-up per run; tiny sweeps)")
    parser.add_argument("--ckpt", default="runs/ctsr-stage2/checkpoints/last.ckpt", help="sweep-t: the model")
    args = parser.parse_args(argv)
    if args.in_process and launch is subprocess_launcher:
        launch = in_process_launcher
    if args.experiment == "sweep-t":
        return sweep_t(args.ckpt, args.size, args.runs_dir, args.results, args.dry_run, launch)
    runs = plan(args.experiment, args.size, args.runs_dir, args.stage1_ckpt)
    exp = EXPERIMENTS[args.experiment]
    if args.dry_run:
        print(f"# {exp.title} [{args.size}]: {len(exp.variants)} rows, {len(runs)} runs")
        for run in runs:
            note = {"done": "# done, skipped: ", "resume": "# resumes: ", "new": ""}[run.state]
            print(note + shlex.join(command(run.argv)))
        return 0
    if not args.collect_only:
        times = execute(runs, launch)
        if times:
            print("[sweep] times: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    md, rows = collect(args.experiment, args.size, args.runs_dir, args.results,
                       args.metrics.split(",") if args.metrics else None)
    print(f"[sweep] {len(rows)} rows -> {md} and {md.with_suffix('.csv')}")
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
