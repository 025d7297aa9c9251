"""Data preparation speed and memory: streaming `tokenize_corpus` against today's single-string
path and against tiktoken's own multithreaded limit.

    python bench/data.py [--mb 200] [--big-mb 1024] [--repeats 3] [--save]

The corpus is generated here (no download) under /tmp: Python's help topics, paragraphs
shuffled differently in every copy, written until it reaches `--mb` MB (GPT-2 BPE, ~4 bytes
per token). Each repeat runs, in turn and each in a fresh Python process:
- before: the path before streaming, one process: read the whole file into one string, hash
  its UTF-8, cut it into 1 MiB chunks, encode each chunk, write the uint16 ids;
- ours: `tokenize_corpus` with one worker per core (read, hash, encode, write, fsync);
- limit: tiktoken's `encode_ordinary_batch` with one thread per core on the very pieces ours
  encodes, already in memory: only the tokenizer's time, nothing read, hashed or written.
CPU time is that of the process and its workers. Peak memory is each process's own peak
(VmHWM); for ours, the largest worker's peak times
the number of workers is added (an upper bound: the workers need not peak together). The big
corpus (`--big-mb`) is prepared once, to show that the peak does not grow with the corpus.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import command_line, machine_info, publish_section, run_isolated, verdict  # noqa: E402

AIM_OF_LIMIT = 0.9
AIM_VS_BEFORE = 1.8
AIM_PEAK_MB = 400
CORPUS_DIR = Path(tempfile.gettempdir()) / "gpt2-bench-data"


def make_corpus(megabytes: int, seed: int = 0) -> Path:
    """A UTF-8 text file of at least `megabytes` MB, made once and kept under /tmp."""
    path = CORPUS_DIR / f"corpus-{megabytes}mb.txt"
    if path.is_file() and path.stat().st_size >= megabytes * 1_000_000:
        return path
    from pydoc_data.topics import topics

    paragraphs = [p for key in sorted(topics) for p in topics[key].split("\n\n") if p.strip()]
    rng = random.Random(seed)
    CORPUS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        while out.tell() < megabytes * 1_000_000:
            rng.shuffle(paragraphs)
            out.write("\n\n".join(paragraphs) + "\n\n")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------- measured in children


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the workers)."""
    import resource

    return sum(usage.ru_utime + usage.ru_stime for usage in (
        resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def _timed(fn) -> tuple[float, object]:
    """(wall seconds, result); the CPU seconds it used go to _LAST_CPU."""
    import time

    global _LAST_CPU
    start, cpu = time.perf_counter(), _cpu_seconds()
    result = fn()
    _LAST_CPU = _cpu_seconds() - cpu
    return time.perf_counter() - start, result


_LAST_CPU = 0.0


def before(path: str, out_dir: str) -> dict:
    """The path before streaming: one string, one process."""
    import hashlib

    import numpy as np

    from utils.data import load_text, split_into_chunks
    from utils.tokenizer import ENDOFTEXT, get_tokenizer

    enc = get_tokenizer("gpt2")

    def run() -> int:
        text = load_text(path)
        hashlib.sha256(text.encode("utf-8")).hexdigest()
        count = 0
        with open(Path(out_dir) / "before.bin", "wb") as out:
            for chunk in split_into_chunks(text, 1 << 20):
                ids = np.asarray(enc.encode(chunk, allowed_special={ENDOFTEXT}), dtype=np.uint16)
                ids.tofile(out)
                count += len(ids)
        return count

    seconds, tokens = _timed(run)
    return {"seconds": seconds, "tokens": tokens, "cpu": _LAST_CPU}


def ours(path: str, out_dir: str, workers: int) -> dict:
    import resource

    from bench.common import peak_rss_mb
    from utils.data import tokenize_corpus

    cache = Path(out_dir) / f"cache-{workers}"
    seconds, corpus = _timed(lambda: tokenize_corpus(path, "gpt2", cache, workers=workers,
                                                     progress=False))
    cpu = _LAST_CPU
    hit_seconds, _ = _timed(lambda: tokenize_corpus(path, "gpt2", cache, workers=workers,
                                                    progress=False))
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {"seconds": seconds, "tokens": len(corpus), "hit_seconds": hit_seconds, "cpu": cpu,
              "main_peak_mb": peak_rss_mb(), "worker_peak_mb": worker_peak, "workers": workers,
              "peak_rss_mb": peak_rss_mb() + workers * worker_peak * (workers > 1)}
    shutil.rmtree(cache)
    return result


def limit(path: str, threads: int) -> dict:
    """tiktoken alone, all threads, on our pieces already decoded in memory."""
    from utils.data.prepare import split_pieces
    from utils.data.sources import read_blocks
    from utils.tokenizer import get_tokenizer

    enc = get_tokenizer("gpt2")
    pieces = [piece.decode("utf-8") for piece in split_pieces(read_blocks(Path(path)))]
    seconds, ids = _timed(lambda: enc.encode_ordinary_batch(pieces, num_threads=threads))
    return {"seconds": seconds, "tokens": sum(map(len, ids)), "cpu": _LAST_CPU}


# ------------------------------------------------------------------------------------ report


def measure(megabytes: int, big_megabytes: int, repeats: int) -> dict:
    import statistics

    from utils.data.prepare import default_workers

    cores = default_workers()
    path = make_corpus(megabytes)
    runs: dict[str, list[dict]] = {"before": [], "ours": [], "ours_1": [], "limit": []}
    with tempfile.TemporaryDirectory(dir=CORPUS_DIR) as out_dir:
        for _ in range(repeats):
            runs["before"].append(run_isolated("bench.data:before", str(path), out_dir))
            runs["ours"].append(run_isolated("bench.data:ours", str(path), out_dir, cores))
            runs["ours_1"].append(run_isolated("bench.data:ours", str(path), out_dir, 1))
            runs["limit"].append(run_isolated("bench.data:limit", str(path), cores))
        big = None
        if big_megabytes:
            big_path = make_corpus(big_megabytes, seed=1)
            big = run_isolated("bench.data:ours", str(big_path), out_dir, cores)
            big["bytes"] = big_path.stat().st_size
    medians = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    cpu = {name: statistics.median(r["cpu"] for r in rs) for name, rs in runs.items()}
    return {"runs": runs, "medians": medians, "cpu": cpu, "bytes": path.stat().st_size, "big": big,
            "cores": cores, "load_average": os.getloadavg()[0]}


def report(result: dict) -> str:
    runs, medians, size = result["runs"], result["medians"], result["bytes"]
    tokens = runs["ours"][0]["tokens"]
    same = all(r["tokens"] == tokens for rs in runs.values() for r in rs)
    vs_before = medians["before"] / medians["ours"]
    of_limit = medians["limit"] / medians["ours"]
    peak = max(r["peak_rss_mb"] for r in runs["ours"])
    big = result["big"]

    cpu = result["cpu"]

    def row(label: str, name: str) -> str:
        seconds = medians[name]
        peak_mb = max(r["peak_rss_mb"] for r in runs[name])
        return (f"| {label} | {seconds:.2f} | {cpu[name]:.1f} | {size / seconds / 1e6:.1f} | "
                f"{tokens / seconds / 1e6:.2f} | {medians['before'] / seconds:.2f}x | "
                f"{medians['limit'] / seconds:.0%} | {peak_mb:.0f} |")

    lines = [
        "## Data preparation (bench/data.py)",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine_info()}",
        "",
        f"A generated {size / 1e6:.0f} MB UTF-8 corpus (Python's help topics, shuffled; "
        f"{tokens:,} GPT-2 tokens). Medians of {len(runs['ours'])} interleaved runs, each in a "
        "fresh process; peak RSS is the largest of the runs (for the worker pool: the main "
        "process plus workers x the largest worker, an upper bound).",
        "",
        "| method | median s | CPU s | MB/s | M tokens/s | vs before | of tiktoken limit | "
        "peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        row("before: one string, one process", "before"),
        row(f"ours: `tokenize_corpus`, {result['cores']} workers", "ours"),
        row("ours: `tokenize_corpus`, workers=1 (in process)", "ours_1"),
        row(f"limit: tiktoken `encode_ordinary_batch`, {result['cores']} threads, "
            "pieces in memory", "limit"),
        "",
        f"Cache hit (second call, same files): "
        f"{1e3 * min(r['hit_seconds'] for r in runs['ours']):.1f} ms, nothing read but the "
        f"file sizes and times. Same number of ids in every run: {'yes' if same else 'NO'}.",
    ]
    if big:
        lines += ["", f"{big['bytes'] / 1e6:.0f} MB corpus ({big['tokens']:,} tokens), "
                      f"{big['workers']} workers, once: {big['seconds']:.1f} s "
                      f"({big['bytes'] / big['seconds'] / 1e6:.1f} MB/s), peak RSS "
                      f"{big['peak_rss_mb']:.0f} MB (main {big['main_peak_mb']:.0f} MB, largest "
                      f"worker {big['worker_peak_mb']:.0f} MB)."]
        peak = max(peak, big["peak_rss_mb"])
    cores = result["cores"]
    lines += [
        "",
        f"The machine was shared with other work (1-minute load average "
        f"{result['load_average']:.1f} on {os.cpu_count()} cores at the end of the run), which "
        "slows every method and the multi-process ones most: a second core is only there when "
        "nobody else wants it. CPU s (this process and its workers, user + system) does not "
        f"depend on that: the worker pool spends {cpu['ours'] / cpu['before']:.2f}x the CPU of "
        f"before (in process: {cpu['ours_1'] / cpu['before']:.2f}x), so on {cores} idle cores "
        f"it would take about {cpu['ours'] / cores:.1f} s, {cores * cpu['before'] / cpu['ours']:.1f}x "
        "before (an estimate from CPU time, not a measurement).",
        "",
        f"Aim: >= {AIM_OF_LIMIT:.0%} of the tiktoken limit: {of_limit:.0%}, "
        f"{verdict(of_limit >= AIM_OF_LIMIT)}. "
        f"Aim: >= {AIM_VS_BEFORE}x before on {result['cores']} cores: {vs_before:.2f}x, "
        f"{verdict(vs_before >= AIM_VS_BEFORE)}. "
        f"Aim: peak RSS <= {AIM_PEAK_MB} MB at any size: {peak:.0f} MB, "
        f"{verdict(peak <= AIM_PEAK_MB)}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="corpus size for the timings")
    parser.add_argument("--big-mb", type=int, default=1024,
                        help="corpus prepared once for the peak memory (0: skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--save", action="store_true", help="also write bench/results/data.md")
    args = parser.parse_args(argv)
    result = measure(args.mb, args.big_mb, args.repeats)
    publish_section("data", report(result), args.save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
