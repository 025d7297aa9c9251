"""`python -m utils recover --checkpoint-dir DIR`: the checkpoint table, best first."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utils.cli.common import check_output_file, write_output

SETTING_FLAGS = {"checkpoint_dir": "--checkpoint-dir"}  # for library messages


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recover", help="list checkpoints and recover the training metrics",
        description="List the runs in a folder, then one run's checkpoints (best val_loss "
                    "first, then newest) from their sidecars, and summarise its metrics up "
                    "to the last logged step.",
    )
    parser.add_argument("--checkpoint-dir", default="checkpoints",
                        help="folder with checkpoint_*.pt files (default: checkpoints)")
    parser.add_argument("--include-invalid", action="store_true",
                        help="also list unreadable or truncated files, with the reason")
    parser.add_argument("--run", default="latest",
                        help="which run to recover: latest (default) or a run id from the "
                             "runs table")
    parser.add_argument("--metrics-csv", default=None,
                        help="also write the recovered metrics history to this CSV file "
                             "(a new name; an existing file only with --overwrite; default: none)")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --metrics-csv replace an existing file")
    parser.set_defaults(func=run)


def format_checkpoint_table(infos: Sequence[Any]) -> str:
    """One row per checkpoint: epoch, step, train/val loss, LR, time, whether it can resume
    training (no: a weights-only copy), file (a name with a newline is shown escaped, so it
    cannot add a fake row)."""
    from utils.training.engine.recovery import printable_name

    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    header = f"{'epoch':>5} {'step':>8} {'train loss':>10} {'val loss':>10} {'LR':>9}  " \
             f"{'time':<19}  {'resume':<6}  file"
    lines = [header, "-" * len(header)]
    for info in infos:
        when = (info.timestamp or "-")[:19].replace("T", " ")
        row = (f"{number(info.epoch, 'd'):>5} {number(info.global_step, 'd'):>8} "
               f"{number(info.train_loss, '.4f'):>10} {number(info.val_loss, '.4f'):>10} "
               f"{number(info.learning_rate, '.2e'):>9}  {when:<19}  "
               f"{'yes' if getattr(info, 'resumable', True) else 'no':<6}  "
               f"{printable_name(info.filename)}")
        if not getattr(info, "valid", True):
            row += f"  [invalid: {' '.join(str(info.error).split())}]"
        lines.append(row)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.metrics_csv:
        check_output_file(Path(args.metrics_csv), "--metrics-csv", args.overwrite)
    from utils.training.engine.recovery import list_checkpoints, recover_training_results

    results = recover_training_results(args.checkpoint_dir, run=args.run)
    infos = (list_checkpoints(args.checkpoint_dir, include_invalid=True, run=results["run_id"])
             if args.include_invalid else results["checkpoints"])
    runs = results["runs"]
    print(f"{len(runs)} run(s) in {args.checkpoint_dir}, most recent first:\n")
    print(runs.to_string(index=False))
    print(f"\nrun {results['run_id']}: {len(results['checkpoints'])} checkpoint(s), "
          f"best val_loss first:\n")
    print(format_checkpoint_table(infos))
    best = results["best_val_loss"]
    print(f"\nbest:   {results['checkpoint_path']}"
          + (f" (val loss {best:.4f})" if best is not None else ""))
    print(f"latest: {results['latest_checkpoint_path']} (epoch {results['epoch']}, "
          f"step {results['global_step']})")
    print(f"metrics history: {len(results['metrics'])} evaluation(s) recovered, logged up "
          f"to step {results['last_logged_step']}")
    if args.metrics_csv:
        table = results["metrics"].to_csv(index=False).encode("utf-8")
        write_output(Path(args.metrics_csv), lambda out: out.write(table), "--metrics-csv",
                     args.overwrite)
        print(f"metrics written to {args.metrics_csv}")
    return 0
