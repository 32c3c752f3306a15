"""The run folder's bookkeeping for ``ctsr`` (no Lightning here): the lock file that keeps a second run out, the
``--ckpt_path last`` resolution with its fallback to the newest readable checkpoint, and the comparison of a resumed
run's settings with the ones it was started with."""
from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ctsr.checkpoints import TMP_MARK, check_writable, load_checkpoint, output_error, sweep_temp_files
from ctsr.errors import ConfigError, CTSRError

LOCK = "run.lock"
# settings a resume may change without --resume_with_changes: how long to train, how it is shown, the guard
RESUMABLE = ("ckpt_path", "resume_with_changes", "nonfinite_patience", "config", "seed_everything","trainer.max_steps",
             "trainer.max_epochs", "trainer.max_time", "trainer.enable_progress_bar")


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


def resolve_last(ckpt_dir: Path, run_dir: Path, warn=None) -> tuple[Path, dict]:
    """``--ckpt_path last``: ``last.ckpt`` if readable, else the newest readable checkpoint (with a warning naming
    both), else an error — never a silent start from step 0."""
    warn = warn or (lambda msg: print(f"ctsr: warning: {msg}", file=sys.stderr))
    files = checkpoint_files(ckpt_dir)
    last = ckpt_dir / "last.ckpt"
    if not files:
        hint = ""
        parent = run_dir.parent
        if not run_dir.is_dir() and parent.is_dir():
            runs = sorted(p.name for p in parent.iterdir() if (p / "checkpoints").is_dir())
            hint = f" (runs with checkpoints in '{parent}': {', '.join(runs[:10]) or 'none'})"
        raise ConfigError(f"--ckpt_path last: no checkpoint in '{ckpt_dir}'{hint}; is the run name right? "
                          f"Start a new run without --ckpt_path")
    order = ([last] if last in files else []) + [p for p in files if p != last]
    reasons = []
    for path in order:
        try:
            ckpt = load_checkpoint(path, "--ckpt_path last")
        except CTSRError as err:
            reasons.append(str(err))
            continue
        if path != last:
            why = reasons[0] if reasons and last in files else f"'{last}' does not exist"
            warn(f"{why}; resuming from the newest readable checkpoint '{path}' (step {ckpt.get('global_step')})")
        return path, ckpt
    raise ConfigError(f"--ckpt_path last: none of the {len(files)} checkpoints in '{ckpt_dir}' is readable "
                      f"({reasons[0]})")


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
