"""``ctsr select-t``: choose the control value t on a VALIDATION split by a stated rule, and record it in the model
file, so that the test table is computed at that one t (``TSweepEvaluation``'s ``use_selected_t``, by default).

    ctsr validate --config experiments/eval.yaml --model.init_args.model_path ctsr.safetensors \
        --data.init_args.val_pairs '[[datasets/val/LR, datasets/val/HR]]'      # the sweep, on validation data
    ctsr select-t runs/eval --model ctsr.safetensors                          # rule psnr-drop, 0.3 dB
    ctsr select-t runs/eval --model ctsr.safetensors --rule weighted --fidelity-weight 0.5
    # then `ctsr test` (experiments/eval.yaml, use_selected_t: null): the test table at that t

Rules (fidelity metrics: PSNR, SSIM; realness metrics: LPIPS, LPIPS-VGG, DISTS, FID, NIQE, MUSIQ, MANIQA, CLIPIQA,
as the paper groups them; each metric is min–max normalised over the swept t, 1 = best):

- ``psnr-drop`` (default): among the t whose PSNR is within ``max_psnr_drop`` dB (default 0.3) of the PSNR at the
  fidelity end (the largest swept t, normally t = 1), the one with the best mean normalised realness score (ties:
  the smaller t). Without any realness column: the smallest such t (t = 0 is the realness end).
- ``weighted``: the t maximising ``w · F(t) + (1 − w) · R(t)``, F and R the mean normalised fidelity and realness
  scores, ``w = fidelity_weight`` (default 0.5).

The choice is written into the safetensors metadata under ``selected_t`` as a JSON string
``{"t": …, "rule": …, "params": {…}, "split": …, "metrics": {…}}``; the file is rewritten with the same tensors
(temporary file in the same folder, then renamed). A table measured on a ``test`` split is refused: choosing t by
looking at the test set is what this command exists to avoid. So is a table of another model: every table records
the model it measured (``model``: training run, stage, step, file) and every exported file its training run
(``source``); a stage-1 table, another run's table, or a table of a single t is refused naming both, and replacing a
recorded t is announced. The recorded t is then the default of ``ctsr upscale``, the demo, ``ctsr test`` and
``model(x)``.
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

from ctsr.checkpoints import (
    atomic_write_files,
    check_writable,
    json_meta,
    read_safetensors,
    safetensors_metadata,
    sweep_temp_files,
)
from ctsr.choices import SELECTION_RULES
from ctsr.errors import ConfigError, MissingWeightsError, check, shown
from ctsr.evaluation.tables import SWEEP_METHOD, read_table
from ctsr.metrics import HIGHER_IS_BETTER

METADATA_KEY = "selected_t"
RULES = SELECTION_RULES
FIDELITY = ("psnr", "ssim")
REALNESS = ("lpips", "lpips_vgg", "dists", "fid", "niqe", "musiq", "maniqa", "clipiqa")


def _normalised(rows: dict[float, dict[str, float]], names: tuple[str, ...]) -> dict[float, float] | None:
    """Mean over ``names`` of each metric min–max normalised across t (1 = best); None when no metric is usable."""
    used = [n for n in names if all(n in r and r[n] is not None and math.isfinite(r[n]) for r in rows.values())]
    if not used:
        return None
    scores = {t: 0.0 for t in rows}
    for n in used:
        values = {t: r[n] for t, r in rows.items()}
        lo, hi = min(values.values()), max(values.values())
        for t, v in values.items():
            x = 0.0 if hi == lo else (v - lo) / (hi - lo)
            scores[t] += (x if HIGHER_IS_BETTER[n] else 1.0 - x) / len(used)
    return scores


def select_t(rows: dict[float, dict[str, float]], rule: str = "psnr-drop", max_psnr_drop: float = 0.3,
             fidelity_weight: float = 0.5) -> tuple[float, dict]:
    """(t, params) chosen from ``rows`` = {t: {metric: value}} by ``rule`` (see the module docstring)."""
    check(rule in RULES, "--rule", f"one of {', '.join(RULES)}; got {rule!r}")
    check(len(rows) > 0, "table", "no rows with a t to choose from")
    realness = _normalised(rows, REALNESS)
    if rule == "psnr-drop":
        check(max_psnr_drop >= 0, "--max-psnr-drop", f"must be ≥ 0 dB, got {max_psnr_drop}")
        check(all("psnr" in r and math.isfinite(r["psnr"]) for r in rows.values()), "--rule",
              "psnr-drop needs a psnr column for every t")
        t_fid = max(rows)
        floor = rows[t_fid]["psnr"] - max_psnr_drop
        eligible = [t for t in sorted(rows) if rows[t]["psnr"] >= floor]
        if realness is None:
            t = eligible[0]
        else:
            t = max(eligible, key=lambda s: (realness[s], -s))
        return t, {"max_psnr_drop": max_psnr_drop, "reference_t": t_fid}
    check(0 <= fidelity_weight <= 1, "--fidelity-weight", f"must lie in [0, 1], got {fidelity_weight}")
    fidelity = _normalised(rows, FIDELITY)
    check(fidelity is not None and realness is not None, "--rule",
          "weighted needs at least one fidelity (psnr, ssim) and one realness column")
    score = {t: fidelity_weight * fidelity[t] + (1 - fidelity_weight) * realness[t] for t in rows}
    t = max(sorted(rows), key=lambda s: (score[s], -s))
    return t, {"fidelity_weight": fidelity_weight}


# -- the model file ------------------------------------------------------------------------------------------------
def read_selection(path: str | Path) -> dict | None:
    """The ``selected_t`` record of a model file (None when there is none); only the file's header is read."""
    from ctsr.models.control import check_selection

    meta = safetensors_metadata(path, "--model")
    if METADATA_KEY not in meta:
        return None
    record = json_meta(meta, METADATA_KEY, path)
    check_selection(record, f"'{shown(path)}': metadata '{METADATA_KEY}'")
    return record


