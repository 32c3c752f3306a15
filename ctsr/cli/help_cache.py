"""``ctsr fit|validate|test|predict --help`` from a cache: Lightning's help without importing Lightning.

Lightning's CLI builds its help from the Trainer's, the models' and the data modules' signatures, which takes
importing torch and Lightning (about 6 s on 2 cores, ``benchmarks/bench_help.py``). The text only changes when
those signatures, the installed versions or the terminal width change, so the first ``ctsr COMMAND --help`` renders
it as before and keeps a copy in ``$CTSR_CACHE/help`` (default ``~/.cache/ctsr/help``); later ones print the copy.

The copy is named by a key over everything the text depends on: ctsr's source files (path, size, mtime: an edited
editable install renders again), the versions of Python, torch, Lightning and jsonargparse, the interpreter, the
terminal width argparse wraps to, and the environment variables that change argparse's or jsonargparse's output.
Only the exact command line ``ctsr COMMAND --help`` is served (``--config x.yaml fit --help`` shows that config's
values and is always rendered). A cache that cannot be written is skipped without a word: it only saves time.

    python -m ctsr.cli.help_cache     # render all four (``make install`` does), in one process
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
from pathlib import Path

COMMANDS = ("fit", "validate", "test", "predict")  # ctsr.cli.LIGHTNING_COMMANDS (not imported: a cycle)
HELP_FLAGS = ("-h", "--help")
DISTRIBUTIONS = ("torch", "lightning", "jsonargparse")
KEEP = 4  # copies kept per command
ENV_PREFIXES = ("JSONARGPARSE_", "COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "PYTHON_COLORS")


def cached_command(args: list[str]) -> str | None:
    """The Lightning command whose help ``args`` asks for and nothing else (``["fit", "--help"]``), else None."""
    if len(args) == 2 and args[0] in COMMANDS and args[1] in HELP_FLAGS:
        return args[0]
    return None


def _versions() -> list[str]:
    from importlib import metadata

    found = []
    for dist in DISTRIBUTIONS:
        try:
            found.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{dist}=-")
    return found


def help_key(command: str) -> str:
    """A digest of everything the help text of ``command`` depends on (see the module text)."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        digest.update(f"{path.relative_to(package).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    env = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(ENV_PREFIXES))
    width = shutil.get_terminal_size().columns  # what argparse's HelpFormatter wraps to
    for part in [command, sys.version, sys.executable, str(package), f"width={width}", *_versions(), *env]:
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()[:32]


def cache_file(command: str) -> Path:
    from ctsr.weights import ctsr_cache

    return ctsr_cache() / "help" / f"{command}-{help_key(command)}.txt"


def print_cached(command: str) -> bool:
    """Print the cached help of ``command`` to stdout; False when there is no usable copy."""
    try:
        text = cache_file(command).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if not text.startswith("usage:"):  # not a help text (an empty or foreign file): render it again
        return False
    sys.stdout.write(text)
    sys.stdout.flush()
    return True


def _store(command: str, text: str) -> None:
    try:
        target = cache_file(command)
        target.parent.mkdir(parents=True, exist_ok=True)
        # temp file + rename by hand: ctsr.checkpoints' atomic writers import torch, which this module must not
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
        # the newest KEEP copies of each command stay (a few terminal widths); older keys (sources, versions) go
        copies = sorted(target.parent.glob(f"{command}-*.txt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in copies[KEEP:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


class _Tee(io.TextIOBase):
    """stdout that also keeps what is written (the rendered help)."""

    def __init__(self, out) -> None:
        self.out, self.kept = out, io.StringIO()

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self.out.write(text) if self.out is not None else len(text)

    def flush(self) -> None:
        if self.out is not None:
            self.out.flush()

    def isatty(self) -> bool:
        return bool(self.out is not None and self.out.isatty())


def render(command: str, argv: list[str] | None = None, echo: bool = True) -> None:
    """Run ``ctsr COMMAND --help`` (``argv``: the command line, None for ``sys.argv``) through Lightning's CLI, keep
    its text in the cache and end as argparse does (``SystemExit(0)``). ``echo=False``: render without printing."""
    from ctsr.cli import lightning

    real = sys.stdout
    tee = _Tee(real if echo else None)
    sys.stdout = tee
    try:
        lightning.run(argv)
    except SystemExit as exit_:
        if exit_.code in (0, None) and tee.kept.getvalue().startswith("usage:"):
            _store(command, tee.kept.getvalue())
        raise
    finally:
        sys.stdout = real


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ctsr.cli.help_cache", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    from ctsr.quiet import quiet_libraries

    quiet_libraries()
    for command in COMMANDS:
        try:
            render(command, [command, "--help"], echo=False)
        except SystemExit:
            pass
        print(f"{command}: {cache_file(command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
