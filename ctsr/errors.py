"""Errors a user can act on. The CLI prints their message alone (no traceback) and exits with status 2
(:class:`Interrupted`: 128 + the signal number, as a shell reports a process ended by that signal)."""
from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Mapping
from typing import Any


class CTSRError(Exception):
    """Base class: the message says what is wrong and what to do."""

    exit_code = 2


class ConfigError(CTSRError, ValueError):
    """A configuration value is invalid; the message names the flag."""


class MissingWeightsError(CTSRError, FileNotFoundError):
    """A weight file or model folder is not available offline; the message names it and where to put it."""


class DataError(CTSRError, RuntimeError):
    """A data set is missing, empty or unreadable as a whole."""


class NonFiniteError(CTSRError, FloatingPointError):
    """A loss, gradient or weight is NaN or infinite (training stopped, or a file refused)."""


class Interrupted(CTSRError):
    """SIGINT or SIGTERM ended a run after its state was saved; exit status 128 + signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def check(condition: bool, flag: str, message: str) -> None:
    """Raise :class:`ConfigError` naming ``flag`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{flag}: {message}")


def check_finite(value: Any, flag: str) -> None:
    """Refuse a float (or a list/tuple of floats) that is NaN or ±inf, naming ``flag``."""
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{flag}: must be a finite number, got {v}")


def check_finite_values(prefix: str, values: Mapping[str, Any]) -> None:
    """:func:`check_finite` on every entry of ``values`` (e.g. a constructor's arguments), flag ``prefix.key``."""
    for key, value in values.items():
        check_finite(value, f"{prefix}.{key}" if prefix else key)


def non_finite_entries(tree: Any, prefix: str = "") -> Iterable[tuple[str, float]]:
    """(dotted key, value) of every non-finite float in a nested config (dicts, namespaces, lists)."""
    if isinstance(tree, float):
        if not math.isfinite(tree):
            yield prefix, tree
        return
    items = None
    if isinstance(tree, Mapping):
        items = tree.items()
    elif hasattr(tree, "__dict__") and type(tree).__name__ == "Namespace":
        items = vars(tree).items()
    elif isinstance(tree, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(tree))
    for key, value in items or ():
        key = str(key)
        if key.startswith("__"):
            continue
        yield from non_finite_entries(value, f"{prefix}.{key}" if prefix else key)


def describe(err: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` of a library's exception, for wrapping it in a user-facing error."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:limit]}" if lines else type(err).__name__


class OutputError(CTSRError, OSError):
    """A file or folder cannot be written (full disk, read-only folder, no permission); the message names it and
    says that nothing partial was left."""


def shown(path: Any) -> str:
    """A path as text that always prints: undecodable bytes of a file name (kept as surrogates by Python) are
    written as ``\\xNN`` escapes instead of failing on a UTF-8 terminal."""
    import os

    try:
        raw = os.fsencode(path)
    except TypeError:
        return str(path)
    return raw.decode("utf-8", "backslashreplace")


class UsageError(ConfigError):
    """A command line that does not parse (an unknown option, a missing argument): one line, exit status 2."""


def _looks_like_a_dashed_name(arg: str, options: set[str]) -> bool:
    """``-photo.png``: a file name that argparse takes for an option (not one of ``options``, nor a number)."""
    if not arg.startswith("-") or arg in ("-", "--"):
        return False
    head = arg.split("=", 1)[0]
    if any(o == head or (head.startswith("--") and o.startswith(head)) for o in options):
        return False
    try:
        float(arg)
        return False
    except ValueError:
        return True


class ArgumentParser(argparse.ArgumentParser):
    """argparse for ctsr's tools: a command line that does not parse is one :class:`UsageError` line (what is wrong,
    where the options are listed; for a file name that starts with '-', how to write it) instead of the usage block
    and an exit."""

    _seen: list[str] | None = None

    def parse_known_args(self, args=None, namespace=None):
        import sys

        self._seen = [str(a) for a in (sys.argv[1:] if args is None else args)]
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        options = {o for action in self._actions for o in action.option_strings}
        dashed = [a for a in self._seen or [] if _looks_like_a_dashed_name(a, options)]
        hint = ""
        if dashed:
            name = shown(dashed[0])
            hint = (f"; '{name}' starts with '-', which marks an option: write it as ./{name}, or put -- before "
                    f"the file names")
        raise UsageError(f"{message}{hint} (`{self.prog} --help` lists the options)")
