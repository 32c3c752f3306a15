"""Poisoned files for the reliability tests: pickles whose loading would run code (imported by test modules; the
tests folder is on sys.path under pytest, and is not a package)."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch


class RunsCode:
    """Unpickling this runs ``exec``: it writes the marker file (what a poisoned checkpoint or cache file would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def crafted_pickle(path: Path, marker: Path, **fields) -> Path:
    """A torch zip file holding ``fields`` and a :class:`RunsCode` (shaped like a checkpoint or a state dict); checked
    to be a real exploit: only a weights-only reader stops it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**fields, "payload": RunsCode(marker)}, path)
    try:
        torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        return path
    raise AssertionError(f"{path} loads under weights_only=True: not a crafted file")
