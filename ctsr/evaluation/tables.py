"""The metric tables every evaluation writes: ``metrics.md`` (for people), ``metrics.csv`` (for scripts) and
``metrics.json`` (the record that lets a later ``ctsr score --name …`` add a row under the same protocol).

One row per (method, t): a t-sweep of CTSR gives rows ("CTSR", 0.0), ("CTSR", 0.2), …; a scored folder of another
method gives ("OSEDiff", None). A table of one method with a t on every row keeps the plain layout (first column
``t``), as ablation runners read it; a table with several methods gets the columns ``method, t`` first. Metric
columns come in the paper's order (:data:`ctsr.metrics.METRIC_NAMES`), then the extra columns (distance to the
fidelity teacher's image), named as in the run tables; a value a row does not have is left empty (``–`` in the md).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ctsr.checkpoints import atomic_write_files, sweep_temp_files
from ctsr.choices import SWEEP_METHOD
from ctsr.errors import ConfigError, describe
from ctsr.metrics import METRIC_NAMES, column_name, protocol_line

# Columns beside the metrics: PSNR and LPIPS of SR(t) against the fidelity teacher's own image x_f = T_f(x_LR).
EXTRA_COLUMNS = {"d_fidelity_psnr": "PSNR to x_f", "d_fidelity_lpips": "LPIPS to x_f"}
_TWO_DECIMALS = ("psnr", "fid", "musiq", "d_fidelity_psnr")


@dataclass
class Row:
    method: str
    t: float | None
    values: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, float | None]:
        return self.method, None if self.t is None else round(float(self.t), 6)


@dataclass
class Table:
    """Rows plus the settings they were scored with (``settings``: color_space, crop_border, weights, quantize)."""

    rows: list[Row]
    settings: dict
    title: str = "metrics"
    notes: list[str] = field(default_factory=list)
    protocol_text: str | None = None  # a given protocol line instead of the one the settings make
    split: str | None = None  # what the rows were measured on: 'val', 'test', or a name given to `ctsr score`
    model: dict | None = None  # the model the sweep rows measured: {"run", "path", "stage", "step", "file"}

    def columns(self) -> list[str]:
        present = {n for r in self.rows for n in r.values}
        ordered = [n for n in (*METRIC_NAMES, *EXTRA_COLUMNS) if n in present]
        return ordered + sorted(present - set(ordered))

    def protocol(self) -> str:
        if self.protocol_text is not None:
            return self.protocol_text
        metrics = [n for n in self.columns() if n in METRIC_NAMES]
        return protocol_line(metrics, **self.settings)

    def plain(self) -> bool:
        """One method, a t on every row: the layout of a t-sweep (first column ``t``)."""
        return len({r.method for r in self.rows}) <= 1 and all(r.t is not None for r in self.rows)

    def merge(self, other: Table) -> Table:
        """``other``'s rows added, replacing rows of the same (method, t); the settings must agree."""
        if other.settings != self.settings:
            raise ConfigError(
                f"the table was scored with {self.settings}, the new rows with {other.settings}: rows of different "
                f"protocols do not go in one table (write to another --out folder)"
            )
        new = {r.key for r in other.rows}
        rows = [r for r in self.rows if r.key not in new] + list(other.rows)
        notes = list(dict.fromkeys(self.notes + other.notes))
        return Table(_ordered(rows), self.settings, other.title, notes, other.protocol_text or self.protocol_text,
                     other.split or self.split, other.model or self.model)


def _ordered(rows: list[Row]) -> list[Row]:
    """Methods in order of first appearance (CTSR's sweep first), each method's rows by t."""
    methods = list(dict.fromkeys(r.method for r in rows))
    if SWEEP_METHOD in methods:
        methods.insert(0, methods.pop(methods.index(SWEEP_METHOD)))
    return sorted(rows, key=lambda r: (methods.index(r.method), -1.0 if r.t is None else r.t))


def _fmt(name: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if name in _TWO_DECIMALS else f"{value:.4f}"


def _header(name: str) -> str:
    return EXTRA_COLUMNS.get(name) or column_name(name)


def write_table(folder: str | Path, table: Table, stem: str = "metrics") -> list[Path]:
    """``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` in ``folder`` (each written atomically)."""
    folder = Path(folder)
    names, plain = table.columns(), table.plain()
    lead = ["t"] if plain else ["method", "t"]

    def label(r: Row) -> list[str]:
        t = "" if r.t is None else f"{r.t:g}"
        return [t] if plain else [r.method, t]

    lines = [",".join(lead + names)]
    for r in table.rows:
        lines.append(",".join(label(r) + ["" if r.values.get(n) is None else f"{r.values[n]:.6g}" for n in names]))
    md = [f"# {table.title}", "", f"Protocol: {table.protocol()}", ""]
    md += [f"{note}" for note in table.notes] + ([""] if table.notes else [])
    md += ["| " + " | ".join(lead + [_header(n) for n in names]) + " |", "|---" * (len(lead) + len(names)) + "|"]
    for r in table.rows:
        md.append("| " + " | ".join(label(r) + [_fmt(n, r.values.get(n)) for n in names]) + " |")
    record = {"title": table.title, "settings": table.settings, "notes": table.notes, "protocol": table.protocol(),
              "split": table.split, "model": table.model,
              "rows": [{"method": r.method, "t": r.t, "values": r.values} for r in table.rows]}
    paths = [folder / f"{stem}.{ext}" for ext in ("csv", "md", "json")]
    texts = ("\n".join(lines) + "\n", "\n".join(md) + "\n", json.dumps(record, indent=1) + "\n")
    sweep_temp_files(folder, [p.name for p in paths], legacy=[_legacy_temp(p.name) for p in paths])
    # the three as one change: every temporary file is written before the first rename (a full disk leaves the
    # previous table whole), each through `.<name>.tmp-<pid>`, removed on failure
    atomic_write_files([(p, t.encode("utf-8", "backslashreplace")) for p, t in zip(paths, texts)], "metrics table")
    return paths


def _legacy_temp(name: str) -> re.Pattern:
    """The temporary names of tables written by earlier versions (``tempfile.mkstemp(prefix=".<name>.")``)."""
    return re.compile(r"^\." + re.escape(name) + r"\.[a-z0-9_]{8}$")


def _text(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a name, got {type(value).__name__}")
    return value


def _finite(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"expected a number for t, got {value!r}"[:80])
    return float(value)


def read_table(folder: str | Path, stem: str = "metrics") -> Table | None:
    """The table in ``folder`` (from its ``.json`` record), or None when there is none."""
    path = Path(folder) / f"{stem}.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        rows = [Row(_text(r["method"]), None if r["t"] is None else _finite(r["t"]),
                    {_text(k): (None if v is None else float(v)) for k, v in r["values"].items()})
                for r in record["rows"]]
        settings = dict(record["settings"])
        text = None if settings else record.get("protocol")  # a table written with a given protocol line
        model = record.get("model")
        return Table(rows, settings, record.get("title", "metrics"), list(record.get("notes", [])), text,
                     record.get("split"), model if isinstance(model, dict) else None)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise ConfigError(f"'{path}' is not a metrics record written by ctsr ({describe(err)}); move it away") from None