def model_source(path: str | Path) -> dict | None:
    """The ``source`` record of a model file (the run and stage it was trained in), None for files exported before
    ctsr recorded it; only the header is read."""
    meta = safetensors_metadata(path, "--model")
    return json_meta(meta, "source", path) if "source" in meta else None


def _run_text(record: dict | None) -> str:
    if not record or not record.get("run"):
        return "an unrecorded run"
    where = f" ({shown(record['path'])})" if record.get("path") else ""
    return f"run {str(record['run'])[:8]}{where}"


def check_table_is_the_models(table, folder: Path, model: Path) -> str | None:
    """Refuse a table measured on another model than ``model``: another stage (model files are stage 2), or another
    training run, naming both. Returns a warning line when the table or the file does not record enough to tell
    (written before ctsr recorded it), else None."""
    measured, source = table.model, model_source(model)
    if measured is None:
        return (f"'{shown(folder)}' does not record which model it measured (written by an older ctsr): make sure "
                f"it is a validation sweep of '{shown(model)}'")
    if measured.get("stage") != 2:
        raise ConfigError(
            f"TABLE: '{shown(folder)}' was measured on a stage-{measured.get('stage', '?')} model "
            f"({_run_text(measured)}); '{shown(model)}' is a stage-2 model ({_run_text(source)}). Choose t on a "
            f"validation sweep of this model: `ctsr validate --config experiments/eval.yaml "
            f"--model.init_args.model_path {shown(model)} --data.init_args.val_pairs …`")
    if source is None or not source.get("run") or not measured.get("run"):
        return (f"cannot tell whether '{shown(folder)}' measured '{shown(model)}' (the "
                f"{'model file' if source is None or not source.get('run') else 'table'} records no training run)")
    if source["run"] != measured["run"]:
        raise ConfigError(
            f"TABLE: '{shown(folder)}' measured a model of {_run_text(measured)}, but '{shown(model)}' comes from "
            f"{_run_text(source)}: a t chosen on another model's sweep does not hold for this one. Validate this "
            f"model (`ctsr validate … --model.init_args.model_path {shown(model)}`) and select on that table")
    return None


def record_selection(path: str | Path, selection: dict) -> None:
    """Rewrite the safetensors file ``path`` with the same tensors and metadata plus ``selected_t``: atomically,
    through ``.<name>.tmp-<pid>`` in its folder (a full disk or a kill leaves the file as it was; a temporary file
    left by a killed run is removed by the next one)."""
    from safetensors.torch import save

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"--model: model file '{shown(path)}' not found")
    check(path.suffix == ".safetensors", "--model",
          f"needs an exported .safetensors file (`ctsr export`), got '{shown(path)}'")
    sweep_temp_files(path.parent, [path.name], legacy=[_legacy_temp(path.name)])
    tensors, meta = read_safetensors(path, "--model")
    meta[METADATA_KEY] = json.dumps(selection)
    atomic_write_files([(path, save(tensors, metadata=meta))], "--model")


