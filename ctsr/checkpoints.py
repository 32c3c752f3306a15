"""Reading and writing weight files safely (no Lightning needed).

Reading — a file never runs code:

- :func:`load_checkpoint`: a ``.ckpt``/``.pt``/``.pth`` file as tensors and plain values only
  (``torch.load(weights_only=True)``): a pickle that would run code (``__reduce__`` payloads) is refused with one
  line naming the file and the object it asked for; an empty, truncated or foreign file is one line too.
- :func:`read_safetensors` / :func:`safetensors_metadata`: a ``.safetensors`` file's tensors and metadata (or the
  metadata alone), one-line errors for random bytes; file names with undecodable bytes work (safetensors' own
  ``safe_open`` refuses them).
- :func:`load_torchscript_state`: the tensors of a TorchScript archive (OpenAI's CLIP ``RN50.pt``, spandrel ``.pt``
  files) read by a restricted unpickler — no ``torch.jit.load``, whose TorchScript can run code.
- :func:`read_weights` / :func:`check_weight_file`: any of the three by file type; the check reads the pickle only
  (tensor data memory-mapped or skipped), so a cache of large files is checked in moments.
- :func:`weights_only_loads`: while a third-party library builds a network (torchvision, lpips, pyiqa, timm), every
  ``torch.load`` it makes goes through :func:`load_checkpoint` and ``torch.jit.load`` is refused.
- :func:`require_finite`: refuses NaN/inf weights, naming the file and the first tensor concerned.

Writing — a reader sees the old file or the new one, never a partial one:

- :func:`atomic_write` (and :func:`atomic_save`, :func:`atomic_write_files`): through ``.<name>.tmp-<pid>`` in the
  target's own folder, fsync, rename. Any failure (a full disk, a kill) removes the temporary file, or leaves it
  for :func:`sweep_temp_files` (the next run removes the temporary files of processes that are gone); an
  ``OSError`` becomes one :class:`OutputError` line naming the path.
- :func:`check_writable`: tries to create a file in a folder before any work starts (permission bits alone do not
  tell: root ignores them).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from ctsr.errors import ConfigError, MissingWeightsError, NonFiniteError, OutputError, describe, shown

TMP_MARK = ".tmp-"  # temporary files: ".<name>.tmp-<pid>", never matched by "*.ckpt"
# Limits on what a weight file may ask of the reader before anything is built (docs/reliability.md): a model file's
# metadata is a few kB; a crafted one is refused before it is parsed or turned into networks.
MAX_METADATA_BYTES = 1_000_000   # all keys and values of a safetensors file's metadata together
MAX_METADATA_DEPTH = 8           # nesting of the JSON values in it (ctsr writes 3 at most)
MAX_HEADER_BYTES = 100_000_000   # a safetensors header (tensor index + metadata): safetensors' own limit


# -- reading: pickles ------------------------------------------------------------------------------------------------
def _code_refused(what: str, path: Any, obj: str) -> ConfigError:
    return ConfigError(f"{what}: '{shown(path)}' holds Python objects beyond tensors and plain values{obj}; ctsr "
                       f"loads weights-only (tensors and plain values) and refuses to run code from a file")


def _weights_only_load(source: Any, path: Any, what: str, mmap: bool = False) -> Any:
    """``torch.load(source, weights_only=True)`` with one-line errors naming ``path``. ``mmap``: tensor data is
    mapped, not read (the pickle, which is what could run code, is read in full); files in torch's legacy format
    cannot be mapped and are read."""
    load = getattr(torch.load, "_ctsr_original", torch.load)  # the real one, also inside weights_only_loads
    try:
        if mmap:
            try:
                return load(source, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
        return load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text or "not an allowed global" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global ([\w.]+)", text)
            raise _code_refused(what, path, f" ({found.group(1)})" if found else "") from None
        raise ConfigError(f"{what}: '{shown(path)}' is not a readable checkpoint ({describe(err)})") from None
    except Exception as err:  # noqa: BLE001 — truncated zip, random bytes, … : one line naming the file
        raise ConfigError(f"{what}: '{shown(path)}' is not a readable checkpoint ({describe(err)})") from None


_SIGNATURES = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
               (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
               (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"7z\xbc\xaf", "a 7-Zip archive"))


def file_kind(head: bytes) -> str | None:
    """What a file that is not a PyTorch checkpoint looks like from its first bytes (None: could be one). torch
    writes zip archives (``PK``) or, in its legacy format, pickles (protocol ≥ 2: ``\\x80``)."""
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return kind
    if len(head) >= 9 and head[8:10] == b'{"':
        return "a safetensors file (give it a .safetensors name)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head[:-4].decode("utf-8", "ignore") if len(head) > 4 else ""
        if not text or len(text) < len(head) // 2:
            return None
    if text and all(c.isprintable() or c in "\n\r\t" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"a text file (it starts with {first!r})"
    return None


def load_checkpoint(path: str | Path, what: str = "checkpoint", mmap: bool = False, any_type: bool = False) -> Any:
    """A checkpoint as a dict of tensors and plain values; code in the file is never run. ``mmap``: map the tensor
    data instead of reading it (a check of a large file); ``any_type``: any weights-only object, not only a dict.
    A file that is no PyTorch file at all (text, an image: told by its first bytes) is named as what it is."""
    path = Path(path).expanduser()
    if not path.is_file():
        if path.exists():
            raise ConfigError(f"{what}: '{shown(path)}' is not a regular file")
        raise MissingWeightsError(f"{what}: '{shown(path)}' not found")
    size = path.stat().st_size
    if size == 0:
        raise ConfigError(f"{what}: '{shown(path)}' is empty (0 bytes: an interrupted save?)")
    try:
        with open(path, "rb") as f:
            kind = file_kind(f.read(64))
    except OSError as err:
        raise ConfigError(f"{what}: '{shown(path)}' cannot be read ({describe(err)})") from None
    if kind is not None:
        hint = ("; a model file is a .ckpt written by `ctsr fit` (runs/<name>/checkpoints/) or a .safetensors by "
                "`ctsr export`") if "model" in what or "ckpt" in what or what == "checkpoint" else ""
        raise ConfigError(f"{what}: '{shown(path)}' is not a PyTorch checkpoint but {kind}{hint}")
    ckpt = _weights_only_load(path, path, what, mmap)
    if not any_type and not isinstance(ckpt, dict):
        raise ConfigError(f"{what}: '{shown(path)}' holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


@contextlib.contextmanager
def weights_only_loads(what: str) -> Iterator[None]:
    """Inside the block, every ``torch.load`` (the one torchvision, torch.hub, lpips, pyiqa and timm call while
    they build a network) reads weights-only through :func:`load_checkpoint`, whatever ``weights_only`` the library
    passes, with its one-line errors (``what`` names the caller); ``torch.jit.load`` is refused (TorchScript can run
    code: ctsr reads such archives with :func:`load_torchscript_state`). The patch is process-wide while it lasts:
    enter it around network construction only."""
    original = getattr(torch.load, "_ctsr_original", torch.load)
    previous_load, previous_jit = torch.load, torch.jit.load

    def load(f, map_location=None, pickle_module=None, *, weights_only=None, mmap=None, **kwargs):
        if isinstance(f, (str, bytes, os.PathLike)):
            return load_checkpoint(os.fsdecode(f), what, any_type=True)
        return _weights_only_load(f, getattr(f, "name", "<stream>"), what)

    def jit_load(f, *args, **kwargs):
        raise ConfigError(f"{what}: '{shown(getattr(f, 'name', f))}' would be loaded as TorchScript, which can run "
                          f"code; ctsr reads weight files as tensors only")

    load._ctsr_original = original  # type: ignore[attr-defined]
    torch.load, torch.jit.load = load, jit_load
    try:
        yield
    finally:
        torch.load, torch.jit.load = previous_load, previous_jit


# -- reading: TorchScript archives -----------------------------------------------------------------------------------
class _ScriptObject:
    """An object of a TorchScript archive as data: its class name and its state, never its code."""

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state


def _identity(value: Any, *args: Any) -> Any:
    return value


# The only globals a TorchScript archive's data.pkl needs for modules of tensors (anything else is refused).
_LIST_BUILDERS = ("build_intlist", "build_floatlist", "build_boollist", "build_doublelist", "build_tensorlist",
                  "build_genericlist", "restore_type_tag")


class _TorchScriptUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], archive: zipfile.ZipFile, prefix: str, data: bool) -> None:
        super().__init__(file)
        self.archive, self.prefix, self.data = archive, prefix, data
        self.classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self.classes:
                self.classes[qualified] = type(name, (_ScriptObject,), {"qualified_name": qualified})
            return self.classes[qualified]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return torch._utils._rebuild_tensor_v2
        if module == "torch" and name.endswith("Storage"):
            return torch.serialization.StorageType(name)
        if (module, name) in (("collections", "OrderedDict"), ("typing", "OrderedDict")):
            return OrderedDict
        if module == "torch.jit._pickle" and name in _LIST_BUILDERS:
            return _identity
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        dtype = storage_type.dtype
        if self.data:
            raw = self.archive.read(f"{self.prefix}/data/{key}")
            storage = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
        else:  # a check: shapes and dtypes only, nothing read
            storage = torch.UntypedStorage(int(numel) * torch._utils._element_size(dtype), device="meta")
        return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)


def _torchscript_prefix(path: Path) -> str | None:
    """The archive's top folder when ``path`` is a TorchScript archive (a zip with ``<top>/constants.pkl`` beside
    ``<top>/data.pkl``), else None."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return None
    for name in names:
        top, _, rest = name.partition("/")
        if rest == "constants.pkl" and f"{top}/data.pkl" in names:
            return top
    return None


