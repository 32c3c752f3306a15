"""``ctsr export`` (checkpoint → safetensors), and the loaders of any trained CTSR file as a :class:`ControllableSR`
(defined beside the model in :mod:`ctsr.models.control`, named here as well).

Accepted: an exported ``.safetensors`` (stage-1 + stage-2 LoRA), a stage-2 Lightning ``.ckpt``, or a stage-1
``.ckpt`` (then only t = 0 is allowed: there is no control yet). Every file is read as tensors only (a checkpoint
with ``torch.load(weights_only=True)``: no code in a file ever runs) and refused, naming the file, when it is
unreadable, not a CTSR model, or holds non-finite weights. :func:`load_model` is the one entry point for every
loader (``ctsr upscale``, ``ctsr export``, ``ctsr test --model.init_args.model_path``, the demo, the hub).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from ctsr.checkpoints import check_writable, sweep_temp_files
from ctsr.errors import ConfigError, shown

# the loaders live beside the model they build (ctsr.models.control); imported from here by the tools and tests
from ctsr.models.control import Stage1Only, load_model, model_from_checkpoint
from ctsr.models.sources import resolve_model_spec

__all__ = ["Stage1Only", "describe_selection", "export_checkpoint", "load_model", "model_from_checkpoint", "recorded_selection",
           "report_source", "resolve_model_spec"]


def recorded_selection(source: str | Path) -> dict | None:
    """The ``selected_t`` record of a model (``ctsr select-t``) from its file's header alone, None when it records
    none (a ``.ckpt``, a file never selected on). ``source``: a file, a CTSR folder or a Hub id."""
    from ctsr.checkpoints import json_meta, safetensors_metadata
    from ctsr.models.control import check_selection
    from ctsr.models.sources import parse_hub_id, resolve_folder, weights_file

    path = resolve_model_spec(source).expanduser()
    if not path.is_file():
        if path.is_dir():
            path = weights_file(path)
        elif parse_hub_id(str(source)):
            path = weights_file(resolve_folder(str(source)))
        else:
            return None
    if path.suffix != ".safetensors":
        return None
    meta = safetensors_metadata(path, "model file")
    if "selected_t" not in meta:
        return None
    selected = json_meta(meta, "selected_t", path)
    check_selection(selected, f"'{shown(path)}': metadata 'selected_t'")
    return selected


def describe_selection(selected: dict) -> str:
    """'t = 0.6 (recorded by `ctsr select-t`: rule psnr-drop, split val)' for the line a tool prints when it uses
    the record."""
    return (f"t = {float(selected['t']):g} (recorded by `ctsr select-t`: rule {shown(selected.get('rule', '?'))}, "
            f"split {shown(selected.get('split', '?'))})")


def report_source(spec: str | Path, tool: str) -> str | Path:
    """The file ``tool`` loads for ``spec`` (a run folder: its newest checkpoint), and one line on stderr naming the
    step a checkpoint holds: "ctsr export: using step 6 of runs/b/checkpoints/last.ckpt"."""
    from ctsr.runs import model_source

    if str(spec) == "mini":
        path = resolve_model_spec(spec)
        print(f"{tool}: using the mini-world model shipped with ctsr ({path})", file=sys.stderr)
        return path
    source, step, note = model_source(spec, warn=lambda msg: print(f"{tool}: warning: {msg}", file=sys.stderr))
    if step is not None:
        print(f"{tool}: using step {step} of {source}" + (f" ({note})" if note else ""), file=sys.stderr)
    return source


def export_checkpoint(ckpt: str | Path, out: str | Path, *, pretrained: str | None = None,
                      osediff_lora: str | None = None, force: bool = False, half: bool = False) -> int:
    """``ctsr export``: write the stage-2 model of ``ckpt`` (a checkpoint or a run folder) to ``out``
    (``.safetensors``), float16 with ``half``; refuses to overwrite without ``force``. Returns 0."""
    out = Path(out).expanduser()
    if out.suffix != ".safetensors":
        raise ConfigError(f"out: '{out}' must end in .safetensors")
    if out.exists() and not force:
        raise ConfigError(f"out: '{out}' exists (use --force to overwrite)")
    if Path(ckpt).expanduser().resolve() == out.resolve():
        raise ConfigError(f"out: '{shown(out)}' is the input file")
    check_writable(out.parent, "out")  # a read-only or unwritable folder: one line before the model is loaded
    sweep_temp_files(out.parent, [out.name])  # the temporary file of an export that was killed
    source = report_source(ckpt, "ctsr export")
    model = load_model(source, pretrained, osediff_lora)
    if isinstance(model, Stage1Only):
        raise ConfigError(f"'{shown(source)}' is a stage-1 checkpoint; export a stage-2 one")
    model.export(out, torch.float16 if half else None)  # atomic: a temporary file, then a rename
    print(f"wrote {shown(out)} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