def _legacy_temp(name: str) -> re.Pattern:
    """Earlier versions' temporary name (``tempfile.mkstemp(prefix=".<name>.", suffix=".tmp")``)."""
    return re.compile(r"^\." + re.escape(name) + r"\.[a-z0-9_]{8}\.tmp$")


def selection_of(pl_module) -> dict | None:
    """The selection of the module's model: the file's record (``model_path``), else ``model.selected_t``."""
    hparams = getattr(pl_module, "hparams", {}) or {}
    path = hparams.get("model_path") if hasattr(hparams, "get") else None
    if path and str(path).endswith(".safetensors") and Path(path).is_file():
        record = read_selection(path)
        if record is not None:
            return record
    model = getattr(pl_module, "model", None)
    t = getattr(model, "selected_t", None)
    if t is None:
        return None
    return {"rule": "unknown", "split": "unknown", **(getattr(model, "selected_t_record", None) or {}), "t": float(t)}


# -- the command line ----------------------------------------------------------------------------------------------
def select_and_record(table: str | Path, *, model: str | Path, rule: str = "psnr-drop",
                      max_psnr_drop: float = 0.3, fidelity_weight: float = 0.5, method: str = SWEEP_METHOD,
                      split: str | None = None, stem: str = "metrics", dry_run: bool = False) -> int:
    """``ctsr select-t``: choose t on the validation table in ``table`` by ``rule``, print the choice and (unless
    ``dry_run``) record it in ``model``. Returns 0. The arguments are the command's options (:mod:`ctsr.cli.select_t`)."""
    if not dry_run:  # the model file is rewritten in its folder: an unwritable folder fails before anything
        check_writable(Path(model).parent, "--model")
    folder = Path(table)
    if folder.suffix in (".json", ".csv", ".md"):
        folder, stem = folder.parent, folder.stem
    table = read_table(folder, stem)
    if table is None:
        raise ConfigError(f"TABLE: no {stem}.json in '{folder}' (run the t sweep with `ctsr validate` first)")
    if table.split == "test":
        raise ConfigError(
            f"TABLE: '{folder}' was measured on a test split; choose t on a validation split (e.g. `ctsr validate "
            f"--config experiments/eval.yaml --data.init_args.val_pairs …`), then test at that t"
        )
    rows = {r.t: {k: v for k, v in r.values.items() if v is not None} for r in table.rows
            if r.method == method and r.t is not None}
    if not rows:
        raise ConfigError(f"TABLE: '{shown(folder)}' has no rows of '{method}' with a t")
    if len(rows) < 2:
        raise ConfigError(
            f"TABLE: '{shown(folder)}' has rows for t = {', '.join(f'{t:g}' for t in rows)} only: nothing to choose "
            f"from (a stage-1 run's table?). Select on a t sweep of this model's validation run "
            f"(`ctsr validate --config experiments/eval.yaml --model.init_args.model_path {shown(model)} …`)")
    model = Path(model)
    if not model.is_file():
        raise MissingWeightsError(f"--model: model file '{shown(model)}' not found")
    check(model.suffix == ".safetensors", "--model",
          f"needs an exported .safetensors file (`ctsr export`), got '{shown(model)}'")
    warning = check_table_is_the_models(table, folder, model)
    if warning:
        print(f"ctsr select-t: warning: {warning}", file=sys.stderr)
    t, params = select_t(rows, rule, max_psnr_drop, fidelity_weight)
    split = split or f"{folder} ({table.split or 'unknown split'})"
    selection = {"t": t, "rule": rule, "params": params, "split": split, "metrics": rows[t]}
    for s in sorted(rows):
        mark = "  <- selected" if s == t else ""
        print(f"t={s:g}: " + ", ".join(f"{k} {v:.4g}" for k, v in rows[s].items()) + mark)
    print(f"selected t = {t:g} by {rule} {params} on {shown(split)}")
    previous = read_selection(model)
    if previous is not None and not dry_run:
        same = float(previous["t"]) == t
        print(f"ctsr select-t: {'keeps' if same else 'replaces'} the recorded t = {float(previous['t']):g} "
              f"(rule {shown(previous.get('rule', '?'))}, split {shown(previous.get('split', '?'))})",
              file=sys.stderr)
    if not dry_run:
        record_selection(model, selection)
        print(f"recorded in '{shown(model)}' (metadata '{METADATA_KEY}')")
    return 0
