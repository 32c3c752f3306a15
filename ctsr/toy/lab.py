"""The mechanism lab: the paper's claims measured in the toy world, on the CPU, in a few minutes.

    python -m ctsr.toy.lab --out results/toy   # d = 2 and d = 16; report.md, summary.json, results.json, PNGs

What it runs, per dimension d (fixed seeds, one CPU thread, fresh full batches):
  1. pre-training: the student imitates the realness model (ε_S → exact mixture ε; G → posterior samples);
  2. Table 1: the linear mix α·x_f + (1−α)·x_r (x_f = E[z|y], x_r = exact posterior sample) against the stage-1
     student (3 seeds and the training trajectory) on the fidelity (MSE) – realness (energy distance, log p) plane;
  3. Table 6: λ_rn, λ_fl, γ_time one at a time around (1, 2, 5.5), γ_time = 0, and four ablations
     (T_r = exact ε, λ_fl = 0, λ_rn = 0, L_rec only);
  4. stage 2 from the pre-trained student (the full range): the project's ``stage2_terms`` with the
     ``endpoint`` objective (fidelity path at τ_c; denoise path for each τ_max of a sweep) and ``eq8`` (fidelity,
     denoise, noise; the uniform t-sampler too), each evaluated over t = 0, 0.1, …, 1 by ``ControllableSR`` as it
     was trained (eq8 with both τ rules, K = 1 and K = 8); at d = 2 the fidelity path also from the stage-1
     student; a budget check at 4× the steps; ``summary.json`` names the default and its numbers;
  5. beyond the chord: a loss-conditional stage-1 generator and the LoRA-scale knob against the chord of their own
     ends at matched MSE.

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

from ctsr.diffusion.control_rule import ControlRule
from ctsr.losses.stage1 import Stage1Weights
from ctsr.losses.stage2 import path_offset
from ctsr.toy.figures import fig_chord, fig_grid, fig_stage2, fig_table1, fig_world
from ctsr.toy.models import ToyGenerator, set_control, set_delta_scale
from ctsr.toy.report import write_report
from ctsr.toy.train import (EvalSet, eps_error, fidelity_teacher, pretrain, stage1, stage1_conditional, stage2,
                            train_delta_knob)
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
DEFAULT_VARIANT = "fidelity/endpoint"   # the suite's default (ControllabilityDistillation's objective and path)
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
    stage2_long_steps: int = 1200   # a budget check at d = 2: the fidelity path's endpoint and eq8, 4× the steps
    tau_max: float = 999.0
    tau_c: float = 0.0              # the endpoint objective's timestep on the fidelity path
    denoise_tau_sweep: tuple[float, ...] = (50.0, 100.0, 200.0, 999.0)
    big_k: int = 8
    cond_steps: int = 150           # loss-conditional stage 1 (the stage-1 budget)
    cond_groups: int = 8            # t drawn per group of batch/groups samples
    knob_rank: int = 4              # rank of the LoRA-scale knob's delta (trained for stage2_steps)
    seed: int = 0

    @classmethod
    def quick(cls) -> LabConfig:
        """A smoke-sized run (seconds): same code paths, meaningless numbers."""
        return cls(dims=(2,), n_eval=200, batch=64, pretrain_steps=10, stage1_steps=4, stage1_seeds=2,
                   record_at=(1, 2, 4), stage2_steps=4, stage2_long_steps=8, cond_steps=2, cond_groups=2,
                   denoise_tau_sweep=(100.0, 999.0))


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


def stage2_trainings(cfg: LabConfig) -> list[dict]:
    """The stage-2 trainings of one world and the inference rules each is evaluated with: the endpoint
    objective on the fidelity path (τ_c), eq8 on it with both τ rules (K = 1 and K), eq8 with the uniform
    t-sampler, the endpoint objective on the denoise path for each τ_max of the sweep, eq8 on denoise and noise."""
    k = cfg.big_k
    eq8_rules = (("next-K1", "next", 1), ("euler-K1", "euler", 1), (f"next-K{k}", "next", k),
                 (f"euler-K{k}", "euler", k))
    def rule(path: str, objective: str, tau_max: float = cfg.tau_max) -> ControlRule:
        return ControlRule(path=path, objective=objective, tau_max=float(tau_max), tau_c=cfg.tau_c)

    runs = [dict(key="fidelity/endpoint", rule=rule("fidelity", "endpoint"), rules=(("", "euler", 1),)),
            dict(key="fidelity/eq8", rule=rule("fidelity", "eq8"), rules=eq8_rules),
            dict(key="fidelity/eq8-uniform", rule=rule("fidelity", "eq8"), t_sampler="uniform",
                 rules=eq8_rules[1::2])]
    runs += [dict(key=f"denoise/endpoint-tau{tm:g}", rule=rule("denoise", "endpoint", tm), rules=(("", "euler", 1),))
             for tm in cfg.denoise_tau_sweep]
    runs += [dict(key=f"{p}/eq8", rule=rule(p, "eq8"), rules=eq8_rules) for p in ("denoise", "noise")]
    return runs


@torch.no_grad()
def control_curve(model, world: MixtureWorld, ev: EvalSet, tau_rule: str, steps: int) -> list[dict]:
    """Metrics over t of ``model.controlled_latent`` (the project's inference for the model's objective) with the
    given τ rule and K; per t also d_f (MSE to E[z|y]) and the path error ‖z(t) − (z0 + P(t))‖²/d for the path
    the model was trained on."""
    trained = model.rule
    model.rule = trained.replace(tau_rule=tau_rule, control_steps=steps)
    z0 = model.z0(ev.batch.x_lr, ev.noise)
    z_f = fidelity_teacher(world, model.generator).condition(ev.batch.x_lr)
    v = model.control_velocity(z0) if model.constant_velocity else None   # one velocity for every t
    rows = []
    for t in T_GRID:
        z = model.controlled_latent(z0, t, v)
        tv = torch.full((z0.shape[0],), float(t))
        target = z0 + path_offset(model.path, z0, tv, teacher_eps=model.teacher_eps, z_f=z_f, tau_max=model.tau_max,
                                  schedule=model.generator.schedule)
        pts = z.reshape(len(z), -1)
        rows.append({"t": t, **ev.metrics(z), "d_f": mse(pts, ev.x_f),
                     "path_error": mse(pts, target.reshape(len(z), -1))})
    model.rule = trained
    return rows


@torch.no_grad()
def path_curve(model, world: MixtureWorld, ev: EvalSet) -> list[dict]:
    """The path z0 + P(t) itself (what a perfect student reproduces) for the model's path and τ_max."""
    z0 = model.z0(ev.batch.x_lr, ev.noise)
    z_f = fidelity_teacher(world, model.generator).condition(ev.batch.x_lr)
    rows = []
    for t in T_GRID:
        tv = torch.full((z0.shape[0],), float(t))
        z = z0 + path_offset(model.path, z0, tv, teacher_eps=model.teacher_eps, z_f=z_f, tau_max=model.tau_max,
                             schedule=model.generator.schedule)
        rows.append({"t": t, **ev.metrics(z), "d_f": mse(z.reshape(len(z), -1), ev.x_f), "path_error": 0.0})
    return rows


