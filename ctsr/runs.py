"""The run folder's bookkeeping for ``ctsr`` (no Lightning here): the lock file that keeps a second run out, the
``--ckpt_path last`` resolution (the readable checkpoint with the highest recorded step), the run's identity
(``run.json``: a copied folder is refused, a moved one adopted, a fork recorded) and the comparison of a resumed
run's settings with the ones it was started with."""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from ctsr.checkpoints import TMP_MARK, check_writable, fsync_dir, load_checkpoint, output_error, sweep_temp_files
from ctsr.errors import ConfigError, CTSRError, describe

LOCK = "run.lock"
RUN_FILE = "run.json"  # the run's id and home folder: a copied folder is told from a moved one
LAST_NAME = "last.ckpt"
# settings a resume may change without --resume_with_changes: how long to train, how it is shown, the guard
# and where the run lives (a moved or forked run has another name: run.json's id tells the run, not its name)
RESUMABLE = ("ckpt_path", "resume_with_changes", "nonfinite_patience", "fork", "config", "seed_everything",
             "trainer.max_steps", "trainer.max_epochs", "trainer.max_time", "trainer.enable_progress_bar",
             "trainer.logger.init_args.name", "trainer.logger.init_args.save_dir")


# -- lock ------------------------------------------------------------------------------------------------------------
def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), '' elsewhere: tells a reused PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    now = _start_time(pid)
    return not (start and now and now != start)  # same PID, other start time: the PID was reused


