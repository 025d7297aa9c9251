"""bench/side_by_side.py (bench/gpu.py --nanogpt): what it reads from nanoGPT's train.py and
from our metrics log, and how it stops both. The real comparison needs a GPU and a nanoGPT
checkout; here a stand-in train.py prints nanoGPT's log lines."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from bench.common import REPO_ROOT
from bench.side_by_side import RunResult, Shapes, nanogpt_missing, report_lines, run_nanogpt

STAND_IN = textwrap.dedent("""\
    import sys, time
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    assert args["gradient_accumulation_steps"] == "1" and args["dataset"] == "bench"
    exec(open("configurator.py").read())  # nanoGPT reads it from the working directory
    for i in range(int(args["max_iters"]) + 1):
        if i % int(args["log_interval"]) == 0:
            print(f"iter {i}: loss {10 - i / 100:.4f}, time 1.00ms, mfu -100.00%", flush=True)
        time.sleep(0.002)
""")


def test_step_seconds_is_the_time_between_log_lines_from_a_step_on():
    result = RunResult("x", marks=[(0, 0.0), (10, 50.0), (20, 51.0), (30, 52.0)])
    assert result.step_seconds(10) == (52.0 - 50.0) / 20
    assert RunResult("x", marks=[(10, 1.0)]).step_seconds(10) is None


def test_nanogpt_missing_names_the_file(tmp_path):
    assert "train.py" in nanogpt_missing(tmp_path)
    for name in ("train.py", "model.py", "configurator.py"):
        (tmp_path / name).write_text("")
    assert nanogpt_missing(tmp_path) is None


def test_run_nanogpt_reads_its_lines_and_stops_it(tmp_path):
    checkout, work = tmp_path / "nanogpt", tmp_path / "work"
    checkout.mkdir()
    work.mkdir()
    (checkout / "train.py").write_text(STAND_IN)
    (work / "configurator.py").write_text("")
    result = run_nanogpt(checkout, work, Shapes(2, 2, 64, 64, 4), False, "cpu", budget=100_000,
                         steps=40, log_interval=10, timeout=60)
    assert [step for step, _ in result.marks] == [0, 10, 20, 30, 40]  # stopped at 40
    assert result.losses[30] == 9.7
    assert result.step_seconds(10) > 0


def test_report_gives_ratios_and_verdicts():
    rows = [{"mode": "eager", "who": "nanoGPT", "step_s": 0.040, "loss": 3.0, "memory_mib": 900},
            {"mode": "eager", "who": "ours", "step_s": 0.032, "loss": 3.01, "memory_mib": 800}]
    text = "\n".join(report_lines(rows, Shapes(), peak=989e12))
    assert "| eager | ours | 32.0 | 512,000 |" in text and "1.25x" in text
    assert "ours 1.25x nanoGPT's tokens/s (aim >= 1.0x): **met**" in text
    assert "peak memory 800 vs 900 MiB (aim: no more): **met**" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_the_bench_says_why_and_exits_0(tmp_path):
    done = subprocess.run([sys.executable, "bench/gpu.py", "--nanogpt", str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "skipped: no CUDA device" in done.stdout
