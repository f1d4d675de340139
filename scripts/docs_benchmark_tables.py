"""mkdocs hook: ``<!-- benchmark: NAME -->`` in a page becomes the table of ``benchmarks/results/NAME.json``.

Each benchmark script writes its figures to that JSON file when it runs (``benchmarks/_conditions.py``),
so the tables in the docs are the last measured figures with the conditions they were measured under,
never numbers copied by hand that go stale silently. The file holds::

    {"benchmark": NAME, "command": "python -m benchmarks NAME ...", "started": ISO date,
     "machine": {"cpus": ..., "cpu": ..., "torch": ...},
     "runs": [{"threads": 1, "load_before": [1, 5, 15 min], "<case>": {nested figures}, ...}, ...]}

Every case of every run becomes one row (nested figures flattened into ``a.b`` columns); a run's
list of dicts (``"rows": [...]``) gives one row per item; a top-level ``"rows"`` or ``"results"``
is rendered the same way. A benchmark without a results file yet is shown as "not measured yet".
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
MARKER = re.compile(r"<!--\s*benchmark:\s*([A-Za-z0-9_]+)\s*-->")
RUN_KEYS = ("threads", "load_before", "load_after")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix or "value": value}


def _rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The table rows of one run: one per case (a dict), per item (a list of dicts), plus its scalars."""
    head: dict[str, Any] = {}
    if "threads" in run:
        head["threads"] = run["threads"]
    if run.get("load_before"):
        head["load"] = run["load_before"][0]
    rows, scalars = [], {}
    for key, value in run.items():
        if key in RUN_KEYS:
            continue
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            rows.extend({**head, **_flatten(item)} for item in value)
        elif isinstance(value, dict):
            rows.append({**head, "case": key, **_flatten(value)})
        else:
            scalars[key] = value
    if scalars:
        rows.append({**head, **scalars})
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return " / ".join(_cell(v) for v in value)
    return str(value).replace("|", "\\|")


def render(name: str, results: Path | None = None) -> str:
    """The markdown for benchmark ``name``: its conditions line and its table."""
    path = (results or RESULTS) / f"{name}.json"
    if not path.is_file():
        return f"*Not measured yet: run `python -m benchmarks {name}`.*"
    record = json.loads(path.read_text())
    runs = record.get("runs")
    if runs is None:
        extra = record.get("rows", record.get("results", {}))
        runs = [{"rows": extra}] if isinstance(extra, list) else [extra]
    rows = [row for run in runs for row in _rows(run)]
    lines = []
    conditions = dict(record.get("conditions", {}))
    if record.get("started"):
        conditions["date"] = record["started"][:10]
    machine = record.get("machine", {})
    if machine:
        conditions["machine"] = f"{machine.get('cpus', '?')} CPUs ({machine.get('cpu', '?')})"
        if machine.get("cuda"):
            conditions["GPU"] = machine["cuda"]
    if conditions:
        lines.append(
            "Measured "
            + ", ".join(f"{k}: {_cell(v)}" for k, v in conditions.items())
            + "; load is the 1-minute load average before each run."
        )
        lines.append("")
    if rows:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        lines.append("| " + " | ".join(_cell(c) for c in columns) + " |")  # a name may hold "|" (|dyaw|)
        lines.append("|" + "---|" * len(columns))
        lines.extend("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows)
    command = record.get("command", f"python -m benchmarks {name}")
    lines.append("")
    lines.append(f"Reproduce: `{command}` (writes `benchmarks/results/{name}.json`).")
    return "\n".join(lines)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return MARKER.sub(lambda match: render(match.group(1)), markdown)
