"""Evaluation across a sweep of the control value t (DESIGN §8; the paper's Tables 2, 3, 7, 10–12).

For each validation/test batch the callback computes z0 once and decodes every t of the list from it (an LR whose
sides are not a multiple of the model's alignment is padded, and the output cropped back: no image is cropped),
applies the colour correction (``adain`` by default, as OSEDiff's test script and released outputs), updates one
:class:`~ctsr.metrics.MetricSuite` per t, and at the end of the epoch
- logs ``val/<metric>/t=<t>`` (``test/…`` under ``ctsr test``), synchronised across DDP ranks, and, when the module
  has a fidelity teacher with an image (``AnchoredTeacher.upscale``), ``val/d_fidelity_psnr/t=…`` and
  ``val/d_fidelity_lpips/t=…``: PSNR and LPIPS of SR(t) against the teacher's own image x_f = T_f(x_LR),
- logs an image grid LR | SR(t)… | HR for the first ``num_images`` images and a fidelity–realness figure
  (PSNR against LPIPS, one point per t, plus any baseline rows) to every logger that takes images (TensorBoard,
  W&B's ``log_image``, MLflow's ``log_image``/``log_figure``),
- writes ``metrics.md``, ``metrics.csv`` and ``metrics.json`` (one row per t, the paper's column order, ↑/↓ marks,
  the protocol line) to the run folder, keeping the rows of other methods (``ctsr score --name OSEDiff``) that
  were scored there under the same protocol,
- optionally writes the SR images, ``<save_images>/<split>/t=<t>/<name>.png``, exactly the pixels it scored, so the
  folder can be re-scored later with ``ctsr score`` (also under ``ctsr predict``).
A stage-1 model (no control) is evaluated once, as the row ``t = 0``.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from ctsr.checkpoints import atomic_write, check_writable
from ctsr.errors import ConfigError, MissingWeightsError, check
from ctsr.evaluation.tables import SWEEP_METHOD, Row, Table, read_table, write_table
from ctsr.inference.color import COLOR_FIXES, ColorFix, color_fix
from ctsr.inference.tiling import lr_multiple, pad_to_multiple
from ctsr.metrics import DEFAULT_METRICS, MetricSuite, column_name

DEFAULT_T = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


# -- SR images of a batch ------------------------------------------------------------------------------------------
def pad_multiple(pl_module: L.LightningModule) -> int:
    """LR sides are padded to a multiple of this (:func:`~ctsr.inference.tiling.lr_multiple`, as ``ctsr upscale``);
    8 for a module without a diffusers UNet."""
    gen = _generator(pl_module)
    unet = getattr(gen, "unet", None)
    return lr_multiple(unet, output_scale(pl_module)) if unet is not None and hasattr(unet, "config") else 8


def _generator(pl_module: L.LightningModule):
    model = getattr(pl_module, "model", None)
    return getattr(model, "generator", None) or getattr(pl_module, "generator", None)


def output_scale(pl_module: L.LightningModule) -> int:
    """The model's upscaling factor: 4 (×4 SR), 1 (same-size tasks such as low-light enhancement)."""
    return int(getattr(_generator(pl_module), "scale", 4))


def controllable(pl_module: L.LightningModule) -> bool:
    model = getattr(pl_module, "model", None)
    return model is not None and hasattr(model, "sweep") and getattr(model, "supports_control", True)


def sweep_images(pl_module: L.LightningModule, x_lr: Tensor, ts: Sequence[float],
                 color: ColorFix = "none") -> dict[float, Tensor]:
    """{t: SR (B,3,s·h,s·w) in [0,1], float32; s the model's scale}: z0 once, every t decoded from it
    (``ControllableSR.sweep``); a model
    without control gives {0: SR}. Any h, w: the LR is padded to :func:`pad_multiple` and the SR cropped back.
    ``color``: the colour correction against the bicubic-upscaled LR (:mod:`ctsr.inference.color`)."""
    h, w = x_lr.shape[-2:]
    s = output_scale(pl_module)
    x = pad_to_multiple(x_lr, pad_multiple(pl_module))
    with torch.no_grad():
        if controllable(pl_module):
            outs = dict(zip(ts, pl_module.model.sweep(x, list(ts))))
        else:
            outs = {0.0: pl_module(x)}
        reference = None
        if color != "none":
            reference = F.interpolate(x_lr.float(), scale_factor=s, mode="bicubic", align_corners=False).clamp(0, 1)
        return {t: color_fix(o[..., : s * h, : s * w].float(), reference, color) for t, o in outs.items()}


# -- figures and loggers -------------------------------------------------------------------------------------------
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


