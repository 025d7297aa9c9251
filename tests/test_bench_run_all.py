"""bench/run_all.py: which scripts it runs, and how it assembles docs/benchmarks.md."""

from __future__ import annotations

import pytest

from bench import run_all


def test_benchmark_scripts_are_the_bench_files_except_helpers():
    names = [p.name for p in run_all.benchmark_scripts()]
    assert names == sorted(names) and names
    assert not {"common.py", "run_all.py", "__init__.py"} & set(names)
    first = names[0].removesuffix(".py")
    assert [p.stem for p in run_all.benchmark_scripts([first])] == [first]
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run_all.benchmark_scripts(["no_such_bench"])


def test_from_results_assembles_every_section_in_name_order(tmp_path, monkeypatch):
    results, doc = tmp_path / "results", tmp_path / "docs" / "benchmarks.md"
    results.mkdir()
    (results / "train.md").write_text("## Training\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    (results / "loading.md").write_text("## Loading\n\nfast\n")
    monkeypatch.setattr(run_all, "RESULTS_DIR", results)
    monkeypatch.setattr(run_all, "DOC_PATH", doc)
    monkeypatch.setattr(run_all, "benchmark_scripts",
                        lambda only=None: pytest.fail("--from-results must not run benchmarks"))
    assert run_all.main(["--from-results"]) == 0
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n")
    assert "- Machine: " in text and "- Command: `python bench/run_all.py --from-results`" in text
    assert text.index("## Loading") < text.index("## Training")
    assert "| 1 | 2 |" in text and "fast" in text
