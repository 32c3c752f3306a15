"""The lab's PNG figures (matplotlib, Agg). Each takes the result dicts of ``ctsr.toy.lab.run_dim``."""
from __future__ import annotations

from pathlib import Path

PATH_NAMES = ("fidelity", "noise", "denoise")
FACTOR_NAMES = {"lambda_rn": "λ_rn", "lambda_fl": "λ_fl", "gamma_time": "γ_time"}
FACTOR_COLORS = {"lambda_rn": "C0", "lambda_fl": "C1", "gamma_time": "C2"}
DEFAULTS = {"lambda_rn": 1.0, "lambda_fl": 2.0, "gamma_time": 5.5}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _sd(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return (sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1)) ** 0.5


def fig_world(res: dict, path: Path) -> None:
    """d = 2: the data, both teachers' outputs, and the student at three moments."""
    plt = _plt()
    p = res["_points"]
    panels = [("data p(z)", "data"), ("fidelity teacher E[z|y]", "x_f"), ("realness model: posterior samples", "x_r"),
              ("student, pre-trained", "init"), ("student after stage 1 (defaults)", "stage1"),
              ("stage 2, fidelity path, t = 1, default (endpoint objective)\n(T_S = the pre-trained student)",
               "stage2_fidelity_t1")]
    fig, axes = plt.subplots(2, 3, figsize=(13, 8.6), sharex=True, sharey=True)
    for ax, (title, key) in zip(axes.flat, panels):
        ax.scatter(p["data"][:, 0], p["data"][:, 1], s=3, c="0.82", label="data")
        if key != "data":
            pts = p[key]
            ax.scatter(pts[:, 0], pts[:, 1], s=3, c="C0", alpha=0.6, label="outputs (one per observation)")
        ax.scatter(p["means"][:, 0], p["means"][:, 1], marker="x", c="k", s=30, label="mode centres")
        for y0 in (-0.3, 0.0, 0.3):   # level sets {z : A z = y} through the three ambiguous pairs
            ax.plot([-1.3, 1.3], [2 * y0 + 1.3, 2 * y0 - 1.3], c="C3", lw=0.6, ls="--")
        ax.set_title(title, fontsize=10)
        ax.set_xlim(-1.3, 1.3)
        ax.set_ylim(-1.3, 1.3)
        ax.set_aspect("equal")
    for ax in axes[1]:
        ax.set_xlabel("z₁")
    for ax in axes[:, 0]:
        ax.set_ylabel("z₂")
    axes[0, 1].plot([], [], c="C3", lw=0.6, ls="--", label="{z : (z₁+z₂)/2 = y}")
    axes[0, 1].legend(loc="lower right", fontsize=7, markerscale=1.5)
    fig.suptitle("Toy world, d = 2: y = (z₁+z₂)/2 + noise; each dashed line holds two modes that y cannot tell apart")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _mix(ax, res: dict, key: str, labels: bool = True, short: bool = False) -> None:
    ax.plot([r["mse"] for r in res["mix"]], [r[key] for r in res["mix"]], "-o", c="0.35", ms=4,
            label="mix, x_r = posterior sample" if short else "mix α·E[z|y] + (1−α)·exact posterior sample")
    ax.plot([r["mse"] for r in res["mix_init"]], [r[key] for r in res["mix_init"]], "--", c="0.55", lw=1,
            label="mix, x_r = pre-trained student" if short
            else "mix α·E[z|y] + (1−α)·pre-trained student (paper's protocol)")
    if labels:
        for r in res["mix"]:
            if r["alpha"] in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
                ax.annotate(f"α={r['alpha']:.1f}", (r["mse"], r[key]), fontsize=7, xytext=(4, 2),
                            textcoords="offset points", color="0.3")


