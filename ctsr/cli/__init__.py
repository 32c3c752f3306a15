"""``ctsr``: every command of the suite, one entry point (``ctsr = ctsr.cli:main``, ``python -m ctsr.cli``).

The training and evaluation commands (``fit``, ``validate``, ``test``, ``predict``) are Lightning's CLI with the run
folder's rules (:mod:`ctsr.cli.lightning`); the user tools (``upscale``, ``score``, ``export``, …) have one module
each here, holding their parser and ``main(argv)``, with the options they share declared once in
:mod:`ctsr.cli.options`. This module imports neither torch nor Lightning: ``ctsr --help`` and ``ctsr <tool> --help``
answer without loading them, and a command imports what it needs when it runs.
"""
from __future__ import annotations

import os
import sys

from ctsr.errors import CTSRError

# the commands as `ctsr --help` lists them: group → {name: one-line help}
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train a model from YAML configs (experiments/*.yaml): stage 1, stage 2, resumes, forks",
    "validate": "evaluate a model on the validation split (the t sweep `select-t` reads)",
    "test": "evaluate a model on the test split into the metric tables",
    "predict": "run a model's predict step over a data module",
}
TOOLS: dict[str, tuple[str, str]] = {  # name → (module with main(argv), one-line help)
    "score": ("ctsr.cli.score", "score a folder of SR images (OSEDiff's protocol) into a metrics table"),
    "select-t": ("ctsr.cli.select_t", "choose t on a validation sweep by a stated rule; record it in the model"),
    "bench": ("ctsr.cli.bench", "time the upscale path against the bare diffusers graph (ratios)"),
    "upscale": ("ctsr.cli.upscale", "upscale images or folders at one or several t (any size, tiled)"),
    "demo": ("ctsr.cli.demo", "a local web page with a t slider (gradio: pip install 'ctsr[demo]')"),
    "export": ("ctsr.cli.export", "write a stage-2 checkpoint as one .safetensors file (no Lightning needed)"),
    "convert-ncnn": ("ctsr.cli.convert_ncnn", "convert a Real-ESRGAN RRDBNet from ncnn files (.param/.bin) to a .pth"),
    "push": ("ctsr.cli.push", "publish a trained model on the Hugging Face Hub with a generated model card"),
}
GROUPS: dict[str, tuple[str, ...]] = {
    "train": tuple(LIGHTNING_COMMANDS),
    "evaluate": ("score", "select-t", "bench"),
    "use": ("upscale", "demo", "export", "convert-ncnn"),
    "publish": ("push",),
}
COMMANDS: tuple[str, ...] = tuple(name for names in GROUPS.values() for name in names)


def one_line(name: str) -> str:
    return LIGHTNING_COMMANDS[name] if name in LIGHTNING_COMMANDS else TOOLS[name][1]


def help_text() -> str:
    """The top-level help: every command with one line, grouped."""
    width = max(map(len, COMMANDS)) + 2
    lines = ["usage: ctsr COMMAND [options]      (ctsr COMMAND --help: the options of one command)", "",
             "CTSR: controllable fidelity-realness trade-off distillation for x4 super-resolution, one step.", ""]
    for group, names in GROUPS.items():
        lines.append(f"{group}:")
        lines += [f"  {name:<{width}}{one_line(name)}" for name in names]
        lines.append("")
    lines += ["fit, validate, test and predict take Lightning's options (--config FILE.yaml, --trainer.*, --model.*,",
              "--data.*; `ctsr fit --help` lists them); `ctsr fit --config FILE.yaml --print_config` shows the",
              "resolved config.",
              "",
              "Exit status: 0 success, 1 some inputs failed (upscale), 2 an error you can act on (one line on",
              "stderr), 130/143 interrupted (the run's state is saved), 70 a bug in ctsr (CTSR_TRACEBACK=1 shows the",
              "traceback)."]
    return "\n".join(lines)


def _unknown_command(name: str) -> CTSRError:
    """One line for a command that does not exist, naming the nearest one."""
    import difflib

    from ctsr.errors import UsageError, shown

    close = difflib.get_close_matches(name, COMMANDS, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return UsageError(f"unknown command '{shown(name)}'{hint} (`ctsr --help` lists the commands)")


def _report(err: CTSRError) -> int:
    from ctsr.errors import Interrupted

    if isinstance(err, Interrupted):
        print(f"ctsr: interrupted: {err}", file=sys.stderr)
    else:
        print(f"ctsr: error: {err}", file=sys.stderr)
    return err.exit_code


def _file_system_error(err: BaseException) -> CTSRError | None:
    """One line for an ``OSError`` with a file name in ``err``'s chain that the user acts on outside ctsr (no
    space, quota, read-only file system, permissions), else None (a traceback: a bug to report)."""
    import errno

    from ctsr.errors import OutputError, shown

    kinds = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
             errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
             errno.EPERM: "operation not permitted", errno.EFBIG: "file too large for the file system"}
    while err is not None:
        if isinstance(err, OSError) and err.errno in kinds and err.filename is not None:
            return OutputError(f"'{shown(err.filename)}': {kinds[err.errno]} ({errno.errorcode[err.errno]})")
        err = err.__cause__ or err.__context__
    return None


def _usage_error(err: BaseException) -> CTSRError | None:
    """One line for a command line jsonargparse could not parse (``argparse.ArgumentError``), else None."""
    import argparse

    from ctsr.errors import UsageError, shown

    if not isinstance(err, argparse.ArgumentError):
        return None
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return UsageError(f"{shown(text)} (`ctsr --help`, `ctsr fit --help` list the options)")


def _run(args: list[str], argv: list[str] | None) -> int:
    if not args:
        print(help_text(), file=sys.stderr)
        from ctsr.errors import UsageError

        raise UsageError("no command given (`ctsr --help` lists the commands)")
    if args[0] in ("-h", "--help"):
        print(help_text())
        raise SystemExit(0)  # as argparse ends `ctsr COMMAND --help`
    if args[0] in TOOLS:
        import importlib

        from ctsr.quiet import quiet_libraries

        quiet_libraries()
        return int(importlib.import_module(TOOLS[args[0]][0]).main(args[1:]) or 0)
    if args[0] in LIGHTNING_COMMANDS or args[0].startswith("-"):  # `ctsr -c base.yaml fit …`: Lightning's own options
        from ctsr.cli import help_cache

        command = help_cache.cached_command(args)
        if command is not None:  # `ctsr fit --help`: the rendered text when nothing it depends on changed
            if help_cache.print_cached(command):
                raise SystemExit(0)
        from ctsr.quiet import quiet_libraries

        quiet_libraries()
        if command is not None:
            help_cache.render(command, argv)  # ends with argparse's SystemExit(0)
            return 0
        from ctsr.cli import lightning

        return lightning.run(argv)
    raise _unknown_command(args[0])


def main(argv: list[str] | None = None) -> int:
    """Every way a command ends is one line on stderr and an exit status: 0 success, 1 some inputs failed
    (``upscale``), 2 an error the user can act on, 128 + N a signal, 70 a bug in ctsr (set ``CTSR_TRACEBACK=1`` for
    the traceback). Runs that stop before their first step leave no run folder behind."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args, argv)
    except CTSRError as err:
        return _report(err)
    except SystemExit as err:
        if "lightning.pytorch" in sys.modules:  # never imported for it: `--help` stays free of Lightning
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            if isinstance(err, SIGTERMException):  # Lightning's own SIGTERM path (before training began)
                print("ctsr: interrupted: SIGTERM before the first training step; nothing to save", file=sys.stderr)
                return 143
        raise
    except KeyboardInterrupt:  # Ctrl-C outside training (training saves its step first: ctsr.lit.common.RunGuard)
        if os.environ.get("CTSR_TRACEBACK"):
            raise
        print("ctsr: interrupted: Ctrl-C", file=sys.stderr)
        return 130
    except Exception as err:  # jsonargparse wraps errors raised while instantiating classes
        cause = err
        while cause is not None and not isinstance(cause, CTSRError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:  # a full disk or a read-only folder met by a library's own writer (TensorBoard, …)
            cause = _file_system_error(err)
        if cause is None:
            cause = _usage_error(err)
        if os.environ.get("CTSR_TRACEBACK"):
            raise
        if cause is None:  # not the input's fault: say so in one line, and how to get the traceback for a report
            from ctsr.errors import describe, shown

            print(f"ctsr: internal error: {shown(describe(err))}. This is a bug in ctsr, not in your input: run "
                  f"again with CTSR_TRACEBACK=1 and report the traceback", file=sys.stderr)
            return 70
        return _report(cause)