def _declared_state(archive: zipfile.ZipFile, prefix: str) -> dict[str, set[str]]:
    """{class name: its parameters and buffers}, as the archive's ``code/`` declares them (``__parameters__``,
    ``__buffers__``): what ``state_dict()`` holds. Read as text; nothing of it is run."""
    out: dict[str, set[str]] = {}
    code = f"{prefix}/code/"
    for name in archive.namelist():
        if not (name.startswith(code) and name.endswith(".py")):
            continue
        module = name[len(code):-3].replace("/", ".")
        current = None
        for line in archive.read(name).decode("utf-8", "replace").splitlines():
            found = re.match(r"class (\w+)\(", line)
            if found:
                current = f"{module}.{found.group(1)}"
                out.setdefault(current, set())
            elif current and re.match(r"\s+__(parameters|buffers)__ = \[", line):
                out[current].update(re.findall(r'"([^"]*)"', line))
    return out


def load_torchscript_state(path: str | Path, what: str = "weights", data: bool = True) -> dict[str, Tensor]:
    """The state dict of a TorchScript archive (parameters and buffers, named as ``torch.jit.load(path)
    .state_dict()`` names them), read without ``torch.jit.load``: the pickle is read by an unpickler that knows
    TorchScript objects as data, tensors and ordered dicts only, so a file asking for anything else is refused in
    one line. ``data=False``: a check (tensors on the meta device, no tensor data read)."""
    path = Path(path).expanduser()
    prefix = _torchscript_prefix(path)
    if prefix is None:
        raise ConfigError(f"{what}: '{shown(path)}' is not a TorchScript archive")
    try:
        with zipfile.ZipFile(path) as archive:
            with archive.open(f"{prefix}/data.pkl") as f:
                root = _TorchScriptUnpickler(f, archive, prefix, data).load()
            declared = _declared_state(archive, prefix)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise _code_refused(what, path, f" ({found.group(1)})") from None
        raise ConfigError(f"{what}: '{shown(path)}' is not a readable TorchScript archive ({describe(err)})") from None
    except Exception as err:  # noqa: BLE001 — a broken zip or pickle: one line naming the file
        raise ConfigError(f"{what}: '{shown(path)}' is not a readable TorchScript archive ({describe(err)})") from None
    state: dict[str, Tensor] = {}

    def walk(obj: Any, prefix: str) -> None:
        attributes = obj.__dict__.get("state")
        if not isinstance(attributes, dict):
            return
        keep = declared.get(type(obj).qualified_name)
        for key, value in attributes.items():
            if isinstance(value, Tensor) and (keep is None or key in keep):
                state[prefix + key] = value
            elif isinstance(value, _ScriptObject):
                walk(value, f"{prefix}{key}.")

    if not isinstance(root, _ScriptObject):
        raise ConfigError(f"{what}: '{shown(path)}' holds no TorchScript module")
    walk(root, "")
    return state


