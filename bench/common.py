"""Small measuring helpers shared by the `bench/` scripts.

Timings are medians of several runs (one slow run caused by a busy machine does not move a
median); memory is the peak resident set size of a process that did nothing else, which is
why `run_isolated` starts a fresh Python for each measurement.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1
                ) -> tuple[float, list[float]]:
    """Median wall-clock seconds of `fn()` over `repeats` runs, after `warmup` unmeasured runs."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def interleaved_median_times(fns: dict[str, Callable[[], Any]], repeats: int = 5,
                             warmup: int = 1) -> dict[str, tuple[float, list[float]]]:
    """`median_time` for several functions, run in turn within each repeat.

    On a shared machine the load drifts over minutes; alternating the contenders spreads
    that drift over all of them instead of penalising whichever happened to run last.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), t) for name, t in times.items()}


def current_rss_mb() -> float:
    """This process's resident memory now, in MB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    """This process's own peak resident memory in MB: VmHWM on Linux (getrusage's ru_maxrss
    is not used there: it starts from the parent's peak at fork, which would hide a child
    smaller than its parent), ru_maxrss elsewhere (macOS reports it in bytes)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# The child imports the target, calls it with the JSON-decoded arguments, adds its own peak
# RSS and writes the JSON result to a file (stdout stays free for progress bars and prints).
_CHILD = """
import importlib, json, sys
sys.path.insert(0, {root!r})
from bench.common import peak_rss_mb
args = json.loads({args!r})
target = {target!r}
if ":" in target and "\\n" not in target:
    module_name, function_name = target.split(":", 1)
    result = getattr(importlib.import_module(module_name), function_name)(*args)
else:
    namespace = {{"args": args}}
    exec(target, namespace)
    result = namespace["result"]
result = dict(result)
result.setdefault("peak_rss_mb", peak_rss_mb())
with open({out!r}, "w") as handle:
    json.dump(result, handle)
"""


def run_isolated(func_path_or_code: str, *args: Any, timeout: float | None = None) -> dict:
    """Run one measurement in a fresh Python process and return its JSON-able dict result.

    `func_path_or_code` is either `"package.module:function"` (called as `function(*args)`,
    it must return a dict) or Python source that reads `args` and sets a dict `result`.
    The result gains `peak_rss_mb`, the child's own peak memory, unless it set one itself.
    """
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "result.json")
        code = _CHILD.format(root=str(REPO_ROOT), args=json.dumps(list(args)),
                             target=func_path_or_code, out=out)
        completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT,
                                   capture_output=True, text=True, timeout=timeout)
        if completed.returncode != 0:
            raise RuntimeError(
                f"isolated run of {func_path_or_code!r} failed (exit {completed.returncode}):\n"
                f"{completed.stderr[-2000:]}"
            )
        with open(out) as handle:
            return json.load(handle)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> str:
    """One line describing where the numbers came from."""
    import torch

    return (f"{_cpu_model()}, {os.cpu_count()} logical cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")


def command_line() -> str:
    """The command that ran this script, as a reader could retype it."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):  # a script outside the repository keeps its full path
        script = script.relative_to(REPO_ROOT)
    return " ".join(["python", str(script), *sys.argv[1:]])


def verdict(met: bool) -> str:
    """How a section states whether an aim was reached."""
    return "met" if met else "not met"


def save_section(name: str, markdown: str) -> Path:
    """Write a script's markdown section to `bench/results/<name>.md` and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(markdown.rstrip() + "\n")
    return path


def publish_section(name: str, markdown: str, save: bool) -> str:
    """Print a script's markdown section and, with `save`, also write it (`save_section`)."""
    print(markdown)
    if save:
        print(f"\nsaved to {save_section(name, markdown)}")
    return markdown