def fig_table1(results: list[dict], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(len(results), 2, figsize=(12.5, 4.8 * len(results)), squeeze=False)
    for row, res in zip(axes, results):
        for ax, key, name in ((row[0], "ed", "energy distance to the data (lower = more real)"),
                              (row[1], "logp", "mean log p(output) under the mixture (higher = more real)")):
            _mix(ax, res, key)
            tr = res["stage1"]["trajectory"]
            ax.plot([h["mse"] for h in tr], [h[key] for h in tr], "-", marker=".", c="C1", lw=0.8, alpha=0.7,
                    label=f"stage-1 training trajectory (seed 0, steps {', '.join(str(h['step']) for h in tr[:6])}, …)")
            for h in tr[1:5]:
                ax.annotate(str(h["step"]), (h["mse"], h[key]), fontsize=6, color="C1", xytext=(2, -7),
                            textcoords="offset points")
            ax.scatter([r["mse"] for r in res["stage1"]["seeds"]], [r[key] for r in res["stage1"]["seeds"]],
                       c="C1", s=50, zorder=5, edgecolor="k", label="stage-1 student, defaults (one per seed)")
            ax.scatter([res["init"]["mse"]], [res["init"][key]], marker="*", s=160, c="C2", edgecolor="k",
                       zorder=5, label="student pre-trained (= stage-1 step 0)")
            ax.set_xlabel("MSE to ground truth (per coordinate; lower = more faithful)")
            ax.set_ylabel(name)
            ax.set_title(f"d = {res['dim']}: Table 1 — linear mix vs the stage-1 student", fontsize=10)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7.5, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fig_grid(results: list[dict], path: Path) -> None:
    """Per d: the plane with the ablations; then ED and MSE against each factor's value (relative to its default),
    with the default's seed spread as a band — one point per setting."""
    plt = _plt()
    fig, axes = plt.subplots(len(results), 3, figsize=(17, 5 * len(results)), squeeze=False)
    for row, res in zip(axes, results):
        seeds = res["stage1"]["seeds"]
        d0 = seeds[0]
        ax = row[0]
        _mix(ax, res, "ed", labels=False, short=True)
        for factor, c in FACTOR_COLORS.items():
            rows = [r for r in res["grid"] if r["factor"] == factor]
            ax.scatter([r["mse"] for r in rows], [r["ed"] for r in rows], c=c, s=14, zorder=4,
                       label="grid points (λ_rn blue, λ_fl orange, γ_time green; see right)" if factor == "lambda_rn"
                       else None)
        for i, r in enumerate(res["ablations"]):
            ax.scatter([r["mse"]], [r["ed"]], marker="s", s=45, c=f"C{i + 3}", edgecolor="k", zorder=5,
                       label=r["name"])
        ax.scatter([d0["mse"]], [d0["ed"]], marker="*", s=220, c="gold", edgecolor="k", zorder=6,
                   label="defaults (λ_rn 1, λ_fl 2, γ_time 5.5)")
        pts = res["grid"] + res["ablations"]
        lo, hi = min(r["mse"] for r in pts), max(r["mse"] for r in pts)
        pad = 0.15 * (hi - lo) + 1e-3
        ys = [r["ed"] for r in pts]
        ax.set_xlim(lo - pad, hi + pad)
        span = max(ys) - min(ys) + 0.01
        ax.set_ylim(min(ys) - 0.15 * span, max(ys) + 0.7 * span)   # head room for the legend
        ax.set_xlabel("MSE to ground truth (lower = more faithful)")
        ax.set_ylabel("energy distance to the data (lower = more real)")
        ax.set_title(f"d = {res['dim']}: the plane (grey: the mix's frontier)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right", framealpha=0.8)
        for ax, key, name in ((row[1], "ed", "energy distance to the data (lower = more real)"),
                              (row[2], "mse", "MSE to ground truth (lower = more faithful)")):
            sd = _sd([s[key] for s in seeds])
            ax.axhspan(d0[key] - sd, d0[key] + sd, color="gold", alpha=0.25,
                       label=f"defaults, seed 0 ± the sd over {len(seeds)} seeds (seed noise)")
            for factor, c in FACTOR_COLORS.items():
                rows = [r for r in res["grid"] if r["factor"] == factor]
                ax.plot([r["value"] / DEFAULTS[factor] for r in rows], [r[key] for r in rows], "-o", c=c, ms=5,
                        label=f"{FACTOR_NAMES[factor]} ∈ {{{', '.join(str(r['value']) for r in rows)}}}")
            ax.set_xlabel("setting / its default (one factor at a time, the others at their defaults)")
            ax.set_ylabel(name)
            ax.set_title(f"d = {res['dim']}: Table 6 grid — {key.upper()} per setting (seed 0)", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fig_stage2(res: dict, src: str, path: Path, big_k: int) -> None:
    """One row per control path: MSE, d_f (the distance to the fidelity end) and the path error over t for every
    variant (objective × τ rule × K), the path itself dotted; the last column the (MSE, ED) plane."""
    plt = _plt()
    st = res["stage2"][src]
    variants, paths_ = st["variants"], st["paths"]
    names = [p for p in PATH_NAMES if any(k.startswith(p + "/") for k in variants)]
    fig, axes = plt.subplots(len(names), 4, figsize=(18, 3.9 * len(names) + 0.6), squeeze=False)
    ends = res["ends"]
    for r, p in enumerate(names):
        mine = [k for k in variants if k.startswith(p + "/")]
        for c, (key, ylabel) in enumerate((("mse", "MSE to ground truth"), ("d_f", "d_f: MSE to E[z|y] (fidelity end)"),
                                           ("path_error", "‖z(t) − path(t)‖²/d (own path)"))):
            ax = axes[r, c]
            for i, name in enumerate(mine):
                rows = variants[name]["curve"]
                default = name == "fidelity/endpoint"
                ax.plot([q["t"] for q in rows], [q[key] for q in rows], marker="o", ms=3 + 2 * default,
                        lw=2.5 if default else 1, c=f"C{i % 10}", label=name.split("/", 1)[1] + (" (default)" if default else ""))
            if key != "path_error":
                for pk, pv in paths_.items():
                    if pk.split("/")[0] == p:
                        rows = pv["curve"]
                        ax.plot([q["t"] for q in rows], [q[key] for q in rows], ":", c="k", lw=1,
                                label=f"path itself ({pk})" if c == 0 else None)
            if key == "mse":
                ax.axhline(ends["x_f"]["mse"], c="C3", lw=0.6)
            ax.set_xlabel("control t (0 = realness end, 1 = fidelity end)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"path '{p}': {ylabel}", fontsize=9)
            ax.grid(alpha=0.3)
        axes[r, 0].legend(fontsize=6.5)
        ax = axes[r, 3]
        _mix(ax, res, "ed", labels=False, short=True)
        for i, name in enumerate(mine):
            rows = variants[name]["curve"]
            ax.plot([q["mse"] for q in rows], [q["ed"] for q in rows], marker="o", ms=3, c=f"C{i % 10}", lw=1)
            ax.annotate("t=1", (rows[-1]["mse"], rows[-1]["ed"]), fontsize=6, color=f"C{i % 10}")
        ax.set_xlabel("MSE to ground truth")
        ax.set_ylabel("energy distance to the data")
        ax.set_title(f"path '{p}': the plane, t = 0 … 1", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper right")
    origin = "the stage-1 student (defaults)" if src == "stage1" else "the pre-trained student (stage 1 skipped)"
    fig.suptitle(f"d = {res['dim']}: stage 2, T_S = {origin} — every objective and inference rule")
    fig.tight_layout()
    fig.savefig(path, dpi=85)
    plt.close(fig)


def fig_chord(results: list[dict], path: Path) -> None:
    """Per d: each control family over t on the (MSE, ED) plane against the chord of its own ends and the exact mix."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 5), squeeze=False)
    colors = {"loss-conditional": "C0", "lora-knob": "C1", "fidelity/endpoint": "C2"}
    for ax, res in zip(axes[0], results):
        ax.plot([r["mse"] for r in res["mix"]], [r["ed"] for r in res["mix"]], "-", c="0.6", lw=1,
                label="exact mix α·E[z|y] + (1−α)·posterior sample")
        for name, ch in res["chord"].items():
            rows = ch["curve"]
            c = colors.get(name, "C3")
            ax.plot([r["mse"] for r in rows], [r["ed"] for r in rows], "-o", ms=3.5, c=c,
                    label=f"{name} over t ({ch['verdict']}; best ΔED {ch['best_d_ed']:+.4f})")
        ax.set_xlabel("MSE to ground truth (lower = more faithful)")
        ax.set_ylabel("energy distance to the data (lower = more real)")
        ax.set_title(f"d = {res['dim']}: control families over t = 0 … 1 (one pass per t)\n"
                     "green, the stage-2 default z0 + t·v, is its own chord (the latent blend of its ends)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
