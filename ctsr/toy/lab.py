"""The mechanism lab: the paper's claims measured in the toy world, on the CPU, in a few minutes.

    python -m ctsr.toy.lab --out results/toy            # d = 2 and d = 16; writes report.md, results.json, PNGs

What it runs, per dimension d (fixed seeds, one CPU thread, fresh full batches):
  1. pre-training: the student imitates the realness model (ε_S → exact mixture ε; G → posterior samples);
  2. Table 1: the linear mix α·x_f + (1−α)·x_r (x_f = E[z|y], x_r = exact posterior sample) against the stage-1
     student (3 seeds and the training trajectory) on the fidelity (MSE) – realness (energy distance, log p) plane;
  3. Table 6: λ_rn, λ_fl, γ_time one at a time around (1, 2, 5.5), γ_time = 0, and four ablations
     (T_r = exact ε, λ_fl = 0, λ_rn = 0, L_rec only);
  4. stage 2 with each control path from the pre-trained student (the full range; at d = 2 the fidelity path also
     from the stage-1 student, and once with 4× the steps), evaluated over t = 0, 0.1, …, 1 with the project's rule (K = 1), K = 8, the path itself (what a
     perfect student gives) and, for the fidelity path, a diagnostic rule and the velocity error by t.

API: ``run_lab(out, LabConfig(...))`` returns the results; ``run_dim(d, cfg)`` runs one dimension.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ctsr.losses.stage1 import Stage1Weights
from ctsr.losses.stage2 import path_offset
from ctsr.toy.figures import fig_grid, fig_stage2, fig_table1, fig_world
from ctsr.toy.models import ToyGenerator
from ctsr.toy.report import write_report
from ctsr.toy.train import EvalSet, eps_error, fidelity_teacher, pretrain, stage1, stage2
from ctsr.toy.world import MixtureWorld, mse

PATHS = ("fidelity", "noise", "denoise")
GRID = {
    "lambda_rn": (0.6, 0.8, 1.0, 1.2, 1.4),
    "lambda_fl": (1.6, 1.8, 2.0, 2.2, 2.4),
    "gamma_time": (4.5, 5.0, 5.5, 6.0, 6.5),
}
DEFAULTS = {"lambda_rn": 1.0, "lambda_fl": 2.0, "gamma_time": 5.5}
ABLATIONS = (  # name, overrides, realness teacher
    ("γ_time = 0", {"gamma_time": 0.0}, "copy"),
    ("T_r = exact ε", {}, "exact"),
    ("λ_fl = 0", {"lambda_fl": 0.0}, "copy"),
    ("λ_rn = 0", {"lambda_rn": 0.0}, "copy"),
    ("L_rec only", {"lambda_fl": 0.0, "lambda_rn": 0.0}, "copy"),
)
T_GRID = tuple(round(0.1 * i, 1) for i in range(11))
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass
class LabConfig:
    """Everything the lab's numbers depend on (saved in results.json)."""

    dims: tuple[int, ...] = (2, 16)
    n_eval: int = 2000
    width: int = 128
    depth: int = 3
    batch: int = 256
    pretrain_steps: int = 700
    pretrain_lr: float = 2e-3
    stage1_steps: int = 150
    stage1_lr: float = 5e-4
    stage1_seeds: int = 3
    record_at: tuple[int, ...] = (1, 2, 3, 5, 8, 12, 20, 30, 45, 60, 90, 120, 150)
    stage2_steps: int = 300
    stage2_lr: float = 1e-3
    stage2_long_steps: int = 1200   # a budget check: the d = 2 fidelity path trained 4× longer
    tau_max: float = 999.0
    big_k: int = 8
    seed: int = 0

    @classmethod
    def quick(cls) -> LabConfig:
        """A smoke-sized run (seconds): same code paths, meaningless numbers."""
        return cls(dims=(2,), n_eval=200, batch=64, pretrain_steps=10, stage1_steps=4, stage1_seeds=2,
                   record_at=(1, 2, 4), stage2_steps=4, stage2_long_steps=8)


# -- measurements ----------------------------------------------------------------------------------------------------
def weights_of(**over) -> Stage1Weights:
    kw = {**DEFAULTS, **over}
    return Stage1Weights(lambda_l2=1.0, lambda_lp=0.0, **kw)   # no LPIPS in the toy