@torch.no_grad()
def velocity_error(model, world: MixtureWorld, ev: EvalSet) -> list[dict]:
    """Fidelity path: ‖ε_S − (z_f − z0)‖² / ‖z_f − z0‖² by t, on the path (z_t, τ(t)) where eq. 8 trains and at
    (z0, τ(t)) where the old K = 1 rule evaluated."""
    z0 = model.z0(ev.batch.x_lr, ev.noise)
    v = fidelity_teacher(world, model.generator).condition(ev.batch.x_lr) - z0
    err = lambda e: float(((e - v) ** 2).mean() / (v**2).mean())
    out = []
    for t in T_GRID:
        tau = torch.full((len(z0),), t * model.tau_max)
        out.append({"t": t, "on_path": err(model.velocity(z0 + t * v, tau)), "at_z0": err(model.velocity(z0, tau))})
    return out


def summarize(rows: list[dict], tol_mse: float) -> dict:
    """The summary.json entry of one curve."""
    return {"df_ratio": rows[-1]["d_f"] / max(rows[0]["d_f"], 1e-12),
            "mse_rising_steps": monotone(rows, "mse", tol_mse, decreasing=True),
            "max_path_error": max(r["path_error"] for r in rows),
            "ed_falling_steps": monotone(rows, "ed", 0.005, decreasing=False),
            "d_f": [rows[0]["d_f"], rows[-1]["d_f"]], "mse": [rows[0]["mse"], rows[-1]["mse"]]}