class RunLock:
    """``<run>/run.lock`` holding ``PID start-time host``; a lock whose process is gone is stale and taken over."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def acquire(cls, folder: str | Path) -> RunLock:
        folder = Path(folder)
        check_writable(folder, "run folder")  # a read-only or unwritable folder: one line, before any work
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise output_error("run folder", folder, err) from None
        path = folder / LOCK
        me = f"{os.getpid()} {_start_time(os.getpid())} {socket.gethostname()}"
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = path.read_text(errors="replace").split() if path.is_file() else []
                if not holder:  # being written right now, or empty: look again
                    time.sleep(0.05)
                    if path.is_file() and not path.read_text(errors="replace").split():
                        path.unlink(missing_ok=True)
                    continue
                pid = int(holder[0]) if holder[0].isdigit() else -1
                start = holder[1] if len(holder) > 2 else ""
                host = holder[-1] if len(holder) > 2 else socket.gethostname()
                if host != socket.gethostname() or (pid > 0 and _alive(pid, start)):
                    where = f" on {host}" if host != socket.gethostname() else ""
                    raise ConfigError(
                        f"run folder '{folder}' is in use by process {pid}{where} (lock file '{path}'): two runs "
                        f"must not write into one folder. Wait for it to end, or choose another "
                        f"--trainer.logger.init_args.name; if no such process runs, delete the lock file")
                print(f"ctsr: warning: stale lock '{path}' of process {pid}, which is gone: taken over",
                      file=sys.stderr)
                path.unlink(missing_ok=True)
                continue
            except OSError as err:  # read-only, no permission, no space
                raise output_error("run folder", path, err) from None
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(me + "\n")
            except OSError as err:
                path.unlink(missing_ok=True)
                raise output_error("run folder", path, err) from None
            sweep_temp_files(folder, recursive=True)  # temporary files of a run that was killed while saving
            return cls(path)
        raise ConfigError(f"could not take the lock '{path}' (another run keeps starting there?)")

    def release(self) -> None:
        try:
            holder = self.path.read_text().split()
        except OSError:
            return
        if holder and holder[0] == str(os.getpid()):
            self.path.unlink(missing_ok=True)


# -- checkpoints -----------------------------------------------------------------------------------------------------
def checkpoint_files(ckpt_dir: Path) -> list[Path]:
    """``*.ckpt`` of a folder, newest first (by modification time)."""
    if not ckpt_dir.is_dir():
        return []
    files = [p for p in ckpt_dir.glob("*.ckpt") if p.is_file() and TMP_MARK not in p.name]
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)


def checkpoint_step(path: Path, what: str = "checkpoint") -> int:
    """The ``global_step`` recorded in a checkpoint (its tensors mapped, not read); -1 when it records none. A file
    that cannot be read raises the one-line error of :func:`load_checkpoint`."""
    try:
        ckpt = load_checkpoint(path, what, mmap=True)
    except CTSRError:
        ckpt = load_checkpoint(path, what)  # not mappable (an old format?): read it, or fail with its reason
    step = ckpt.get("global_step")
    return step if isinstance(step, int) and not isinstance(step, bool) else -1


def _by_step(files: list[Path], what: str) -> tuple[list[tuple[int, Path]], dict[Path, str]]:
    """(step, path) of the readable files, the highest step first (``last.ckpt`` first among equal steps, then the
    newer file), and the reason each other file is unreadable."""
    steps, reasons = [], {}
    for rank, path in enumerate(files):  # files: newest first
        try:
            steps.append((checkpoint_step(path, what), path.name != LAST_NAME, rank, path))
        except CTSRError as err:
            reasons[path] = str(err)
    steps.sort(key=lambda x: (-x[0], x[1], x[2]))
    return [(step, path) for step, _, _, path in steps], reasons


def resolve_last(ckpt_dir: Path, run_dir: Path, warn=None, what: str = "--ckpt_path last") -> tuple[Path, dict]:
    """``--ckpt_path last``: the readable checkpoint with the highest recorded step (``global_step`` inside the file,
    not its name or time; ``last.ckpt`` among equals), with a warning when that is not ``last.ckpt``; an error when
    none is readable — never a silent start from step 0."""
    warn = warn or (lambda msg: print(f"ctsr: warning: {msg}", file=sys.stderr))
    files = checkpoint_files(ckpt_dir)
    last = ckpt_dir / LAST_NAME
    if not files:
        hint = ""
        parent = run_dir.parent
        if not run_dir.is_dir() and parent.is_dir():
            runs = sorted(p.name for p in parent.iterdir() if (p / "checkpoints").is_dir())
            hint = f" (runs with checkpoints in '{parent}': {', '.join(runs[:10]) or 'none'})"
        raise ConfigError(f"{what}: no checkpoint in '{ckpt_dir}'{hint}; is the run name right? "
                          f"Start a new run without --ckpt_path")
    ordered, reasons = _by_step(files, what)
    last_step = next((step for step, path in ordered if path == last), None)
    for step, path in ordered:
        try:
            ckpt = load_checkpoint(path, what)
        except CTSRError as err:
            reasons[path] = str(err)
            continue
        if path != last:
            if last_step is not None and last_step < step:
                why = f"'{last}' holds step {last_step}, '{path}' step {step}"
            else:
                why = reasons.get(last, f"'{last}' does not exist")
            warn(f"{why}; resuming from the newest readable checkpoint '{path}' (step {ckpt.get('global_step')})")
        return path, ckpt
    first = next(iter(reasons.values()))
    raise ConfigError(f"{what}: none of the {len(files)} checkpoints in '{ckpt_dir}' is readable ({first})")


def run_checkpoint_dir(folder: Path) -> Path | None:
    """The checkpoint folder of a run folder (``<run>/checkpoints`` holding ``*.ckpt``), else None."""
    ckpt_dir = Path(folder) / "checkpoints"
    return ckpt_dir if checkpoint_files(ckpt_dir) else None


def model_source(spec: str | Path, warn=None) -> tuple[str | Path, int | None, str]:
    """What ``ctsr export``/``upscale`` load for ``--ckpt``, and the step it holds: a run folder → its newest readable
    checkpoint by recorded step; a ``.ckpt`` → itself; anything else (``.safetensors``, a CTSR folder, a Hub id) →
    unchanged, step None. The third value is a note for the user (a checkpoint beside a ``last.ckpt`` that holds a
    later step: a folder damaged by a resume before run ids)."""
    path = Path(spec).expanduser()
    if path.is_dir() and (ckpt_dir := run_checkpoint_dir(path)) is not None:
        found, ckpt = resolve_last(ckpt_dir, path, warn, what=f"'{path}'")
        step = ckpt.get("global_step")
        return found, step if isinstance(step, int) else None, f"the newest checkpoint of '{path}'"
    if not (path.is_file() and path.suffix == ".ckpt"):
        return spec, None, ""
    step = checkpoint_step(path, "model file")
    note = ""
    newer = []
    for other in checkpoint_files(path.parent) if path.name == LAST_NAME else []:
        if other.resolve() == path.resolve():
            continue
        try:
            other_step = checkpoint_step(other, "checkpoint")
        except CTSRError:
            continue
        if other_step > step:
            newer.append((other_step, other))
    if newer:
        other_step, other = max(newer, key=lambda x: x[0])
        note = f"note: '{other}' beside it holds step {other_step}"
    return path, step if step >= 0 else None, note


# -- the run's identity ----------------------------------------------------------------------------------------------
def read_run_info(folder: Path, strict: bool = True) -> dict | None:
    """``<run>/run.json`` (``id``, ``path``, ``parent``), None when there is none; unreadable: an error (``strict``)
    or None."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as err:
        if not strict:
            return None
        raise ConfigError(f"'{path}' is not readable ({describe(err)}); it records the run's id — restore it, or "
                          f"delete it to give this folder a new one") from None
    if not isinstance(info, dict) or not isinstance(info.get("id"), str):
        if not strict:
            return None
        raise ConfigError(f"'{path}' records no run id; delete it to give this folder a new one")
    return info


