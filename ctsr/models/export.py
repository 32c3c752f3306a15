"""Loading any trained CTSR file as a :class:`ControllableSR`, and ``ctsr export`` (checkpoint → safetensors).

Accepted: an exported ``.safetensors`` (stage-1 + stage-2 LoRA), a stage-2 Lightning ``.ckpt``, or a stage-1
``.ckpt`` (then only t = 0 is allowed: there is no control yet). Every file is read as tensors only (a checkpoint
with ``torch.load(weights_only=True)``: no code in a file ever runs) and refused, naming the file, when it is
unreadable, not a CTSR model, or holds non-finite weights. :func:`load_model` is the one entry point for every
loader (``ctsr upscale``, ``ctsr export``, ``ctsr test --model.init_args.model_path``, the demo, the hub).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ctsr.checkpoints import check_writable, load_checkpoint, require_finite, sweep_temp_files
from ctsr.errors import ConfigError, CTSRError, MissingWeightsError, describe, shown
from ctsr.models.control import ControllableSR, control_kwargs, generator_from_config, load_into
from ctsr.models.generator import OneStepGenerator


class Stage1Only(ControllableSR):
    """A stage-1 generator behind the controllable interface: t must be 0."""

    supports_control = False

    def controlled_latent(self, z0, t, velocity=None):
        t = self._check_t(t, z0.shape[0], z0.device)
        if bool((t > 0).any()):
            raise ValueError("this is a stage-1 model: only t = 0 is defined (train stage 2 for control)")
        return z0


def _generator(cfg: dict, pretrained: str | None, osediff_lora: str | None) -> OneStepGenerator:
    if not cfg:
        raise ConfigError("the checkpoint does not record its generator config (written by an older ctsr?)")
    return generator_from_config(cfg, pretrained, osediff_lora)


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
        raise MissingWeightsError(f"model file '{path}' not found (a .ckpt from `ctsr fit`, a .safetensors "
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
    if isinstance(ckpt.get("ctsr_stage1_lora"), dict):
        require_finite(ckpt["ctsr_stage1_lora"], name, "stage-1 weights")
    generator = _generator(ckpt.get("ctsr_generator_config", {}), pretrained, osediff_lora)
    if "ctsr_stage1_lora" in ckpt:  # stage 2
        control = ckpt.get("ctsr_control", {})
        weights = {k[len("model.generator.unet."):]: v for k, v in state.items()
                   if k.startswith("model.generator.unet.")}
        rank = next((v.shape[0] for k, v in weights.items() if "lora_A" in k), 4)
        model = ControllableSR.from_stage1(generator, ckpt["ctsr_stage1_lora"], control_rank=rank,
                                           **control_kwargs(control))
        load_into(generator.unet, weights, name)
        return model.eval()
    stage1 = {k[len("generator."):]: v for k, v in state.items() if k.startswith("generator.")}
    if not stage1:
        raise ConfigError(f"{name} holds neither a stage-1 nor a stage-2 CTSR model")
    return Stage1Only.from_stage1(generator, stage1).eval()


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
    parser = argparse.ArgumentParser(
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
