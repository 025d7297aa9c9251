"""`RunSession`: the life of a run around the training loop, for one `Trainer.fit()`.

The loop says what happened (a step logged, an evaluation, a checkpoint due); the session
does the rest: it holds the run (a lock for this machine, a lease for others sharing the
folder), writes the metrics log, the loggers and the lines or progress bar people watch,
hands checkpoints to the writer, lets Ctrl-C stop at a step boundary, and at the end waits
for the last write, says what exists only on this machine and releases the run. Under
torchrun rank 0 writes; every rank learns when a write failed, so all stop together.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from utils.checkpoint_errors import CheckpointWriteError, RunInUseError
from utils.config import TrainingConfig
from utils.training.engine.checkpoint import (
    fallback_dir_for,
    make_checkpoint_folder,
    timestamp_now,
)
from utils.training.engine.distributed import DistributedContext, cleanup_distributed
from utils.training.engine.loggers import (
    RunLoggers,
    eval_line,
    is_live,
    open_loggers,
    train_line,
)
from utils.training.engine.runs import MetricsLog, RunLease, RunLock
from utils.training.engine.writer import CheckpointWriter, remove_stale_temp_files


class RunSession:
    """One training session of run `run_id` in `config.checkpoint_dir` (rank 0 writes)."""

    def __init__(self, config: TrainingConfig, dist: DistributedContext) -> None:
        self.config = config
        self.dist = dist
        self.writer: CheckpointWriter | None = None
        self.loggers = RunLoggers()  # config.log_to's loggers, open while the loop runs
        self.stop_requested = False  # Ctrl-C: stop at the next step boundary
        self._log: MetricsLog | None = None
        self._lock: RunLock | None = None
        self._lease: RunLease | None = None
        self._print_lines = False  # no progress bar in sight: a line per log interval

    # ---------------------------------------------------------------- holding the run
    def hold(self, run_id: str) -> None:
        """Hold the run's lock (this machine) and lease (other machines sharing the folder)
        until `finish` or `release`; a run trained elsewhere right now is refused."""
        folder = self.config.checkpoint_dir
        if not (folder and self.dist.is_main) or self._lock is not None:
            return
        # The folder exists before it is locked, so the lock names the folder itself
        # (device and inode) however a later process spells its path.
        make_checkpoint_folder(folder)
        lock = RunLock(folder, run_id)
        if not lock.acquire():
            raise RunInUseError(
                f"run {run_id} in {folder} is being trained by "
                "another process right now. Fix: wait for it to finish, stop it, or start a "
                "separate run (resume_from=None) or use another checkpoint folder.")
        lease = RunLease(folder, run_id)
        try:
            lease.acquire()
        except RunInUseError:
            lock.release()
            raise
        self._lock, self._lease = lock, lease

    def release(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ---------------------------------------------------------------- opening
    def open_writer(self, run_id: str) -> None:
        """The checkpoint writer and the metrics log (rank 0, with a checkpoint folder),
        after removing unfinished writes that an earlier process left."""
        config = self.config
        if not config.checkpoint_dir or not self.dist.is_main:
            return
        removed = remove_stale_temp_files(config.checkpoint_dir)
        if removed:
            print(f"removed {len(removed)} unfinished checkpoint write(s) from an earlier "
                  f"run: {', '.join(p.name for p in removed)}")
        make_checkpoint_folder(config.checkpoint_dir)  # a file there is refused, not replaced
        self._log = MetricsLog(config.checkpoint_dir, run_id,
                               fallback_folder=fallback_dir_for(config.checkpoint_dir))
        self.writer = CheckpointWriter(config.checkpoint_dir, config.keep_last,
                                       config.keep_best, background=config.background_checkpointing,
                                       run_id=run_id, keep_full=config.keep_full,
                                       weights_only_dtype=config.weights_only_dtype)

    def progress_bar(self, step: int, stop_step: int, progress: bool):
        """The bar from `step` to `stop_step`, drawn on rank 0 where someone sees it (tqdm
        writes to stderr: a terminal or a notebook, not a log file). Where no bar is seen
        (stdout a file, or `progress` False) a line is printed per log interval instead."""
        from tqdm.auto import tqdm

        bar_on = progress and self.dist.is_main and is_live(sys.stderr)
        self._print_lines = self.dist.is_main and not (bar_on and is_live(sys.stdout))
        return tqdm(total=stop_step, initial=step, unit="step", desc="training",
                    dynamic_ncols=True, disable=not bar_on)

    def open_loggers(self, run_id: str | None, step: int) -> None:
        if self.dist.is_main:
            self.loggers = open_loggers(self.config, run_id, step)

    @contextlib.contextmanager
    def stop_on_ctrl_c(self) -> Iterator[None]:
        """Ctrl-C (SIGINT) sets `stop_requested`: the loop ends at the next step boundary,
        with a checkpoint of that step; a second Ctrl-C stops at once (no checkpoint).
        Only where it can work: the main thread of one process (under torchrun the ranks
        would have to agree on the step), with a checkpoint folder, and while SIGINT has
        Python's default handler (a program that set its own keeps it)."""
        import signal
        import threading

        self.stop_requested = False
        if not (self.config.checkpoint_dir and not self.dist.enabled
                and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            yield
            return

        def request_stop(signum, frame) -> None:
            self.stop_requested = True  # nothing printed here: a handler may interrupt a print
            signal.signal(signal.SIGINT, signal.default_int_handler)

        signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    # ---------------------------------------------------------------- during the loop
    def prepare_checkpoints(self, state: Callable[[], dict[str, Any]]) -> None:
        """Let the writer allocate its buffers for checkpoints shaped like `state()` (the
        model's and optimizer's state dicts), once the optimizer state exists."""
        if self.writer is not None:
            self.writer.prepare(state())

    def log_train(self, step: int, epoch: int, values: dict[str, Any], stop_step: int,
                  eta: float | None) -> None:
        """A log interval's values: metrics log, loggers, and a line where no bar is seen."""
        if self._log is not None:
            self._log.append({"kind": "train", "step": step, "epoch": epoch, **values,
                              "timestamp": timestamp_now()})
        self.loggers.log(step, values, "train")
        if self._print_lines:
            print(train_line(step, stop_step, values, eta), flush=True)

    def log_eval(self, record: dict[str, Any], stop_step: int, eta: float | None) -> None:
        """An evaluation's record: metrics log, loggers, and a line where no bar is seen."""
        step = record["step"]
        if self._log is not None:
            self._log.append({"kind": "eval", **record})
        self.loggers.log(step, {"val_loss": record["val_loss"],
                                "perplexity": record["perplexity"]}, "eval")
        if self._print_lines:
            print(eval_line(step, stop_step, record, eta), flush=True)

    def save(self, state: Callable[[], dict[str, Any]], is_best: bool) -> None:
        """Rank 0 hands the checkpoint `state()` to the writer (and makes it best_model.pt
        when `is_best`), then makes every logged line durable; all ranks learn whether
        writing failed."""
        error: BaseException | None = None
        if self.writer is not None:
            try:
                self.writer.submit(state(), is_best=is_best)
            except CheckpointWriteError as caught:
                error = caught
            self._tell()
            if self._log is not None:
                self._log.flush()
            self.loggers.flush()  # every step up to this checkpoint's is on disk
        self.fail_together(error)

    def fail_together(self, error: BaseException | None) -> None:
        """Raise on every rank when one had `error` (rank 0's own error there)."""
        if self.dist.any_rank(error is not None):
            if error is not None:
                raise error
            raise CheckpointWriteError("rank 0 could not write a checkpoint; see its error")

    def _tell(self) -> None:
        """Print what the writer thread has to say (fallback writes), above the bar."""
        from tqdm.auto import tqdm

        for notice in self.writer.take_notices():
            tqdm.write(notice)

    # ---------------------------------------------------------------- the end
    @property
    def last_checkpoint(self) -> Path | None:
        return self.writer.last_path if self.writer is not None else None

    def finish(self, failed: bool) -> None:
        """Wait for the last checkpoint write, say what exists only locally, release the
        run, then leave the process group (at once after a failure)."""
        try:
            error = None
            if self.writer is not None:
                try:
                    self.writer.close()
                except CheckpointWriteError as caught:
                    error = caught
                self._tell()
                self._report_local_only()
            if self._log is not None:
                self._log.close()
                self._log = None
            self.loggers.close()
            self.release()
            if not failed:  # after a failure other ranks may not reach these collectives
                self.fail_together(error)
                self.dist.barrier()
            elif error is not None:
                warnings.warn(f"the last checkpoint write also failed: {error}", stacklevel=2)
        finally:
            if failed:
                cleanup_distributed(self.dist)  # other ranks may be gone: do not wait for them

    def _report_local_only(self) -> None:
        local = self.writer.local_only
        if local:
            folder = self.config.checkpoint_dir
            print(f"WARNING: {len(local)} checkpoint(s) exist only on this "
                  f"machine, in {fallback_dir_for(folder)}, "
                  f"because {folder} failed: "
                  f"{', '.join(p.name for p in local)}. Copy them into "
                  "the checkpoint folder before this runtime ends (the next "
                  "checkpoint that can be written there copies them back).")


def interrupted_message(run_id: str | None, step: int, total_steps: int,
                        checkpoint: Path | None) -> str:
    """What Ctrl-C's KeyboardInterrupt says: where training stopped, its checkpoint, and
    that the same training again resumes there."""
    saved = (f"its checkpoint is {checkpoint}" if checkpoint is not None
             else "no checkpoint could be written")
    if step >= total_steps:
        return f"Ctrl-C came as run {run_id} finished at step {step}; {saved}."
    return (f"training stopped at step {step} of run {run_id}; {saved}. Running the same "
            f"training again resumes the run at step {step} (Cell 32 in the notebook, the "
            "same command on the command line).")