# -- reading: safetensors --------------------------------------------------------------------------------------------
def _utf8(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _header(head: bytes, size: int) -> dict:
    """The JSON header of a safetensors file from its first bytes (8-byte length, then the JSON)."""
    if len(head) < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(head[:8], "little")
    if n < 2 or 8 + n > size:
        raise ValueError(f"header length {n} does not fit a file of {size} bytes")
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"header of {n} bytes, above the {MAX_HEADER_BYTES} bytes a safetensors file may have")
    if len(head) < 8 + n:
        raise ValueError("truncated header")
    try:
        header = json.loads(head[8:8 + n])
    except RecursionError:
        raise ValueError("the header's JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("__metadata__ is not a mapping of strings")
    return header


def safetensors_metadata(path: str | Path, what: str = "model file") -> dict[str, str]:
    """The metadata of a safetensors file (its header only is read); one line naming the file when it is not one."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"{what}: '{shown(path)}' not found")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            head += f.read(min(n, MAX_HEADER_BYTES))
        meta = dict(_header(head, path.stat().st_size).get("__metadata__") or {})
    except (OSError, ValueError) as err:
        raise ConfigError(f"{what}: '{shown(path)}' is not a safetensors file (header unreadable: "
                          f"{describe(err)})") from None
    check_metadata_size(meta, path, what)
    return meta


def check_metadata_size(meta: Mapping[str, str], path: str | Path, what: str = "model file") -> None:
    """Refuse metadata above :data:`MAX_METADATA_BYTES` (all keys and values, UTF-8), naming the file and the
    largest entry: before any of it is parsed."""
    sizes = {k: len(k.encode("utf-8", "surrogatepass")) + len(str(v).encode("utf-8", "surrogatepass"))
             for k, v in meta.items()}
    total = sum(sizes.values())
    if total > MAX_METADATA_BYTES:
        largest = max(sizes, key=sizes.get)
        raise ConfigError(f"{what}: '{shown(path)}' holds {total} bytes of metadata (entry '{shown(largest)}': "
                          f"{sizes[largest]}), above the {MAX_METADATA_BYTES} bytes ctsr reads; a file written by "
                          f"`ctsr export` holds a few kB — this one is damaged or crafted")


def read_safetensors(path: str | Path, what: str = "model file") -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; random bytes or a broken header are one line naming the file.
    A name safetensors cannot pass to its reader (undecodable bytes) is read into memory and parsed from there."""
    from safetensors import safe_open
    from safetensors.torch import load as load_bytes

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"{what}: '{shown(path)}' not found")
    try:
        if _utf8(path):
            with safe_open(str(path), "pt") as f:
                meta = dict(f.metadata() or {})
                check_metadata_size(meta, path, what)  # before any tensor is read
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        else:
            raw = path.read_bytes()
            meta = dict(_header(raw, len(raw)).get("__metadata__") or {})
            check_metadata_size(meta, path, what)
            tensors = load_bytes(raw)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 — SafetensorError, OSError, …
        raise ConfigError(f"{what}: '{shown(path)}' is not a readable safetensors file ({describe(err)})") from None
    return tensors, meta


