"""The docs' benchmark tables are built from the JSON each benchmark writes (scripts/docs_benchmark_tables.py)."""

import importlib.util
import json
from pathlib import Path

HOOK = Path(__file__).resolve().parents[2] / "scripts" / "docs_benchmark_tables.py"
spec = importlib.util.spec_from_file_location("docs_benchmark_tables", HOOK)
hook = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hook)


def test_table_comes_from_the_results_file(tmp_path: Path) -> None:
    record = {
        "benchmark": "matcher",
        "command": "python -m benchmarks matcher --threads 1 2",
        "conditions": {"threads": [1, 2], "load": 0.5},
        "rows": [{"threads": 1, "ours ms": 12.5, "peer ms": 364.75, "ratio": 29.18}, {"threads": 2, "ratio": 8}],
    }
    (tmp_path / "matcher.json").write_text(json.dumps(record))
    text = hook.render("matcher", tmp_path)
    lines = text.splitlines()
    assert lines[0] == "Measured threads: 1 / 2, load: 0.5."
    assert lines[2] == "| threads | ours ms | peer ms | ratio |"
    assert lines[4] == "| 1 | 12.5 | 364.8 | 29.18 |"
    assert lines[5] == "| 2 |  |  | 8 |"  # a cell a row lacks stays empty
    assert "python -m benchmarks matcher --threads 1 2" in lines[-1]


def test_marker_is_replaced_and_a_missing_file_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hook, "RESULTS", tmp_path)
    page = hook.on_page_markdown("before\n<!-- benchmark: nothing_here -->\nafter")
    assert page == "before\n*Not measured yet: run `python -m benchmarks nothing_here`.*\nafter"
