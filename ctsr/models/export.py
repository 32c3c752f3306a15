"""Loading any trained CTSR file as a :class:`ControllableSR`, and ``ctsr export`` (checkpoint → safetensors).

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

from ctsr.checkpoints import check_writable, load_checkpoint, require_finite, require_float_weights, sweep_temp_files
from ctsr.errors import ArgumentParser, ConfigError, CTSRError, MissingWeightsError, describe, shown
from ctsr.models.control import (
    ControllableSR,
    check_control_config,
    check_generator_config,
    check_lora_ranks,
    control_kwargs,
    generator_from_config,
    load_into,
)
from ctsr.models.generator import OneStepGenerator


class Stage1Only(ControllableSR):
    """A stage-1 generator behind the controllable interface: t must be 0."""

    supports_control = False

    def controlled_latent(self, z0, t, velocity=None):
        t = self._check_t(t, z0.shape[0], z0.device)
        if bool((t > 0).any()):
            raise ValueError("this is a stage-1 model: only t = 0 is defined (train stage 2 for control)")
        return z0


def _generator(cfg: dict, pretrained: str | None, osediff_lora: str | None, name: str = "the checkpoint"
               ) -> OneStepGenerator:
    if not cfg:
        raise ConfigError(f"{name} does not record its generator config (written by an older ctsr?)")
    return generator_from_config(cfg, pretrained, osediff_lora, f"{name}: ctsr_generator_config")


def resolve_model_spec(spec: str | Path) -> Path:
    """A model file named by the user: ``mini`` is the mini-world model shipped in the package; anything else is a
    path."""
    if str(spec) == "mini":
        from ctsr.mini import MODEL

        if not MODEL.is_file():
            raise MissingWeightsError(f"the shipped mini-world model '{MODEL}' is missing (build it with `make mini "
                                      f"SHIP=1`)")
        return MODEL
    return Path(spec)


def load_model(path: str | Path, pretrained: str | None = None, osediff_lora: str | None = None,
               control_steps: int | None = None) -> ControllableSR:
    """Any trained CTSR file → a :class:`ControllableSR` in eval mode (on the CPU). Not a file: a run folder (its
    newest readable checkpoint by recorded step), a CTSR folder or a Hub id ``owner/name[@revision]``
    (:func:`ctsr.models.hub.load_pretrained`, which comes back here with the downloaded file). Every loader goes
    through this function: tensors only, metadata and finiteness checked. ``control_steps`` overrides the stored K.
    ``mini``: the mini-world model shipped in the package."""
    path = resolve_model_spec(path).expanduser()
    if path.is_dir():
        from ctsr.runs import model_source

        path = Path(model_source(path)[0])  # a run folder: its newest readable checkpoint by recorded step
    if not path.is_file():
        from ctsr.models.hub import load_pretrained, parse_hub_id

        if path.is_dir() or parse_hub_id(str(path)):
            return load_pretrained(path if path.is_dir() else str(path), pretrained=pretrained,
                                   osediff_lora=osediff_lora, control_steps=control_steps)
        if path.exists():
            raise ConfigError(f"model file '{shown(path)}' is not a regular file (a .ckpt from `ctsr fit`, a "
                              f".safetensors from `ctsr export`, a CTSR folder or a Hub id owner/name)")
        raise MissingWeightsError(f"model file '{shown(path)}' not found (a .ckpt from `ctsr fit`, a .safetensors "
                                  f"from `ctsr export`, a CTSR folder or a Hub id owner/name)")
    if path.suffix == ".safetensors":
        try:
            return ControllableSR.load(path, pretrained, osediff_lora, control_steps=control_steps)
        except CTSRError:
            raise
        except (TypeError, KeyError, ValueError) as err:  # metadata that parses but does not fit this ctsr
            raise ConfigError(f"'{path}': its metadata does not describe a model this ctsr can build "
                              f"({describe(err)})") from None
    ckpt = load_checkpoint(path, "model file")
    model = model_from_checkpoint(ckpt, pretrained, osediff_lora, str(path))
    if control_steps is not None and getattr(model, "supports_control", True):
        model.control_steps = control_steps
    return model


def model_from_checkpoint(ckpt: dict, pretrained: str | None = None, osediff_lora: str | None = None,
                          name: str = "the checkpoint") -> ControllableSR:
    """A loaded Lightning checkpoint dict (stage 1 or stage 2) → :class:`ControllableSR` in eval mode."""
    state = ckpt.get("state_dict", {})
    if not isinstance(state, dict):
        raise ConfigError(f"{name} holds no state_dict (not a Lightning checkpoint of ctsr)")
    require_finite(state, name)
    stage1 = ckpt.get("ctsr_stage1_lora")
    if "ctsr_stage1_lora" in ckpt and not isinstance(stage1, dict):
        raise ConfigError(f"{name}: ctsr_stage1_lora must be a mapping of tensors, got {type(stage1).__name__}")
    if isinstance(stage1, dict):
        require_float_weights(stage1, name, "stage-1 weights")
    cfg = ckpt.get("ctsr_generator_config", {})
    if cfg:
        check_generator_config(cfg, f"{name}: ctsr_generator_config")
        own = stage1 if isinstance(stage1, dict) else {k[len("generator."):]: v for k, v in state.items()
                                                        if k.startswith("generator.")}
        check_lora_ranks(cfg, own, None, None, name)  # before any layer is built
    if isinstance(stage1, dict):  # stage 2
        control = ckpt.get("ctsr_control", {})
        check_control_config(control, f"{name}: ctsr_control", rank=False)
        weights = {k[len("model.generator.unet."):]: v for k, v in state.items()
                   if k.startswith("model.generator.unet.")}
        require_float_weights(weights, name, "stage-2 weights")
        rank = next((v.shape[0] for k, v in weights.items() if "lora_A" in k), 4)
        generator = _generator(cfg, pretrained, osediff_lora, name)
        model = ControllableSR.from_stage1(generator, ckpt["ctsr_stage1_lora"], control_rank=rank,
                                           **control_kwargs(control))
        load_into(generator.unet, weights, name)
        model.source = checkpoint_source(ckpt, 2)
        return model.eval()
    stage1 = {k[len("generator."):]: v for k, v in state.items() if k.startswith("generator.")}
    if not stage1:
        raise ConfigError(f"{name} holds neither a stage-1 nor a stage-2 CTSR model")
    require_float_weights(stage1, name, "stage-1 weights")
    model = Stage1Only.from_stage1(_generator(cfg, pretrained, osediff_lora, name), stage1)
    model.source = checkpoint_source(ckpt, 1)
    return model.eval()


def checkpoint_source(ckpt: dict, stage: int) -> dict | None:
    """What a model built from a checkpoint records of where it comes from (``source``, kept by ``ctsr export``):
    the run's id and folder (``ctsr_run``), the stage and the step; None for checkpoints without a run id."""
    run = ckpt.get("ctsr_run")
    if not isinstance(run, dict) or not isinstance(run.get("id"), str):
        return None
    step = ckpt.get("global_step")
    return {"run": run["id"], "path": str(run.get("path", "")), "stage": stage,
            "step": step if isinstance(step, int) else None}