def frontier_gap(point: dict, mix_fine: list[dict]) -> dict[str, float]:
    """Realness of ``point`` minus the mix's realness at the same MSE (linear interpolation along α).
    ΔED < 0 and Δlog p > 0 mean beyond the mix's frontier."""
    rows = sorted(mix_fine, key=lambda r: r["mse"])
    xs = [r["mse"] for r in rows]
    m = min(max(point["mse"], xs[0]), xs[-1])
    i = max(j for j in range(len(xs)) if xs[j] <= m) if m > xs[0] else 0
    j = min(i + 1, len(xs) - 1)
    w = 0.0 if xs[j] == xs[i] else (m - xs[i]) / (xs[j] - xs[i])
    at = {k: rows[i][k] * (1 - w) + rows[j][k] * w for k in ("ed", "logp", "alpha")}
    return {"d_ed": point["ed"] - at["ed"], "d_logp": point["logp"] - at["logp"], "alpha_same_mse": at["alpha"]}


def verdict(gaps: list[float], floor: float) -> str:
    """beyond / on / behind the frontier from ΔED over seeds: beyond if the mean is below −2·spread."""
    mean = sum(gaps) / len(gaps)
    sd = (sum((g - mean) ** 2 for g in gaps) / max(len(gaps) - 1, 1)) ** 0.5
    tol = 2 * max(sd, floor)
    return "beyond" if mean < -tol else "behind" if mean > tol else "on"


def stage2_curves(model, world: MixtureWorld, ev: EvalSet, path: str, tau_max: float, big_k: int) -> dict:
    """Metrics over t for the project's rule (K = 1), K = ``big_k`` and the path itself z0 + P(t). For the
    ``fidelity`` path also a diagnostic rule that is not the project's, z0 + t·ε_S(z0, τ(0)) (the velocity where
    eq. 8 trains it best), and the velocity error by t on the path (z_t) and at z0 (where K = 1 evaluates it)."""
    out: dict[str, list[dict]] = {"K=1": [], f"K={big_k}": [], "path": []}
    if path == "fidelity":
        out["τ(0) rule"] = []
    x_lr = ev.batch.x_lr
    velocity_error = []
    with torch.no_grad():
        z0 = model.z0(x_lr, ev.noise)
        z_f = fidelity_teacher(world, model.generator).condition(x_lr)
        if path == "fidelity":
            v = z_f - z0                                              # the straight path's velocity
            v0 = model.velocity(z0, torch.zeros(len(z0)))
            for t in T_GRID:
                tau = torch.full((len(z0),), t * tau_max)
                err = lambda e: float(((e - v) ** 2).mean() / (v**2).mean())
                velocity_error.append({"t": t, "on_path": err(model.velocity(z0 + t * v, tau)),
                                       "at_z0": err(model.velocity(z0, tau))})
                z = z0 + t * v0
                out["τ(0) rule"].append({"t": t, **ev.metrics(z), "d_f": mse(z.reshape(len(z), -1), ev.x_f)})
        for t in T_GRID:
            for key, k in (("K=1", 1), (f"K={big_k}", big_k)):
                model.control_steps = k
                z = model.controlled_latent(z0, t)
                out[key].append({"t": t, **ev.metrics(z), "d_f": mse(z.reshape(len(z), -1), ev.x_f)})
            tv = torch.full((z0.shape[0],), float(t))
            z = z0 + path_offset(path, z0, tv, teacher_eps=model.teacher_eps, z_f=z_f, tau_max=tau_max,
                                 schedule=model.generator.schedule)
            out["path"].append({"t": t, **ev.metrics(z), "d_f": mse(z.reshape(len(z), -1), ev.x_f)})
        model.control_steps = 1
    return {"curves": out, "velocity_error": velocity_error}


def monotone(rows: list[dict], key: str, tol: float, decreasing: bool) -> int:
    """Number of consecutive t steps that go the wrong way by more than ``tol``."""
    vals = [r[key] for r in rows]
    steps = [b - a for a, b in itertools.pairwise(vals)]
    return sum(1 for s in steps if (s > tol if decreasing else s < -tol))