def read_weights(path: str | Path, what: str = "weights", data: bool = True) -> dict:
    """A weight file's state dict by its type: ``.safetensors``, a TorchScript archive, else a weights-only pickle
    (:func:`load_checkpoint`). ``data=False``: only check that it reads as tensors (returns {})."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"{what}: '{shown(path)}' not found")
    if path.suffix.lower() == ".safetensors":
        if not data:
            safetensors_metadata(path, what)
            return {}
        return read_safetensors(path, what)[0]
    if _torchscript_prefix(path) is not None:
        return load_torchscript_state(path, what, data)
    state = load_checkpoint(path, what, mmap=not data)
    return state if data else {}


def check_weight_file(path: str | Path, what: str = "weights") -> None:
    """Refuse, in one line naming it, a weight file that does not read as tensors (a pickle that would run code,
    a broken file) — before any library reads it. Tensor data is not read."""
    read_weights(path, what, data=False)


def json_meta(meta: Mapping[str, str], key: str, path: str | Path, default: Any = None) -> Any:
    """One JSON entry of safetensors metadata, or a one-line error naming the file and the key."""
    if key not in meta:
        if default is not None:
            return default
        raise ConfigError(f"'{shown(path)}': metadata lacks '{key}' (not written by `ctsr export`?)")
    deep = False
    try:
        value = json.loads(meta[key])
    except RecursionError:
        deep = True
    except (TypeError, ValueError) as err:
        raise ConfigError(f"'{shown(path)}': metadata '{key}' is not valid JSON ({describe(err)})") from None
    if deep or json_depth(value) > MAX_METADATA_DEPTH:
        raise ConfigError(f"'{shown(path)}': metadata '{key}' is nested more than {MAX_METADATA_DEPTH} levels deep "
                          f"(ctsr writes at most 3): the file is damaged or crafted")
    if not isinstance(value, dict):
        raise ConfigError(f"'{shown(path)}': metadata '{key}' must be a JSON object, got {type(value).__name__}")
    return value


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar: 0, ``{"a": 1}``: 1), without recursion."""
    depth, level = 0, [(value, 0)]
    while level:
        item, d = level.pop()
        if isinstance(item, (dict, list)):
            depth = max(depth, d + 1)
            level.extend((v, d + 1) for v in (item.values() if isinstance(item, dict) else item))
    return depth


