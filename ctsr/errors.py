"""Errors a user can act on. The CLI prints their message alone (no traceback) and exits with status 2."""
from __future__ import annotations


class CTSRError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ConfigError(CTSRError, ValueError):
    """A configuration value is invalid; the message names the flag."""


class MissingWeightsError(CTSRError, FileNotFoundError):
    """A weight file or model folder is not available offline; the message names it and where to put it."""


class DataError(CTSRError, RuntimeError):
    """A data set is missing, empty or unreadable as a whole."""


def check(condition: bool, flag: str, message: str) -> None:
    """Raise :class:`ConfigError` naming ``flag`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{flag}: {message}")


def describe(err: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` of a library's exception, for wrapping it in a user-facing error."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:limit]}" if lines else type(err).__name__