def run_stage2(t_s, world: MixtureWorld, ev: EvalSet, cfg: LabConfig, tol_mse: float, runs: list[dict],
               steps: int | None = None) -> dict:
    """Train every run of ``runs`` from ``t_s`` and evaluate each with its rules: {variant: {curve, summary}},
    plus the paths themselves under ``paths`` and the eq8 fidelity velocity error."""
    out: dict = {"variants": {}, "paths": {}, "loss": {}}
    for run in runs:
        model, loss = stage2(t_s, world, run["rule"], "z0", run.get("t_sampler", "order"),
                             steps or cfg.stage2_steps, cfg.batch, cfg.stage2_lr, seed=cfg.seed)
        out["loss"][run["key"]] = loss
        for label, tau_rule, k in run["rules"]:
            name = run["key"] + (f"-{label}" if label else "")
            rows = control_curve(model, world, ev, tau_rule, k)
            out["variants"][name] = {"curve": rows, **summarize(rows, tol_mse)}
        path, tau_max = run["rule"].path, run["rule"].tau_max
        path_key = f"{path}/tau{tau_max:g}" if path != "fidelity" else "fidelity"
        if path_key not in out["paths"]:
            rows = path_curve(model, world, ev)
            out["paths"][path_key] = {"curve": rows, **summarize(rows, tol_mse)}
        if run["key"] == "fidelity/eq8":
            out["velocity_error"] = velocity_error(model, world, ev)
        if run["key"] == "fidelity/endpoint":
            out["_endpoint_model"] = model
    return out


def pick_denoise_tau(variants: dict) -> str:
    """The denoise endpoint variant of the τ_max sweep to report as the best: fewest MSE-rising steps, then the
    lowest d_f(1)/d_f(0), then the lowest path error."""
    cands = [k for k in variants if k.startswith("denoise/endpoint-tau")]
    return min(cands, key=lambda k: (variants[k]["mse_rising_steps"], variants[k]["df_ratio"],
                                     variants[k]["max_path_error"]))


# -- beyond the chord ------------------------------------------------------------------------------------------------
def chord_gaps(outs: dict[float, torch.Tensor], ev: EvalSet, mix_fine: list[dict], tol: float) -> dict:
    """A control family's points over t against the chord of its own ends α·out(1) + (1−α)·out(0) (and against
    the exact mix), at matched MSE: ΔED < 0 beyond. Verdict with the stage-1 seed tolerance ``tol``: beyond if the
    best interior point is below −tol, behind if the mean interior ΔED is above +tol, else on."""
    fine = [a / 50 for a in range(51)]      # holds every t of T_GRID: a family on its chord gives ΔED = 0 exactly
    chord = [{"alpha": a, **ev.metrics(a * outs[1.0] + (1 - a) * outs[0.0])} for a in fine]
    rows = []
    for t in T_GRID:
        m = ev.metrics(outs[t])
        m["d_f"] = mse(outs[t], ev.x_f)
        gap = matched_gap(m, chord)
        rows.append({"t": t, **m, "d_ed_chord": gap["d_ed"], "alpha_chord": gap["alpha"],
                     "d_ed_mix": frontier_gap(m, mix_fine)["d_ed"]})
    inner = [r for r in rows if 0 < r["t"] < 1]
    best = min(inner, key=lambda r: r["d_ed_chord"])
    mean = sum(r["d_ed_chord"] for r in inner) / len(inner)
    word = "beyond" if best["d_ed_chord"] < -tol else "behind" if mean > tol else "on"
    return {"curve": rows, "best_d_ed": best["d_ed_chord"], "best_t": best["t"], "mean_d_ed": mean, "tol": tol,
            "verdict": word, "best_d_ed_mix": min(r["d_ed_mix"] for r in inner)}