def first_non_finite(tensors: Mapping[str, Any]) -> tuple[str, int] | None:
    """(key, number of non-finite entries) of the first floating tensor holding NaN/inf, or None."""
    for key, value in tensors.items():
        if isinstance(value, Tensor) and value.is_floating_point():
            if value.dtype not in WEIGHT_DTYPES:  # float8 has no isfinite of its own
                value = value.float()
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                return key, bad
    return None


WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def require_float_weights(tensors: Mapping[str, Any], path: str | Path, what: str = "weights") -> None:
    """CTSR's own weights (LoRA, ``conv_in``) are real floating-point tensors: an integer, boolean, complex or
    float8 tensor in their place (which a copy would silently convert) is refused naming it; then finiteness."""
    for key, value in tensors.items():
        if not isinstance(value, Tensor) or value.dtype not in WEIGHT_DTYPES:
            kind = str(value.dtype).removeprefix("torch.") if isinstance(value, Tensor) else type(value).__name__
            raise ConfigError(f"'{shown(path)}': {what}: '{shown(key)[:120]}' is {kind}, not a float16/bfloat16/"
                              f"float32 tensor: the file is damaged or crafted")
    require_finite(tensors, path, what)


def require_finite(tensors: Mapping[str, Any], path: str | Path, what: str = "weights") -> None:
    """Refuse NaN/inf weights, naming the file and the first tensor concerned."""
    found = first_non_finite(tensors)
    if found is not None:
        key, bad = found
        raise NonFiniteError(f"'{shown(path)}': {what} hold non-finite values ({bad} NaN/inf in '{key}'); "
                             f"the file is refused (a diverged run? resume from an earlier checkpoint)")


# -- writing ---------------------------------------------------------------------------------------------------------
_REASONS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted", errno.EFBIG: "file too large for the file system"}
_IN_FLIGHT: set[Path] = set()  # temporary files this process is writing now (never swept)


def output_error(what: str, path: Any, err: OSError) -> OutputError:
    """One line for an ``OSError`` met while writing ``path``: the path, the reason, what was kept."""
    reason = _REASONS.get(err.errno or 0, err.strerror or describe(err))
    code = f" ({errno.errorcode[err.errno]})" if err.errno in errno.errorcode else ""
    error = OutputError(f"{what}: cannot write '{shown(path)}': {reason}{code}; nothing partial was left and "
                        f"the files written before are intact")
    error.errno = err.errno  # callers tell a full disk from a one-off failure
    return error


def _os_error(err: BaseException) -> OSError | None:
    """The ``OSError`` behind ``err``: itself, or one in its chain (``torch.save`` reports a failed write as a
    RuntimeError whose context is the OSError)."""
    seen = 0
    while err is not None and seen < 20:
        if isinstance(err, OSError):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def _open_temp(path: Path) -> IO[bytes]:
    """Create a temporary file for writing. Every atomic write and :func:`check_writable` go through this one call
    (tests replace it to simulate a full disk or a read-only folder, which root's permissions cannot)."""
    return open(path, "xb")


def temp_path(path: str | Path) -> Path:
    """``.<name>.tmp-<pid>`` beside ``path``: this process's temporary file for it."""
    path = Path(path)
    return path.parent / f".{path.name}{TMP_MARK}{os.getpid()}"


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


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


