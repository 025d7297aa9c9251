"""Run the command line as a user does (a real subprocess) and check its one-line errors."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# How the command line can start: `python -m utils`, or what a console-script shim (or any
# program) does, import `main` from `utils.__main__` and exit with its return value.
LAUNCHERS = {"python -m utils": ["-m", "utils"],
             "console script": ["-c", "import sys; from utils.__main__ import main; "
                                      "sys.exit(main())"]}


MEMORY_LIMIT = 4 << 30


def limit_memory() -> None:
    """In a child process: at most 4 GiB of address space, so code that would read or expand
    without end (/dev/zero, 10^9 elements) ends in a MemoryError there instead of starving
    the machine. (CUDA's driver cannot start in that little: such children train and load
    with --device cpu, which never starts it, also on a machine with a GPU.)"""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_cli(*args: object, launcher: str = "python -m utils", timeout: float = 300,
            env: dict[str, str] | None = None, memory_limited: bool = False
            ) -> subprocess.CompletedProcess:
    """`env`: variables set on top of this process's environment; `memory_limited`: the
    child runs under `limit_memory`. A hang fails the test at `timeout` seconds."""
    try:
        return subprocess.run([sys.executable, *LAUNCHERS[launcher], *map(str, args)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **env} if env else None,
                              preexec_fn=limit_memory if memory_limited else None)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`python -m utils {' '.join(map(str, args))}` hung ({timeout} s)")


def assert_one_error_line(result: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit code 2, stderr exactly one line `error: ...` holding `expected` (any case);
    returns that line."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text.lower() in lines[0].lower(), lines[0]
    return lines[0]