def matched_gap(point: dict, rows: list[dict]) -> dict[str, float]:
    """ED of ``point`` minus the best ED the α-ordered ``rows`` reach at the same MSE (linear interpolation on every
    α segment whose MSE brackets the point's; the MSE need not be monotone in α). Outside the rows' MSE range: the
    nearest row."""
    m, best = point["mse"], None
    for r0, r1 in itertools.pairwise(rows):
        lo, hi = sorted((r0["mse"], r1["mse"]))
        if lo <= m <= hi:
            w = 0.0 if hi == lo else (m - r0["mse"]) / (r1["mse"] - r0["mse"])
            ed, al = r0["ed"] * (1 - w) + r1["ed"] * w, r0["alpha"] * (1 - w) + r1["alpha"] * w
            if best is None or ed < best[0]:
                best = (ed, al)
    if best is None:
        r = min(rows, key=lambda q: abs(q["mse"] - m))
        best = (r["ed"], r["alpha"])
    return {"d_ed": point["ed"] - best[0], "alpha": best[1]}


@torch.no_grad()
def family_outputs(kind: str, model, ev: EvalSet) -> dict[float, torch.Tensor]:
    """(n, d) outputs at every t of T_GRID for a control family: ``cond`` (loss-conditional generator), ``knob``
    (W + t·ΔW), ``endpoint`` (a stage-2 ``ToyControllableSR``)."""
    outs = {}
    if kind == "endpoint":
        z0 = model.z0(ev.batch.x_lr, ev.noise)
        v = model.control_velocity(z0)
        return {t: model.controlled_latent(z0, t, v).reshape(len(z0), -1) for t in T_GRID}
    for t in T_GRID:
        (set_control if kind == "cond" else set_delta_scale)(model, t)
        outs[t] = ev.outputs(model)
    if kind == "cond":
        set_control(model, None)
    return outs


def _sd(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return (sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1)) ** 0.5


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

    # stage 2: every objective / rule from the pre-trained student (the full range); at d = 2 the
    # fidelity path from the stage-1 student too; a budget check of the default
    t0 = time.perf_counter()
    tol_mse = 0.01 * res["ends"]["x_f"]["mse"]          # the report's tolerance: 1 % of MSE(E[z|y])
    runs = stage2_trainings(cfg)
    st = run_stage2(init, world, ev, cfg, tol_mse, runs)
    endpoint_model = st.pop("_endpoint_model")
    st["denoise_best"] = pick_denoise_tau(st["variants"])
    res["stage2"] = {"pretrained": st, "tol_mse": tol_mse}
    if d == 2:
        s1 = run_stage2(stage1_student, world, ev, cfg, tol_mse, runs[:2])
        s1.pop("_endpoint_model")
        res["stage2"]["stage1"] = s1
    if cfg.stage2_long_steps and d == 2:
        lg = run_stage2(init, world, ev, cfg, tol_mse, runs[:2], steps=cfg.stage2_long_steps)
        lg.pop("_endpoint_model")
        res["stage2_long"] = {"steps": cfg.stage2_long_steps, **lg}
    timing["stage2"] = time.perf_counter() - t0
    log(f"[d={d}] stage 2: {len(runs) + (2 if d == 2 else 0) + (2 if cfg.stage2_long_steps and d == 2 else 0)} trainings in "
        f"{timing['stage2']:.0f}s; default {DEFAULT_VARIANT}: "
        f"{ {k: round(v, 4) if isinstance(v, float) else v for k, v in st['variants'][DEFAULT_VARIANT].items() if k in ('df_ratio', 'mse_rising_steps', 'max_path_error')} }")

    # beyond the chord: loss-conditional stage 1 and the LoRA-scale knob, each against the chord of its own ends
    t0 = time.perf_counter()
    s1_tol = 2 * max(_sd([r["d_ed"] for r in seeds]), floor)
    cond = stage1_conditional(init, world, cfg.cond_steps, cfg.batch, cfg.stage1_lr, cfg.cond_groups, seed=cfg.seed)
    knob = train_delta_knob(init, world, cfg.knob_rank, cfg.stage2_steps, cfg.batch, cfg.stage2_lr, seed=cfg.seed)
    families = {"loss-conditional": family_outputs("cond", cond, ev), "lora-knob": family_outputs("knob", knob, ev),
                "fidelity/endpoint": family_outputs("endpoint", endpoint_model, ev)}
    res["chord"] = {name: chord_gaps(outs, ev, mix_fine, s1_tol) for name, outs in families.items()}
    timing["chord"] = time.perf_counter() - t0
    log(f"[d={d}] beyond the chord in {timing['chord']:.0f}s: "
        + ", ".join(f"{k} {v['verdict']} (best ΔED {v['best_d_ed']:+.4f} at t={v['best_t']}, tol {v['tol']:.4f})"
                    for k, v in res["chord"].items()))
    timing["total"] = time.perf_counter() - t_start
    res["timing"] = timing
    if d == 2:
        res["_points"] = {"data": ev.reference, "x_f": ev.x_f, "x_r": ev.x_r, "init": init_out,
                          "stage1": ev.outputs(stage1_student), "means": world.means.float(),
                          "stage2_fidelity_t1": families["fidelity/endpoint"][1.0]}
    return res


