"""How fast `ctsr --help` answers: the help commands as subprocesses against `python -c "import torch"`, same run.

Each command runs ``--repeats`` times in turn after one warm-up round (the file cache); prints the median wall time
of each and its ratio to the median of ``import torch`` (what any command that needs torch pays before it starts).
``ctsr fit --help`` is Lightning's CLI: it imports torch, Lightning and the model classes to list their options;
it is timed twice, rendered (an empty ``$CTSR_CACHE``, as the first call after an install or an edit) and served from
the help cache (:mod:`ctsr.cli.help_cache`, every later call).

    .venv/bin/python benchmarks/bench_help.py --repeats 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "ctsr --help": [sys.executable, "-m", "ctsr.cli", "--help"],
    "ctsr upscale --help": [sys.executable, "-m", "ctsr.cli", "upscale", "--help"],
    "ctsr score --help": [sys.executable, "-m", "ctsr.cli", "score", "--help"],
    "ctsr fit --help (rendered)": [sys.executable, "-m", "ctsr.cli", "fit", "--help"],
    "ctsr fit --help (cached)": [sys.executable, "-m", "ctsr.cli", "fit", "--help"],
}


def _wall(argv: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-500:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up round (default 5)")
    p.add_argument("--limit", type=float, default=2.0, help="the target in seconds (default 2)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    kept = tempfile.TemporaryDirectory(prefix="ctsr-bench-help-")  # the cache "(cached)" reads, warm after round 0
    for round_ in range(args.repeats + 1):
        for name, cmd in COMMANDS.items():  # interleaved: a load change hits every command alike
            with tempfile.TemporaryDirectory(prefix="ctsr-bench-help-") as empty:
                cache = kept.name if name.endswith("(cached)") else empty
                t = _wall(cmd, {**os.environ, "CTSR_CACHE": cache, "COLUMNS": "100"})
            if round_:
                times[name].append(t)
    base = statistics.median(times["python -c 'import torch'"])
    print(f"{'command':<30}{'median s':>10}{'/ import torch':>16}  target ≤ {args.limit:g} s")
    for name, ts in times.items():
        med = statistics.median(ts)
        verdict = "" if name.startswith("python") else ("meets" if med <= args.limit else "misses")
        print(f"{name:<30}{med:>10.2f}{med / base:>16.2f}  {verdict}")
    kept.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
