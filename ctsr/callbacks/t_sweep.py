"""Evaluation across a sweep of the control value t (DESIGN §8; the paper's Tables 2, 3, 7, 10–12).

For each validation/test batch the callback computes z0 once and decodes every t of the list from it, updates one
:class:`~ctsr.metrics.MetricSuite` per t, and at the end of the epoch
- logs ``val/<metric>/t=<t>`` (``test/…`` under ``ctsr test``), synchronised across DDP ranks,
- logs an image grid LR | SR(t)… | HR for the first ``num_images`` images and a fidelity–realness figure
  (PSNR against LPIPS, one point per t, plus any baseline rows) to TensorBoard,
- writes ``metrics.md`` and ``metrics.csv`` (one row per t, the paper's column order, ↑/↓ marks, the protocol line)
  to the run folder.
A stage-1 model (no control) is evaluated once, as the row ``t = 0``.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from ctsr.errors import check
from ctsr.metrics import DEFAULT_METRICS, MetricSuite, column_name

DEFAULT_T = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def sweep_images(pl_module: L.LightningModule, x_lr: Tensor, ts: Sequence[float]) -> dict[float, Tensor]:
    """{t: SR (B,3,4h,4w) in [0,1]}: z0 once, every t decoded from it; a model without control gives {0: SR}."""
    model = getattr(pl_module, "model", None)
    if model is not None and hasattr(model, "sweep") and getattr(model, "supports_control", True):
        return dict(zip(ts, model.sweep(x_lr, list(ts))))
    with torch.no_grad():
        return {0.0: pl_module(x_lr)}


def fidelity_realness_figure(rows: dict[float, dict[str, float]], baselines: dict[str, dict[str, float]],
                             x: str = "lpips", y: str = "psnr"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ts = sorted(rows)
    ax.plot([rows[t][x] for t in ts], [rows[t][y] for t in ts], "o-", color="tab:blue", label="CTSR, t sweep")
    for t in ts:
        ax.annotate(f"t={t:g}", (rows[t][x], rows[t][y]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for i, (name, row) in enumerate(baselines.items()):
        if x in row and y in row:
            ax.plot(row[x], row[y], "s", color=f"C{i + 1}", label=name)
    ax.set_xlabel(column_name(x) + (" (realness)" if x == "lpips" else ""))
    ax.set_ylabel(column_name(y) + " (fidelity)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_tables(folder: Path, rows: dict[float, dict[str, float]], protocol: str, title: str, stem: str = "metrics"):
    """``<stem>.md`` and ``<stem>.csv``: one row per t, columns in the paper's order with ↑/↓."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(next(iter(rows.values())).keys())
    with open(folder / f"{stem}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t"] + names)
        for t in sorted(rows):
            writer.writerow([f"{t:g}"] + [f"{rows[t][n]:.6g}" for n in names])
    lines = [f"# {title}", "", f"Protocol: {protocol}", "", "| t | " + " | ".join(column_name(n) for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for t in sorted(rows):
        lines.append(f"| {t:g} | " + " | ".join(_fmt(n, rows[t][n]) for n in names) + " |")
    (folder / f"{stem}.md").write_text("\n".join(lines) + "\n")


def _fmt(name: str, value: float) -> str:
    return f"{value:.2f}" if name in ("psnr", "fid", "musiq") else f"{value:.4f}"


class TSweepEvaluation(Callback):
    """Evaluate every t of ``t_values`` on the validation (during ``fit``/``validate``) and test sets.

    Args:
        t_values: the control values (each in [0, 1]).
        metrics: metric names (``--metrics`` selects a subset; the others need no weights).
        color_space / crop_border: the PSNR/SSIM protocol (OSEDiff: y, 0), printed with every table.
        metric_weights: ``pretrained`` (real metric networks) or ``random`` (tiny smoke runs only).
        num_images: how many images the TensorBoard grid shows.
        baselines: rows to draw in the fidelity–realness figure, e.g. {"OSEDiff": {"psnr": 23.94, "lpips": 0.3172}}.
        table_stem: the tables' file name in the run folder.
    """

    def __init__(
        self,
        t_values: list[float] = list(DEFAULT_T),
        metrics: list[str] = list(DEFAULT_METRICS),
        color_space: Literal["y", "rgb"] = "y",
        crop_border: int = 0,
        metric_weights: Literal["pretrained", "random"] = "pretrained",
        num_images: int = 4,
        baselines: dict[str, dict[str, float]] | None = None,
        table_stem: str = "metrics",
    ) -> None:
        super().__init__()
        check(len(t_values) > 0, "t_values", "give at least one t")
        bad = [t for t in t_values if not 0 <= t <= 1]
        check(not bad, "t_values", f"each t must lie in [0, 1], got {bad}")
        self.t_values = [float(t) for t in t_values]
        # build the first suite now: a missing metric weight fails here, before any image is processed
        self._prototype = MetricSuite(metrics, color_space, crop_border, metric_weights)
        self.num_images = num_images
        self.baselines = dict(baselines or {})
        self.table_stem = table_stem
        self.suites: dict[float, MetricSuite] = {}
        self._grid: list[Tensor] = []
        self.last_rows: dict[float, dict[str, float]] = {}

    # -- per epoch ------------------------------------------------------------------------------------------------
    def _start(self, pl_module: L.LightningModule) -> None:
        model = getattr(pl_module, "model", None)
        controllable = model is not None and getattr(model, "supports_control", True) and hasattr(model, "sweep")
        ts = self.t_values if controllable else [0.0]
        self._prototype.to(pl_module.device)
        self.suites = {t: self._prototype.clone().to(pl_module.device) for t in ts}
        self._grid = []

    def _batch(self, pl_module: L.LightningModule, batch: dict) -> None:
        x_lr, hr = batch["lr"], batch["hr"]
        outputs = sweep_images(pl_module, x_lr, list(self.suites))
        for t, sr in outputs.items():
            self.suites[t].update(sr.float(), hr.float())
        if len(self._grid) < self.num_images:
            up = F.interpolate(x_lr.float(), size=hr.shape[-2:], mode="nearest")
            for i in range(min(x_lr.shape[0], self.num_images - len(self._grid))):
                row = [up[i]] + [outputs[t][i].float().clamp(0, 1) for t in sorted(outputs)] + [hr[i].float()]
                self._grid.append(torch.cat(row, dim=-1).cpu())

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        rows = {t: suite.compute() for t, suite in self.suites.items()}
        self.last_rows = rows
        for t, row in rows.items():
            for name, value in row.items():
                pl_module.log(f"{split}/{name}/t={t:g}", value, sync_dist=False)  # already reduced by torchmetrics
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # log_dir broadcasts: every rank must ask
        if not trainer.is_global_zero:
            return
        protocol = self._prototype.protocol()
        title = f"{split} metrics at step {trainer.global_step}"
        write_tables(folder, rows, protocol, title, self.table_stem)
        experiment = getattr(trainer.logger, "experiment", None)
        if experiment is not None and hasattr(experiment, "add_image"):
            if self._grid:
                width = max(g.shape[-1] for g in self._grid)
                grid = torch.cat([F.pad(g, (0, width - g.shape[-1])) for g in self._grid], dim=-2)
                experiment.add_image(f"{split}/grid LR | SR(t={', '.join(f'{t:g}' for t in sorted(rows))}) | HR",
                                     grid.clamp(0, 1), trainer.global_step)
            names = next(iter(rows.values())).keys()
            x = "lpips" if "lpips" in names else next((n for n in names if n not in ("psnr", "ssim")), None)
            y = "psnr" if "psnr" in names else "ssim" if "ssim" in names else None
            if x and y:
                fig = fidelity_realness_figure(rows, self.baselines, x, y)
                experiment.add_figure(f"{split}/fidelity-realness", fig, trainer.global_step)
            experiment.add_text(f"{split}/protocol", protocol, trainer.global_step)

    # -- Lightning hooks -------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch(pl_module, batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._end(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start(pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch(pl_module, batch)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._end(trainer, pl_module, "test")