def run_dim(d: int, cfg: LabConfig, log=print) -> dict:
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    world = MixtureWorld.make(d, seed=cfg.seed)
    ev = EvalSet.make(world, cfg.n_eval, seed=cfg.seed + 1234)
    res: dict = {"dim": d, "modes": world.means.shape[0], "m": world.A.shape[0],
                 "std": world.std, "noise_std": world.noise_std}

    # the two ends and the data
    post_var = float(world.posterior_variance(ev.batch.y).mean()) / d
    res["ends"] = {"x_f": ev.metrics(ev.x_f), "x_r": ev.metrics(ev.x_r), "data": ev.data_metrics(),
                   "posterior_var": post_var}
    res["mix"] = [{"alpha": a, **ev.metrics(a * ev.x_f + (1 - a) * ev.x_r)} for a in ALPHAS]
    fine = [a / 50 for a in range(51)]    # α on a finer grid, to interpolate the frontier at a student's MSE
    mix_fine = [{"alpha": a, **ev.metrics(a * ev.x_f + (1 - a) * ev.x_r)} for a in fine]

    # pre-training
    t0 = time.perf_counter()
    init = ToyGenerator(world, cfg.width, cfg.depth, seed=cfg.seed)
    losses = pretrain(init, world, cfg.pretrain_steps, cfg.batch, cfg.pretrain_lr, seed=cfg.seed)
    init_out = ev.outputs(init)
    res["init"] = {**ev.metrics(init_out), **losses, "eps_rel_err": eps_error(init.unet, world),
                   "mse_to_x_r": mse(init_out, ev.x_r)}
    res["init"].update(frontier_gap(res["init"], mix_fine))
    # the paper's Table 1 mixes the teacher with OSEDiff, i.e. with the student's own initialisation
    res["mix_init"] = [{"alpha": a, **ev.metrics(a * ev.x_f + (1 - a) * init_out)} for a in ALPHAS]
    mix_init_fine = [{"alpha": a, **ev.metrics(a * ev.x_f + (1 - a) * init_out)} for a in fine]
    timing["pretrain"] = time.perf_counter() - t0
    log(f"[d={d}] pre-trained in {timing['pretrain']:.0f}s: {res['init']}")

    # stage 1: default (seeds, trajectory), grid, ablations
    t0 = time.perf_counter()

    def run1(over: dict, realness: str = "copy", seed: int = 0, record: bool = False):
        student, hist = stage1(init, world, weights_of(**over), cfg.stage1_steps, cfg.batch, cfg.stage1_lr,
                               realness, seed=cfg.seed + seed, record_at=cfg.record_at if record else (),
                               evalset=ev if record else None)
        row = ev.metrics(ev.outputs(student))
        row.update(frontier_gap(row, mix_fine))
        row.update({f"{k}_init": v for k, v in frontier_gap(row, mix_init_fine).items()})
        for h in hist:
            h.update(frontier_gap(h, mix_fine))
        return student, row, hist

    seeds, trajectory, stage1_student = [], [], None
    for s in range(cfg.stage1_seeds):
        student, row, hist = run1({}, seed=s, record=(s == 0))
        seeds.append({"seed": s, **row})
        if s == 0:
            stage1_student, trajectory = student, hist
    floor = 0.003
    res["stage1"] = {"seeds": seeds, "trajectory": trajectory, "ed_floor": floor,
                     "verdict": verdict([r["d_ed"] for r in seeds], floor),
                     "verdict_init": verdict([r["d_ed_init"] for r in seeds], floor)}
    grid = []
    for factor, values in GRID.items():
        for v in values:
            if v == DEFAULTS[factor]:
                grid.append({"factor": factor, "value": v, **seeds[0]})
                continue
            _, row, _ = run1({factor: v})
            grid.append({"factor": factor, "value": v, **row})
    ablations = []
    for name, over, realness in ABLATIONS:
        _, row, _ = run1(over, realness)
        ablations.append({"name": name, **row})
    res["grid"], res["ablations"] = grid, ablations
    timing["stage1"] = time.perf_counter() - t0
    log(f"[d={d}] stage 1: {1 + len(grid) - 3 + len(ablations) + cfg.stage1_seeds - 1} runs in "
        f"{timing['stage1']:.0f}s; default seeds ΔED {[round(r['d_ed'], 4) for r in seeds]}")

    # stage 2 from the stage-1 student and from the pre-trained one
    t0 = time.perf_counter()
    res["stage2"] = {}
    figures_out = {}
    # every path from the pre-trained student (the full range); at d = 2 the fidelity path from stage 1 too
    sources = (("pretrained", init, PATHS), ("stage1", stage1_student, ("fidelity",)))[: 2 if d == 2 else 1]
    for src_name, t_s, paths in sources:
        res["stage2"][src_name] = {}
        for path in paths:
            model, loss = stage2(t_s, world, path, "z0", cfg.tau_max, cfg.stage2_steps, cfg.batch, cfg.stage2_lr,
                                 seed=cfg.seed)
            measured = stage2_curves(model, world, ev, path, cfg.tau_max, cfg.big_k)
            curves = measured["curves"]
            tol_mse = 0.01 * res["ends"]["x_f"]["mse"]
            summary = {}
            for key, rows in curves.items():
                summary[key] = {
                    "mse_up_steps": monotone(rows, "mse", tol_mse, decreasing=True),
                    "ed_down_steps": monotone(rows, "ed", 0.005, decreasing=False),
                    "d_f_ratio": rows[-1]["d_f"] / max(rows[0]["d_f"], 1e-12),
                }
            res["stage2"][src_name][path] = {"loss": loss, "curves": curves, "summary": summary,
                                             "velocity_error": measured["velocity_error"]}
            if src_name == "pretrained" and path == "fidelity" and d == 2:
                with torch.no_grad():
                    z0 = model.z0(ev.batch.x_lr, ev.noise)
                    figures_out["stage2_fidelity_t1_K1"] = model.controlled_latent(z0, 1.0).reshape(len(z0), -1)
    if d == 2 and cfg.stage2_long_steps:
        model, loss = stage2(init, world, "fidelity", "z0", cfg.tau_max, cfg.stage2_long_steps, cfg.batch,
                             cfg.stage2_lr, seed=cfg.seed)
        measured = stage2_curves(model, world, ev, "fidelity", cfg.tau_max, cfg.big_k)
        res["stage2_long"] = {"steps": cfg.stage2_long_steps, "loss": loss, **measured,
                              "d_f_ratio": {k: rows[-1]["d_f"] / rows[0]["d_f"]
                                            for k, rows in measured["curves"].items()}}
    timing["stage2"] = time.perf_counter() - t0
    log(f"[d={d}] stage 2: {sum(len(s[2]) for s in sources) + (d == 2)} runs in {timing['stage2']:.0f}s")
    timing["total"] = time.perf_counter() - t_start
    res["timing"] = timing
    if d == 2:
        res["_points"] = {"data": ev.reference, "x_f": ev.x_f, "x_r": ev.x_r, "init": init_out,
                          "stage1": ev.outputs(stage1_student), "means": world.means.float(), **figures_out}
    return res