def write_run_info(folder: Path, info: dict) -> Path:
    """``run.json`` written through a temporary file (a reader sees the old one or the new one)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RUN_FILE
    tmp = folder / f".{RUN_FILE}{TMP_MARK}{os.getpid()}"
    try:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, path)
        fsync_dir(folder)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def new_run_info(folder: Path, parent: dict | None = None) -> dict:
    """A new run's identity: a random id and the folder's absolute path (``parent``: the run it was forked from)."""
    info = {"id": uuid.uuid4().hex, "path": str(Path(folder).resolve()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if parent is not None:
        info["parent"] = parent
    return info


def stamp(info: dict) -> dict:
    """What every checkpoint of the run records of it (``ctsr_run``)."""
    return {"id": info["id"], "path": info["path"]}


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _holds_run(folder: Path, run_id: str) -> bool:
    """Whether ``folder`` exists and is the run ``run_id`` (its run.json says so)."""
    info = read_run_info(folder, strict=False) if Path(folder).is_dir() else None
    return info is not None and info["id"] == run_id


def _short(run_id: str) -> str:
    return str(run_id)[:8]


def adopt_run(run_dir: Path, ckpt_path: str | Path, ckpt: dict | None) -> dict:
    """The ``run.json`` a resume of ``run_dir`` from ``ckpt`` continues with, or a one-line error.

    - The folder records another folder as its home, and that folder still exists holding the same run id: this
      folder is a copy — refused (two folders must not continue one run; ``--fork NAME`` makes it a new run).
    - That folder is gone: the run was moved or renamed — the new path is adopted.
    - The checkpoint records another run than the folder: refused (runs are never mixed).
    - No run.json (a run from before run ids): one is made, with the checkpoint's id when it records one."""
    here = Path(run_dir).resolve()
    info = read_run_info(run_dir)
    recorded = ckpt.get("ctsr_run") if isinstance(ckpt, dict) else None
    ckpt_id = recorded.get("id") if isinstance(recorded, dict) and isinstance(recorded.get("id"), str) else None
    fork = "continue it as a new run with --fork NAME"
    if info is None:
        if ckpt_id is None:
            return new_run_info(here)
        origin = Path(str(recorded.get("path", "")))
        if recorded.get("path") and not _same_folder(origin, here) and _holds_run(origin, ckpt_id):
            raise ConfigError(f"--ckpt_path: '{ckpt_path}' belongs to the run in '{origin}' (run id "
                              f"{_short(ckpt_id)}), not to '{run_dir}': resume it there, or {fork}")
        return {**new_run_info(here), "id": ckpt_id}
    if ckpt_id is not None and ckpt_id != info["id"]:
        raise ConfigError(f"--ckpt_path: '{ckpt_path}' belongs to another run (run id {_short(ckpt_id)}, folder "
                          f"'{recorded.get('path')}') than '{run_dir}' (run id {_short(info['id'])}): runs are never "
                          f"mixed. Resume it in its own folder, or {fork}")
    home = Path(str(info.get("path") or here))
    if _same_folder(home, here) or home == here:
        return info if info.get("path") == str(here) else {**info, "path": str(here)}
    if _holds_run(home, info["id"]):
        raise ConfigError(f"'{run_dir}' is a copy of the run in '{home}' (the same run id {_short(info['id'])}): two "
                          f"folders must not continue one run. Resume '{home}', or {fork}")
    return {**info, "path": str(here)}  # moved or renamed: this folder is the run now


def fork_run_info(target: Path, source_dir: Path, ckpt_path: str | Path, ckpt: dict | None) -> dict:
    """A new run continuing ``ckpt`` (of the run in ``source_dir``) in ``target``: a new id, the lineage recorded."""
    recorded = ckpt.get("ctsr_run") if isinstance(ckpt, dict) else None
    source = read_run_info(source_dir, strict=False) or {}
    parent = {"id": (recorded or {}).get("id") or source.get("id"), "path": str(Path(source_dir).resolve()),
              "checkpoint": str(Path(ckpt_path).resolve()),
              "step": ckpt.get("global_step") if isinstance(ckpt, dict) else None}
    if source.get("parent") is not None and source.get("id") == parent["id"]:
        parent["parent"] = source["parent"]
    return new_run_info(target, parent)


# -- settings of a resumed run ---------------------------------------------------------------------------------------
def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    if isinstance(tree, list):
        out = {}
        for i, v in enumerate(tree):
            out.update(flatten(v, f"{prefix}.{i}"))
        return out or {prefix: []}
    return {prefix: tree}


def changed_keys(old: dict, new: dict, allowed: tuple[str, ...] = RESUMABLE) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, apart from ``allowed`` (and their children)."""
    a, b = flatten(old), flatten(new)
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == k or key.startswith(k + ".") for k in allowed):
            continue
        if a.get(key, missing) != b.get(key, missing):
            out.append(key)
    return out


def next_config_name(run_dir: Path, kind: str) -> str:
    """``config.<kind>-N.yaml`` with the first N not taken (kind: resume, validate, test, predict)."""
    n = 1
    while (run_dir / f"config.{kind}-{n}.yaml").exists():
        n += 1
    return f"config.{kind}-{n}.yaml"
