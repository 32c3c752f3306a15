"""``ctsr``: the LightningCLI (fit / validate / test / predict), plus the user tools (upscale, export, bench, score,
select-t).

The model and the data module are chosen by ``class_path`` in the YAML (``experiments/*.yaml``). Every run lives
in one folder, ``<save_dir>/<name>`` of its TensorBoard logger: event files, ``checkpoints/``, the resolved
``config.yaml`` and, after evaluation, the metric tables.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ctsr.errors import CTSRError

TOOLS: dict[str, tuple[str, str]] = {  # name → (module with main(argv), one-line help)
    "upscale": ("ctsr.inference.upscale", "upscale images or folders at one or several t (any size, tiled)"),
    "export": ("ctsr.models.export", "write a stage-2 checkpoint as one .safetensors file (no Lightning needed)"),
    "bench": ("ctsr.inference.bench", "time the upscale path against the bare diffusers graph (ratios)"),
    "demo": ("ctsr.inference.demo", "a local web page with a t slider (gradio: pip install 'ctsr[demo]')"),
    "push": ("ctsr.models.hub", "publish a trained model on the Hugging Face Hub with a generated model card"),
    "score": ("ctsr.evaluation.score", "score a folder of SR images (OSEDiff's protocol) into a metrics table"),
    "select-t": ("ctsr.evaluation.select_t", "choose t on a validation sweep by a stated rule; record it in the model"),
}


def _lightning_cli(args: list[str] | None = None):
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    class CTSRCLI(LightningCLI):
        def _parse_ckpt_path(self) -> None:
            """Lightning would overlay a checkpoint's saved hyperparameters on the config. Here the YAML (saved as
            config.yaml in every run folder) is the one record of a run, and ``ctsr test --ckpt_path`` may load a
            checkpoint into another module (``TrainedModel``): checkpoints carry weights and loop state only."""

        def before_fit(self) -> None:
            ckpt = self.config_init[self.subcommand].get("ckpt_path")
            logger = self.trainer.logger
            if logger is None or ckpt is not None:
                return
            ckpt_dir = Path(logger.log_dir) / "checkpoints"
            if ckpt_dir.is_dir() and any(ckpt_dir.glob("*.ckpt")):
                raise CTSRError(
                    f"the run folder '{logger.log_dir}' already holds checkpoints. Resume it with "
                    f"`--ckpt_path last`, or start a new run with `--trainer.logger.init_args.name NEW_NAME`."
                )

    return CTSRCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
        parser_kwargs={"description": "CTSR: controllable fidelity-realness trade-off distillation for x4 SR."
                       + "".join(f"\n  ctsr {k}: {v[1]}" for k, v in TOOLS.items())},
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in TOOLS:
            import importlib

            return int(importlib.import_module(TOOLS[args[0]][0]).main(args[1:]) or 0)
        _lightning_cli(argv)
        return 0
    except CTSRError as err:
        print(f"ctsr: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # jsonargparse wraps errors raised while instantiating classes
        cause = err
        while cause is not None and not isinstance(cause, CTSRError):
            cause = cause.__cause__ or cause.__context__
        if cause is None or os.environ.get("CTSR_TRACEBACK"):
            raise
        print(f"ctsr: error: {cause}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
