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
        "started": "2026-12-06T07:35:21+00:00",
        "machine": {"cpus": 2, "cpu": "EPYC", "cuda": None},
        "runs": [
            {"threads": 1, "load_before": [0.5, 1, 1], "b16": {"ours": {"ms": 12.5}, "peer": {"ms": 364.75}}},
            {
                "threads": 2,
                "load_before": [0.7, 1, 1],
                "b16": {"ours": {"ms": 10}},
                "ratio": 8,
                "load_after": [1, 1, 1],
            },
        ],
    }
    (tmp_path / "matcher.json").write_text(json.dumps(record))
    lines = hook.render("matcher", tmp_path).splitlines()
    assert lines[0].startswith("Measured date: 2026-12-06, machine: 2 CPUs (EPYC);")
    assert lines[2] == "| threads | load | case | ours.ms | peer.ms | ratio |"
    assert lines[4] == "| 1 | 0.5 | b16 | 12.5 | 364.8 |  |"  # four significant digits; a missing cell stays empty
    assert lines[5] == "| 2 | 0.7 | b16 | 10 |  |  |"
    assert lines[6] == "| 2 | 0.7 |  |  |  | 8 |"  # a run's scalars form their own row
    assert "python -m benchmarks matcher --threads 1 2" in lines[-1]


def test_a_list_of_rows_gives_one_row_per_item(tmp_path: Path) -> None:
    record = {"runs": [{"threads": 1, "rows": [{"family": "detr", "s": 1.5}, {"family": "dino", "s": 2}]}]}
    (tmp_path / "w.json").write_text(json.dumps(record))
    lines = hook.render("w", tmp_path).splitlines()
    assert lines[:4] == ["| threads | family | s |", "|---|---|---|", "| 1 | detr | 1.5 |", "| 1 | dino | 2 |"]


def test_marker_is_replaced_and_a_missing_file_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hook, "RESULTS", tmp_path)
    page = hook.on_page_markdown("before\n<!-- benchmark: nothing_here -->\nafter")
    assert page == "before\n*Not measured yet: run `python -m benchmarks nothing_here`.*\nafter"


def test_a_pipe_in_a_column_name_does_not_split_the_table(tmp_path: Path) -> None:
    # face_processing names its columns after |dyaw| bins: unescaped, the header had more cells than the rows
    record = {"runs": [{"threads": 1, "rows": [{"|dyaw|<0.2": {"accuracy": 0.5}}]}]}
    (tmp_path / "f.json").write_text(json.dumps(record))
    lines = hook.render("f", tmp_path).splitlines()
    assert lines[:3] == ["| threads | \\|dyaw\\|<0.2.accuracy |", "|---|---|", "| 1 | 0.5 |"]