# -- entry point -------------------------------------------------------------------------------------------------------
def build_summary(results: list[dict], cfg: LabConfig) -> dict:
    """summary.json: per world ``d<dim>`` and variant ``df_ratio`` (d_f(1)/d_f(0)),
    ``mse_rising_steps`` (steps of 0.1 whose MSE rises by more than 1 % of MSE(E[z|y])), ``max_path_error``
    (max over t of ‖z(t) − path(t)‖²/d); ``default`` the suite's default variant, ``target`` whether it meets the
    issue's target; the paths themselves and the beyond-the-chord verdicts beside."""
    keys = ("df_ratio", "mse_rising_steps", "max_path_error")
    out: dict = {"default": DEFAULT_VARIANT, "t_grid": list(T_GRID), "stage2_steps": cfg.stage2_steps,
                 "tau_c": cfg.tau_c, "target": {}}
    targets = {2: 0.1, 16: 0.25}
    for r in results:
        st = r["stage2"]["pretrained"]
        w = f"d{r['dim']}"
        out[w] = {name: {k: v[k] for k in keys} for name, v in st["variants"].items()}
        out[w]["_paths"] = {name: {k: v[k] for k in keys} for name, v in st["paths"].items()}
        out[w]["_denoise_best"] = st["denoise_best"]
        out[w]["_tol_mse"] = r["stage2"]["tol_mse"]
        if "stage2_long" in r:
            out[w]["_long"] = {"steps": r["stage2_long"]["steps"],
                               **{name: {k: v[k] for k in keys} for name, v in r["stage2_long"]["variants"].items()}}
        out[w]["_chord"] = {name: {k: c[k] for k in ("verdict", "best_d_ed", "best_t", "mean_d_ed", "tol",
                                                     "best_d_ed_mix")} for name, c in r["chord"].items()}
        dv = st["variants"][DEFAULT_VARIANT]
        limit = targets.get(r["dim"])
        out["target"][w] = {"df_ratio_max": limit, "df_ratio": dv["df_ratio"],
                            "mse_rising_steps": dv["mse_rising_steps"],
                            "met": None if limit is None else bool(dv["df_ratio"] <= limit
                                                                   and dv["mse_rising_steps"] == 0)}
    return out


def _run_dim_worker(d: int, cfg: LabConfig) -> tuple[dict, float]:
    """One world in a worker process (one thread): its results and its CPU seconds."""
    torch.set_num_threads(1)
    c0 = time.process_time()
    res = run_dim(d, cfg, log=lambda *a: print(*a, flush=True))
    return res, time.process_time() - c0