def figure_to_array(fig) -> np.ndarray:
    """(H, W, 3) uint8 rendering of a matplotlib figure."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _artifact_name(tag: str, step: int) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", tag).strip("_") + f"_step{step}.png"


def log_image(logger, tag: str, image: Tensor, step: int, figure=None) -> bool:
    """Send one image — (3, H, W) in [0, 1] — to a logger that takes images; ``figure``: the matplotlib figure it
    was rendered from, for loggers that store figures as such. Returns whether the logger took it.

    TensorBoard: ``experiment.add_image``/``add_figure``; W&B (any logger with ``log_image(key, images, step)``):
    ``log_image``; MLflow (``experiment.log_image``/``log_figure`` with the logger's ``run_id``): artifacts."""
    hwc = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    if callable(getattr(logger, "log_image", None)):  # W&B
        logger.log_image(key=tag, images=[hwc], step=step)
        return True
    experiment = getattr(logger, "experiment", None)
    if experiment is None:
        return False
    if hasattr(experiment, "add_image"):  # TensorBoard's SummaryWriter
        if figure is not None:
            experiment.add_figure(tag, figure, step, close=False)
        else:
            experiment.add_image(tag, image.clamp(0, 1), step)
        return True
    run_id = getattr(logger, "run_id", None)
    if run_id is not None and hasattr(experiment, "log_image"):  # MLflow's MlflowClient
        if figure is not None and hasattr(experiment, "log_figure"):
            experiment.log_figure(run_id, figure, _artifact_name(tag, step))
        else:
            experiment.log_image(run_id, hwc, _artifact_name(tag, step))
        return True
    return False


def log_text(logger, tag: str, text: str, step: int) -> None:
    experiment = getattr(logger, "experiment", None)
    if experiment is not None and hasattr(experiment, "add_text"):
        experiment.add_text(tag, text, step)
    elif getattr(logger, "run_id", None) is not None and hasattr(experiment, "log_text"):
        experiment.log_text(logger.run_id, text, _artifact_name(tag, step).replace(".png", ".txt"))


# -- legacy table writer (the ablation runners' format) ------------------------------------------------------------
def write_tables(folder: Path, rows: dict[float, dict[str, float]], protocol: str, title: str, stem: str = "metrics"):
    """``<stem>.md`` and ``<stem>.csv``: one row per t (first column ``t``), the paper's column order with ↑/↓, and
    ``protocol`` as given. The t-sweep callback itself writes through :mod:`ctsr.evaluation.tables`."""
    table = Table([Row(SWEEP_METHOD, t, dict(v)) for t, v in sorted(rows.items())], {}, title,
                  protocol_text=protocol)
    write_table(folder, table, stem)


class TSweepEvaluation(Callback):
    """Evaluate every t of ``t_values`` on the validation (during ``fit``/``validate``) and test sets.

    Args:
        t_values: the control values (each in [0, 1]).
        use_selected_t: evaluate only the t recorded in the model file by ``ctsr select-t`` (``t_values`` is
            then ignored); the table's notes say how it was chosen.
        metrics: metric names (``--metrics`` selects a subset; the others need no weights). Default: OSEDiff's
            set (PSNR, SSIM, LPIPS-Alex, DISTS, FID, NIQE, MUSIQ, MANIQA-PIPAL, CLIPIQA); ``lpips_vgg`` on request.
        color_space / crop_border: the PSNR/SSIM protocol (OSEDiff: y, 0), printed with every table.
        metric_weights: ``pretrained`` (real metric networks) or ``random`` (tiny smoke runs only).
        color: colour correction of the SR images before they are scored and saved: ``adain`` (OSEDiff's test
            default and its released outputs), ``wavelet`` or ``none``.
        save_images: write the scored SR images: a folder, or ``true`` for ``<run folder>/images``; images go to
            ``<folder>/<split>/t=<t>/<HR file name>.png``. None/false: do not write them.
        fidelity_distance: also report PSNR and LPIPS of SR(t) against the fidelity teacher's image x_f when the
            module has a fidelity teacher that makes one (``AnchoredTeacher``); skipped otherwise.
        num_images: how many images the logged grid shows.
        baselines: rows to draw in the fidelity–realness figure, e.g. {"OSEDiff": {"psnr": 23.94, "lpips": 0.3172}}.
        table_stem: the tables' file name in the run folder.
        method: the method name of this sweep's rows (other methods' rows in the folder's table are kept).
    """

    def __init__(
        self,
        t_values: list[float] = list(DEFAULT_T),
        use_selected_t: bool = False,
        metrics: list[str] = list(DEFAULT_METRICS),
        color_space: Literal["y", "rgb"] = "y",
        crop_border: int = 0,
        metric_weights: Literal["pretrained", "random"] = "pretrained",
        color: ColorFix = "adain",
        save_images: str | bool | None = None,
        fidelity_distance: bool = True,
        num_images: int = 4,
        baselines: dict[str, dict[str, float]] | None = None,
        table_stem: str = "metrics",
        method: str = SWEEP_METHOD,
    ) -> None:
        super().__init__()
        check(len(t_values) > 0, "t_values", "give at least one t")
        bad = [t for t in t_values if not 0 <= t <= 1]
        check(not bad, "t_values", f"each t must lie in [0, 1], got {bad}")
        check(color in COLOR_FIXES, "color", f"one of {', '.join(COLOR_FIXES)}; got {color!r}")
        check(bool(method) and "," not in method, "method", f"a non-empty name without commas, got {method!r}")
        self.t_values = [float(t) for t in t_values]
        self.use_selected_t = use_selected_t
        # build the first suite now: a missing metric weight fails here, before any image is processed
        self._prototype = MetricSuite(metrics, color_space, crop_border, metric_weights)
        self.color = color
        self.save_images = save_images
        self.fidelity_distance = fidelity_distance
        self.num_images = num_images
        self.baselines = dict(baselines or {})
        self.table_stem = table_stem
        self.method = method
        self.suites: dict[float, MetricSuite] = {}
        self.distances: dict[float, MetricSuite] = {}
        self._distance_prototype: MetricSuite | None = None
        self._grid: list[Tensor] = []
        self._image_dir: Path | None = None
        self._written: dict[str, str] = {}
        self._selection: dict | None = None
        self.last_rows: dict[float, dict[str, float]] = {}

    # -- per epoch ------------------------------------------------------------------------------------------------
    def _ts(self, pl_module: L.LightningModule) -> list[float]:
        if not controllable(pl_module):
            return [0.0]
        if not self.use_selected_t:
            return self.t_values
        from ctsr.evaluation.select_t import selection_of

        self._selection = selection_of(pl_module)
        if self._selection is None:
            raise ConfigError(
                "use_selected_t: the model file records no selected t; choose one on a validation split with "
                "`ctsr select-t VAL_RUN_DIR --model MODEL.safetensors` first"
            )
        return [float(self._selection["t"])]

    @staticmethod
    def _teacher(pl_module: L.LightningModule):
        teacher = getattr(pl_module, "fidelity_teacher", None)
        return teacher if callable(getattr(teacher, "upscale", None)) else None

    def _distance_suite(self, device: torch.device) -> MetricSuite:
        """PSNR and LPIPS (AlexNet, a small network: built apart from the table's metrics) of SR(t) to x_f."""
        if self._distance_prototype is None:
            p = self._prototype
            try:
                self._distance_prototype = MetricSuite(["psnr", "lpips"], p.color_space, p.crop_border, p.weights)
            except MissingWeightsError:
                warnings.warn("the 'LPIPS to x_f' column is skipped: LPIPS-Alex's weights are not cached "
                              "(ctsr.metrics.download_weights(['lpips']) on a connected machine)", stacklevel=2)
                self._distance_prototype = MetricSuite(["psnr"], p.color_space, p.crop_border)
        return self._distance_prototype.to(device)

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        ts = self._ts(pl_module)
        self._prototype.to(pl_module.device)
        self.suites = {t: self._prototype.clone().to(pl_module.device) for t in ts}
        self.distances = {}
        if self.fidelity_distance and self._teacher(pl_module) is not None:
            proto = self._distance_suite(pl_module.device)
            self.distances = {t: proto.clone().to(pl_module.device) for t in ts}
        self._grid = []
        self._written = {}
        self._image_dir = None
        if self.save_images:
            root = Path(self.save_images) if isinstance(self.save_images, str) else None
            if root is None:
                root = Path(trainer.log_dir or trainer.default_root_dir) / "images"  # every rank asks (broadcast)
            self._image_dir = root / split
            check_writable(self._image_dir, "save_images")  # an unwritable folder: one line before any image

    def _save(self, outputs: dict[float, Tensor], paths: Sequence[str]) -> None:
        from ctsr.data.images import write_image

        for i, path in enumerate(paths):
            name = Path(path).stem + ".png"
            if name in self._written and self._written[name] != path:
                raise ConfigError(
                    f"save_images: '{self._written[name]}' and '{path}' would both be saved as '{name}'; evaluate "
                    f"one test set at a time when saving images"
                )
            self._written[name] = path
            for t, sr in outputs.items():  # through `.<name>.tmp-<pid>`: a full disk or a kill leaves no partial PNG
                with atomic_write(self._image_dir / f"t={t:g}" / name, "save_images") as f:
                    write_image(sr[i], f, format="PNG")

    def _batch(self, pl_module: L.LightningModule, batch: dict) -> None:
        x_lr, hr = batch["lr"], batch["hr"]
        outputs = sweep_images(pl_module, x_lr, list(self.suites), self.color)
        for t, sr in outputs.items():
            self.suites[t].update(sr, hr.float())
        if self.distances:
            x_f = self._teacher(pl_module).upscale(x_lr).float()
            for t, sr in outputs.items():
                self.distances[t].update(sr, x_f)
        if self._image_dir is not None:
            self._save(outputs, batch["path"])
        if len(self._grid) < self.num_images:
            up = F.interpolate(x_lr.float(), size=hr.shape[-2:], mode="nearest")
            for i in range(min(x_lr.shape[0], self.num_images - len(self._grid))):
                row = [up[i]] + [outputs[t][i] for t in sorted(outputs)] + [hr[i].float()]
                self._grid.append(torch.cat(row, dim=-1).cpu())

    def _settings(self) -> dict:
        p = self._prototype
        return {"color_space": p.color_space, "crop_border": p.crop_border, "weights": p.weights,
                "quantize": p.quantize}

    def _notes(self) -> list[str]:
        notes = [(f"{self.method} rows: colour correction `{self.color}`; LR padded to the model's alignment, SR "
                  f"cropped back (whole images).")]
        if self.distances:
            notes.append("PSNR to x_f / LPIPS to x_f: distance of SR(t) to the fidelity teacher's image T_f(x_LR).")
        if self._selection is not None:
            s = self._selection
            notes.append(f"t = {float(s['t']):g} selected on '{s.get('split', '?')}' by the rule "
                         f"`{s.get('rule', '?')}` (`ctsr select-t`), not on this set.")
        return notes

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        rows = {t: suite.compute() for t, suite in self.suites.items()}
        for t, suite in self.distances.items():
            rows[t].update({f"d_fidelity_{k}": v for k, v in suite.compute().items()})
        self.last_rows = rows
        for t, row in rows.items():
            for name, value in row.items():
                pl_module.log(f"{split}/{name}/t={t:g}", value, sync_dist=False)  # already reduced by torchmetrics
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # log_dir broadcasts: every rank must ask
        if not trainer.is_global_zero:
            return
        title = f"{split} metrics at step {trainer.global_step}"
        table = Table([Row(self.method, t, row) for t, row in sorted(rows.items())], self._settings(), title,
                      self._notes(), split=split)
        try:
            existing = read_table(folder, self.table_stem)
        except ConfigError:
            existing = None
        if existing is not None:
            others = [r for r in existing.rows if r.method != self.method]
            if others and existing.settings == table.settings:
                kept = tuple({r.method for r in others})  # the notes of `ctsr score` rows start with their name
                table = Table(others, table.settings, split=split).merge(table)
                table.notes = self._notes() + [n for n in existing.notes if n.startswith(kept)]
            elif others:
                warnings.warn(f"{folder / self.table_stem}.*: rows of {sorted({r.method for r in others})} were "
                              f"scored under another protocol and are replaced", stacklevel=2)
        write_table(folder, table, self.table_stem)
        self._log_media(trainer, split, rows, self._prototype.protocol())

    def _log_media(self, trainer: L.Trainer, split: str, rows: dict[float, dict[str, float]], protocol: str) -> None:
        loggers = list(getattr(trainer, "loggers", None) or ([trainer.logger] if trainer.logger else []))
        if not loggers:
            return
        step = trainer.global_step
        grid = None
        if self._grid:
            width = max(g.shape[-1] for g in self._grid)
            grid = torch.cat([F.pad(g, (0, width - g.shape[-1])) for g in self._grid], dim=-2).clamp(0, 1)
        names = next(iter(rows.values())).keys()
        x = "lpips" if "lpips" in names else next((n for n in names if n in self._prototype.names
                                                   and n not in ("psnr", "ssim")), None)
        y = "psnr" if "psnr" in names else "ssim" if "ssim" in names else None
        fig = fig_image = None
        if x and y:
            fig = fidelity_realness_figure(rows, self.baselines, x, y)
            fig_image = torch.from_numpy(figure_to_array(fig)).permute(2, 0, 1).float() / 255
        grid_tag = f"{split}/grid LR | SR(t={', '.join(f'{t:g}' for t in sorted(rows))}) | HR"
        for logger in loggers:
            if grid is not None:
                log_image(logger, grid_tag, grid, step)
            if fig is not None:
                log_image(logger, f"{split}/fidelity-realness", fig_image, step, figure=fig)
            log_text(logger, f"{split}/protocol", protocol, step)
        if fig is not None:
            import matplotlib.pyplot as plt

            plt.close(fig)

    # -- Lightning hooks -------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module, "val")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch(pl_module, batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._end(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module, "test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch(pl_module, batch)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._end(trainer, pl_module, "test")

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module, "predict")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """``ctsr predict``: only the images (``save_images``), per t; nothing is scored."""
        if self._image_dir is not None:
            self._save(sweep_images(pl_module, batch["lr"], list(self.suites), self.color), batch["path"])