def _mkdir(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(what, folder, err) from None


def _start_temp(path: Path) -> tuple[Path, IO[bytes]]:
    tmp = temp_path(path)
    _remove(tmp)  # a leftover of a killed process that had this PID before (containers reuse PIDs)
    _IN_FLIGHT.add(tmp)
    try:
        return tmp, _open_temp(tmp)
    except BaseException:
        _IN_FLIGHT.discard(tmp)
        raise


def _end_temp(tmp: Path) -> None:
    _IN_FLIGHT.discard(tmp)
    _remove(tmp)


@contextlib.contextmanager
def atomic_write(path: str | Path, what: str = "file") -> Iterator[IO[bytes]]:
    """Write ``path`` through ``.<name>.tmp-<pid>`` in its own folder: the block writes to the yielded binary
    file; then fsync and rename. A failure removes the temporary file and leaves ``path`` as it was; an ``OSError``
    (full disk, read-only folder) becomes one :class:`OutputError` line naming ``path``."""
    path = Path(path)
    _mkdir(path.parent, what)
    tmp = None
    try:
        try:
            tmp, f = _start_temp(path)
            with f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except Exception as err:  # noqa: BLE001 — an OSError, or a library's error wrapping one
            cause = _os_error(err)
            if cause is None or isinstance(err, OutputError):
                raise
            raise output_error(what, path, cause) from None
        fsync_dir(path.parent)
    finally:
        if tmp is not None:
            _end_temp(tmp)


def atomic_write_files(files: Sequence[tuple[str | Path, bytes]], what: str = "file") -> list[Path]:
    """Several files as one change: every temporary file is written (and fsynced) before the first rename, so a
    full disk leaves all of them as they were."""
    done: list[tuple[Path, Path]] = []
    current: Path | None = None
    try:
        try:
            for path, data in files:
                current = Path(path)
                _mkdir(current.parent, what)
                tmp, f = _start_temp(current)
                done.append((tmp, current))
                with f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            for tmp, path in done:
                current = path
                os.replace(tmp, path)
        except Exception as err:  # noqa: BLE001
            cause = _os_error(err)
            if cause is None or isinstance(err, OutputError):
                raise
            raise output_error(what, current, cause) from None
        for folder in dict.fromkeys(path.parent for _, path in done):
            fsync_dir(folder)
    finally:
        for tmp, _ in done:
            _end_temp(tmp)
    return [path for _, path in done]


def atomic_save(obj: Any, path: str | Path, what: str = "checkpoint") -> Path:
    """``torch.save(obj, path)`` through ``.<name>.tmp-<pid>`` in the same folder, fsync, then rename."""
    with atomic_write(path, what) as f:
        torch.save(obj, f)
    return Path(path)


def check_writable(folder: str | Path, what: str) -> None:
    """Refuse, in one line, a folder (or, if it does not exist yet, its nearest existing parent) in which no file
    can be created: tried by creating and removing a temporary file, before any work starts."""
    folder = Path(folder)
    probe_dir = folder
    while not probe_dir.exists() and probe_dir.parent != probe_dir:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise OutputError(f"{what}: cannot write into '{shown(folder)}': '{shown(probe_dir)}' is not a folder")
    probe = None
    try:
        probe, f = _start_temp(probe_dir / "ctsr-write-check")
        with f:
            f.write(b"\0")
    except OSError as err:
        raise output_error(what, folder, err) from None
    finally:
        if probe is not None:
            _end_temp(probe)


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)" + re.escape(TMP_MARK) + r"(?P<pid>\d+)(?:\.safetensors)?$")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's process
        return True
    return True


def sweep_temp_files(folder: str | Path, names: Iterable[str] | None = None, recursive: bool = False,
                     legacy: Sequence[re.Pattern] = ()) -> list[Path]:
    """Remove the temporary files ``.<name>.tmp-<pid>`` that killed processes left in ``folder`` (their process is
    gone, or it is this one and the file is not being written); ``names``: only those of these target names;
    ``legacy``: also files whose name matches one of these patterns (earlier versions' temporary names).
    Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    wanted = None if names is None else set(names)
    removed = []
    for p in (folder.rglob(".*") if recursive else folder.glob(".*")):
        m = _TEMP_NAME.match(p.name)
        if m is not None:
            if wanted is not None and m["name"] not in wanted:
                continue
            pid = int(m["pid"])
            if p in _IN_FLIGHT or (pid != os.getpid() and _process_alive(pid)):
                continue
        elif not any(pattern.match(p.name) for pattern in legacy):
            continue
        if p.is_file() and not p.is_symlink():
            _remove(p)
            removed.append(p)
    return removed