def run_lab(out: str | Path, cfg: LabConfig | None = None, log=print, jobs: int = 1) -> dict:
    """Run every experiment, write ``report.md``, ``results.json``, ``summary.json`` and the PNGs into ``out``;
    return the results. ``jobs`` > 1 runs the worlds in that many processes (one thread each; every world is
    seeded on its own, so the numbers are the same)."""
    cfg = cfg or LabConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    worker_cpu = 0.0
    if jobs > 1 and len(cfg.dims) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(jobs, len(cfg.dims)), mp_context=mp.get_context("spawn")) as pool:
            done = list(pool.map(_run_dim_worker, cfg.dims, [cfg] * len(cfg.dims)))
        results, worker_cpu = [r for r, _ in done], sum(c for _, c in done)
    else:
        results = [run_dim(d, cfg, log) for d in cfg.dims]
    figures = ["table1.png", "grid.png"]
    fig_table1(results, out / "table1.png")
    fig_grid(results, out / "grid.png")
    for r in results:
        for src in ("pretrained", "stage1"):
            if src not in r["stage2"]:
                continue
            name = f"stage2_d{r['dim']}_{src}.png"
            fig_stage2(r, src, out / name, cfg.big_k)
            figures.append(name)
        if "_points" in r:
            fig_world(r, out / "world_d2.png")
            figures.insert(0, "world_d2.png")
    fig_chord(results, out / "chord.png")
    figures.append("chord.png")
    timing = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0 + worker_cpu, "jobs": jobs}
    summary = build_summary(results, cfg)
    write_report(results, cfg, out, timing, figures, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    (out / "results.json").write_text(json.dumps({"config": asdict(cfg), "timing_s": timing, "results": clean},
                                                 indent=1))
    log(f"wrote {out}/report.md, summary.json, results.json and {len(figures)} figures in {timing['wall']:.0f}s "
        f"({timing['cpu']:.0f}s CPU)")
    return {"results": results, "timing_s": timing, "figures": figures, "summary": summary}


def rewrite_report(out: str | Path) -> None:
    """Re-render report.md, summary.json and the figures (but world_d2.png, which needs the points) from an
    earlier run's results.json, without training."""
    out = Path(out)
    data = json.loads((out / "results.json").read_text())
    cfg = LabConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["config"].items()})
    results, timing = data["results"], data["timing_s"]
    fig_table1(results, out / "table1.png")          # every figure but world_d2.png needs only results.json
    fig_grid(results, out / "grid.png")
    figures = [f for f in ("world_d2.png", "table1.png", "grid.png") if (out / f).is_file()]
    for r in results:
        for src in ("pretrained", "stage1"):
            if src in r["stage2"]:
                fig_stage2(r, src, out / f"stage2_d{r['dim']}_{src}.png", cfg.big_k)
                figures.append(f"stage2_d{r['dim']}_{src}.png")
    fig_chord(results, out / "chord.png")
    figures.append("chord.png")
    summary = build_summary(results, cfg)
    write_report(results, cfg, out, timing, figures, summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ctsr.toy.lab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/toy", help="output folder (report.md, results.json, PNGs)")
    parser.add_argument("--dims", type=int, nargs="+", default=None, help="dimensions to run (default: 2 16)")
    parser.add_argument("--quick", action="store_true", help="smoke-sized run: seconds, meaningless numbers")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these sizes)")
    parser.add_argument("--jobs", type=int, default=1, help="worlds run in parallel processes (one thread each)")
    parser.add_argument("--report-only", action="store_true",
                        help="re-render report.md, summary.json and the figures from OUT/results.json (no training)")
    args = parser.parse_args(argv)
    if args.report_only:
        rewrite_report(args.out)
        return
    torch.set_num_threads(args.threads)
    cfg = LabConfig.quick() if args.quick else LabConfig()
    if args.dims:
        cfg.dims = tuple(args.dims)
    run_lab(args.out, cfg, jobs=args.jobs)


if __name__ == "__main__":
    main()
