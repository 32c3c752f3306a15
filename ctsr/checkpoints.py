"""Reading and writing weight files safely (no Lightning needed).

- :func:`load_checkpoint`: a ``.ckpt``/``.pt``/``.pth`` file as tensors and plain values only
  (``torch.load(weights_only=True)``): a pickle that would run code (``__reduce__`` payloads) is refused with one
  line naming the file and the object it asked for; an empty, truncated or foreign file is one line too.
- :func:`read_safetensors`: a ``.safetensors`` file's tensors and metadata, with one-line errors for random bytes.
- :func:`require_finite`: refuses NaN/inf weights, naming the file and the first tensor concerned.
- :func:`atomic_save`: ``torch.save`` through a temporary file in the target's own folder, fsync, rename — a reader
  (or a resume after a kill) sees the old file or the new one, never a partial one.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ctsr.errors import ConfigError, MissingWeightsError, NonFiniteError, describe

TMP_MARK = ".tmp-"  # temporary files: ".<name>.tmp-<pid>", never matched by "*.ckpt"


def load_checkpoint(path: str | Path, what: str = "checkpoint", mmap: bool = False) -> dict:
    """A checkpoint as a dict of tensors and plain values; code in the file is never run. ``mmap``: the tensors are
    mapped, not read (for a look at the plain values, e.g. ``global_step``, of large files)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"{what}: '{path}' not found")
    size = path.stat().st_size
    if size == 0:
        raise ConfigError(f"{what}: '{path}' is empty (0 bytes: an interrupted save?)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text or "not an allowed global" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global ([\w.]+)", text)
            obj = f" ({found.group(1)})" if found else ""
            raise ConfigError(f"{what}: '{path}' holds Python objects beyond tensors and plain values{obj}; "
                              f"ctsr loads tensors only and refuses to run code from a file") from None
        raise ConfigError(f"{what}: '{path}' is not a readable checkpoint ({describe(err)})") from None
    except Exception as err:  # noqa: BLE001 — truncated zip, random bytes, … : one line naming the file
        raise ConfigError(f"{what}: '{path}' is not a readable checkpoint ({describe(err)})") from None
    if not isinstance(ckpt, dict):
        raise ConfigError(f"{what}: '{path}' holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


def read_safetensors(path: str | Path, what: str = "model file") -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; random bytes or a broken header are one line naming the file."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"{what}: '{path}' not found")
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as err:  # noqa: BLE001 — SafetensorError, OSError, …
        raise ConfigError(f"{what}: '{path}' is not a readable safetensors file ({describe(err)})") from None
    return tensors, meta


def json_meta(meta: Mapping[str, str], key: str, path: str | Path, default: Any = None) -> Any:
    """One JSON entry of safetensors metadata, or a one-line error naming the file and the key."""
    if key not in meta:
        if default is not None:
            return default
        raise ConfigError(f"'{path}': metadata lacks '{key}' (not written by `ctsr export`?)")
    try:
        value = json.loads(meta[key])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"'{path}': metadata '{key}' is not valid JSON ({describe(err)})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"'{path}': metadata '{key}' must be a JSON object, got {type(value).__name__}")
    return value


def first_non_finite(tensors: Mapping[str, Any]) -> tuple[str, int] | None:
    """(key, number of non-finite entries) of the first floating tensor holding NaN/inf, or None."""
    for key, value in tensors.items():
        if isinstance(value, Tensor) and value.is_floating_point():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                return key, bad
    return None


def require_finite(tensors: Mapping[str, Any], path: str | Path, what: str = "weights") -> None:
    """Refuse NaN/inf weights, naming the file and the first tensor concerned."""
    found = first_non_finite(tensors)
    if found is not None:
        key, bad = found
        raise NonFiniteError(f"'{path}': {what} hold non-finite values ({bad} NaN/inf in '{key}'); "
                             f"the file is refused (a diverged run? resume from an earlier checkpoint)")


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` through ``.<name>.tmp-<pid>`` in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path