def recorded_selection(source: str | Path) -> dict | None:
    """The ``selected_t`` record of a model (``ctsr select-t``) from its file's header alone, None when it records
    none (a ``.ckpt``, a file never selected on). ``source``: a file, a CTSR folder or a Hub id."""
    from ctsr.checkpoints import json_meta, safetensors_metadata
    from ctsr.models.control import check_selection
    from ctsr.models.hub import parse_hub_id, resolve_folder, weights_file

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
    """'t = 0.6 (chosen by psnr-drop on runs/val (val))' for the line a tool prints when it uses the record."""
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


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="ctsr export", description="Write a stage-2 checkpoint as one safetensors file (stage-1 LoRA + "
        "stage-2 LoRA + the config that rebuilds it), loadable with ControllableSR.load — no Lightning needed.")
    parser.add_argument("ckpt", help="stage-2 checkpoint (runs/<name>/checkpoints/last.ckpt), or the run folder "
                        "runs/<name> (its newest checkpoint by recorded step)")
    parser.add_argument("out", help="output .safetensors file")
    parser.add_argument("--pretrained", help="override the base model location stored in the checkpoint")
    parser.add_argument("--osediff-lora", help="override the OSEDiff LoRA file stored in the checkpoint")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument("--half", action="store_true",
                        help="store the weights in float16 (half the size; loaded back into float32)")
    args = parser.parse_args(argv)
    out = Path(args.out).expanduser()
    if out.suffix != ".safetensors":
        raise ConfigError(f"out: '{out}' must end in .safetensors")
    if out.exists() and not args.force:
        raise ConfigError(f"out: '{out}' exists (use --force to overwrite)")
    if Path(args.ckpt).expanduser().resolve() == out.resolve():
        raise ConfigError(f"out: '{shown(out)}' is the input file")
    check_writable(out.parent, "out")  # a read-only or unwritable folder: one line before the model is loaded
    sweep_temp_files(out.parent, [out.name])  # the temporary file of an export that was killed
    source = report_source(args.ckpt, "ctsr export")
    model = load_model(source, args.pretrained, args.osediff_lora)
    if isinstance(model, Stage1Only):
        raise ConfigError(f"'{shown(source)}' is a stage-1 checkpoint; export a stage-2 one")
    model.export(out, torch.float16 if args.half else None)  # atomic: a temporary file, then a rename
    print(f"wrote {shown(out)} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
