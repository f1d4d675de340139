"""mkdocs hook: ``<!-- benchmark: NAME -->`` in a page becomes the table of ``benchmarks/results/NAME.json``.

Each benchmark script writes its figures to that JSON file when it runs, so the tables in the
docs are the last measured figures with the conditions they were measured under, never
numbers copied by hand that go stale silently. The file holds::

    {"benchmark": NAME, "command": "python -m benchmarks NAME ...",
     "conditions": {"date": ..., "machine": ..., "threads": [1, 2], "load": ...},
     "rows": [{"column": value, ...}, ...]}

A benchmark without a results file yet is shown as "not measured yet" with its command.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
MARKER = re.compile(r"<!--\s*benchmark:\s*([A-Za-z0-9_]+)\s*-->")


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
    rows = record.get("rows", [])
    lines = []
    conditions = record.get("conditions", {})
    if conditions:
        lines.append("Measured " + ", ".join(f"{k}: {_cell(v)}" for k, v in conditions.items()) + ".")
        lines.append("")
    if rows:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        lines.extend("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows)
    command = record.get("command", f"python -m benchmarks {name}")
    lines.append("")
    lines.append(f"Reproduce: `{command}` (writes `benchmarks/results/{name}.json`).")
    return "\n".join(lines)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return MARKER.sub(lambda match: render(match.group(1)), markdown)