# -- entry point -------------------------------------------------------------------------------------------------------
def run_lab(out: str | Path, cfg: LabConfig | None = None, log=print) -> dict:
    """Run every experiment, write ``report.md``, ``results.json`` and the PNGs into ``out``; return the results."""
    cfg = cfg or LabConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    results = [run_dim(d, cfg, log) for d in cfg.dims]
    figures = ["table1.png", "grid.png"]
    fig_table1(results, out / "table1.png")
    fig_grid(results, out / "grid.png")
    for r in results:
        for src in r["stage2"]:
            name = f"stage2_d{r['dim']}_{src}.png"
            fig_stage2(r, src, out / name, cfg.big_k)
            figures.append(name)
        if "_points" in r:
            fig_world(r, out / "world_d2.png")
            figures.insert(0, "world_d2.png")
    timing = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}
    write_report(results, cfg, out, timing, figures)
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    (out / "results.json").write_text(json.dumps({"config": asdict(cfg), "timing_s": timing, "results": clean},
                                                 indent=1))
    log(f"wrote {out}/report.md, results.json and {len(figures)} figures in {timing['wall']:.0f}s "
        f"({timing['cpu']:.0f}s CPU)")
    return {"results": results, "timing_s": timing, "figures": figures}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctsr.toy.lab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/toy", help="output folder (report.md, results.json, PNGs)")
    parser.add_argument("--dims", type=int, nargs="+", default=None, help="dimensions to run (default: 2 16)")
    parser.add_argument("--quick", action="store_true", help="smoke-sized run: seconds, meaningless numbers")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these sizes)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = LabConfig.quick() if args.quick else LabConfig()
    if args.dims:
        cfg.dims = tuple(args.dims)
    run_lab(args.out, cfg)


if __name__ == "__main__":
    main()
