"""`Trainer`: AdamW + warm-up/cosine schedule, evaluation, checkpoints and exact resume.

`_train_loop` is the loop, top to bottom: train a step (`_train_step`: micro-batches,
backward, clip, optimizer step, next learning rate), log, evaluate, checkpoint. The run's life
around it (lock, metrics log, loggers, checkpoint writer, Ctrl-C, finishing) is a
`RunSession` (`session.py`); what a checkpoint holds is built and restored by
`checkpoint.training_checkpoint` / `restore_training_checkpoint`.

One optimizer step = `gradient_accumulation_steps` micro-batches from the `BatchLoader`.
Every evaluation appends one record to `metrics_history`; every checkpoint is preceded by an
evaluation, so a checkpoint's `val_loss` belongs to exactly the weights it holds, and the
per-interval training-loss average restarts at each checkpoint (nothing half-accumulated is
lost on resume). A resumed run restores model, optimizer, scheduler, scaler, every RNG,
the data position and the history, and continues bit for bit like an uninterrupted one.

Runs (see `runs.py`): `fit()` resumes by default. If the checkpoint folder's newest run
with the same fingerprint is unfinished it continues exactly; if it finished, nothing is
trained; otherwise a new run starts, and other runs' files are never touched.

The same code runs in one process and under `torchrun` (see `distributed.py`): each rank
trains on its slice of every batch, gradients are averaged by DDP, rank 0 writes checkpoints.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.checkpoint_errors import (
    InsufficientStorageError,
    NoCheckpointsError,
    TrainingDivergedError,
    TrainingOutOfMemoryError,
)
from utils.config import TrainingConfig
from utils.data import BatchLoader, hash_tokens
from utils.training.engine.checkpoint import (
    TrainingParts,
    check_fits,
    check_resumable,
    load_checkpoint_file,
    model_config_dict,
    restore_training_checkpoint,
    timestamp_now,
    training_checkpoint,
)
from utils.training.engine.compiling import (
    CompileChoice,
    compile_problem,
    compile_unavailable_warning,
    resolve_compile,
)
from utils.training.engine.device_loop import DevicePrefetcher, LossMeter
from utils.training.engine.distributed import (
    DistributedContext,
    launch_info,
    setup_distributed,
    unwrap_model,
)
from utils.training.engine.evaluation import (  # noqa: F401  (names once defined here)
    VALIDATION_SEED_OFFSET,
    evaluate,
    language_model_loss,
    logits_of,
    perplexity,
)
from utils.training.engine.listing import RunInfo, describe_runs, list_runs
from utils.training.engine.loggers import check_loggers_available, eta_seconds
from utils.training.engine.optim import build_optimizer, lr_at
from utils.training.engine.out_of_memory import (
    device_memory_bytes,
    is_out_of_memory,
    out_of_memory_message,
)
from utils.training.engine.precision import PrecisionChoice, resolve_precision, tf32_matmuls
from utils.training.engine.recovery import (
    find_resume_checkpoint,
    load_first_readable,
    plan_resume,
    resumable_checkpoints,
)
from utils.training.engine.rng import seed_everything
from utils.training.engine.runs import (
    best_val_loss_of_run,
    check_same_data,
    new_run_id,
    run_fingerprint,
    settings_differences,
)
from utils.training.engine.samples import TextSampler
from utils.training.engine.session import RunSession, interrupted_message
from utils.training.engine.storage import (
    StoragePlan,
    check_storage,
    count_due_steps,
    plan_storage,
    sample_record,
)
from utils.training.engine.throughput import ThroughputMeter, model_flops_per_token, peak_flops

Callback = Callable[[dict[str, Any]], None]


def context_length_of(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("context_length", "n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


# --------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------

class Trainer:
    """Trains `model` on `train_data`, evaluates on `val_data`, checkpoints, resumes.

    `train_data` / `val_data`: a `BatchLoader` or token ids (numpy array, memmap, tensor),
    from which a loader is built with `config.batch_size` and the model's context length.
    `callbacks` are called on rank 0 with each evaluation's metrics dict (e.g. a
    `utils.plots.LiveLossPlot`); `config.log_to` adds TensorBoard/CSV/W&B (`loggers.py`).
    `tokenizer_name` is recorded in checkpoints (and decodes `sample_every`'s samples).
    `progress`: the progress bar; without one in sight (`progress=False`, or output to a
    file) a line is printed per log interval and per evaluation instead.
    `data_sha256`: `hash_tokens(train, val)` when the caller knows it
    (`LoadedData.tokens_sha256`), part of the run's fingerprint; otherwise the token
    arrays are hashed once when a run needs it.
    `init_from`: where the initial weights came from (e.g. "gpt2"; None: scratch), also
    part of the fingerprint: the same settings from other weights are another run.
    """

    def __init__(self, model: nn.Module, config: TrainingConfig | None = None,
                 train_data: BatchLoader | Any = None, val_data: BatchLoader | Any = None, *,
                 callbacks: Callback | Iterable[Callback] | None = (), tokenizer_name: str | None = None,
                 context_length: int | None = None, progress: bool = True,
                 data_sha256: str | None = None, init_from: str | None = None) -> None:
        if train_data is None:
            raise ValueError("Trainer needs train_data: a BatchLoader or an array of token ids")
        self.config = config or TrainingConfig()
        self.callbacks = _as_list(callbacks)
        self.tokenizer_name = tokenizer_name
        self.progress = progress
        self.rank, _, self.world_size = launch_info()
        self.device = torch.device(self.config.device) if self.config.device else None
        self.model = model
        self.context_length = context_length or self._context_length(train_data)
        self.train_loader = self._as_loader(train_data, self.config.seed, "training data")
        self.val_loader = (None if val_data is None
                           else self._as_loader(val_data, self.config.seed + VALIDATION_SEED_OFFSET,
                                 "validation data"))
        self.global_step = 0
        self.metrics_history: list[dict[str, Any]] = []
        self.best_val_loss = math.inf
        self._elapsed_before = 0.0  # training seconds of earlier sessions (from the history)
        self._stop_step: int | None = None  # set by fit(): where this session ends
        self.optimizer: torch.optim.Optimizer | None = None  # built in fit(), on the device
        self.dist: DistributedContext | None = None
        self.run_id: str | None = None  # set when a run starts or is resumed
        self.finished = False  # fit() found the run already trained to total_steps
        self._data_sha256 = data_sha256
        self.init_from = None if init_from in (None, "", "scratch") else str(init_from)
        self._fingerprint: str | None = None
        self._precision_said = False  # the precision choice is printed once per Trainer
        self._compiled: nn.Module | None = None  # torch.compile(model), built once
        self._compile_choice: CompileChoice | None = None  # decided once per Trainer
        self._report_compile_time = False
        self._compile_refused = False  # compiling asked for, but kernels cannot be built here
        self._grad_norm: torch.Tensor | None = None  # the last measured step's, on the device
        self._measure_norm = False  # the next step is logged: measure its gradient norm
        self._sampler = TextSampler(self.config, tokenizer_name, self._write)

    # ---------------------------------------------------------------- data
    def _context_length(self, data: Any) -> int:
        if isinstance(data, BatchLoader):
            return data.context_length
        length = context_length_of(self.model)
        if length is None:
            raise ValueError("cannot tell the model's context length: pass context_length=")
        return length

    def _as_loader(self, data: Any, seed: int, name: str) -> BatchLoader:
        """A loader for this rank (a loader built for one process is re-sliced per rank)."""
        if isinstance(data, BatchLoader):
            return data.for_rank(self.rank, self.world_size, name)
        return BatchLoader(data, self.config.batch_size, self.context_length, seed=seed,
                           rank=self.rank, world_size=self.world_size, name=name)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per pass over the training tokens (at least 1)."""
        return max(1, self.train_loader.steps_per_epoch // self.config.gradient_accumulation_steps)

    @property
    def total_steps(self) -> int:
        if self.config.max_steps is not None:
            return self.config.max_steps
        return self.config.epochs * self.steps_per_epoch

    @property
    def tokens_per_step(self) -> int:
        """Tokens consumed by one optimizer step, over all ranks."""
        loader = self.train_loader
        return (loader.batch_size * loader.world_size * loader.context_length
                * self.config.gradient_accumulation_steps)

    @property
    def epoch(self) -> int:
        """Completed passes over the training data."""
        return self.global_step // self.steps_per_epoch

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        """Process group, device, precision, optimizer and schedule (built once)."""
        if self.dist is None:
            self.dist = setup_distributed(self.config.device)
        if self.optimizer is not None:
            return
        self.device = self.dist.device
        self.model.to(self.device)
        self._use_precision(resolve_precision(self.device, self.config.precision))
        if self.config.activation_checkpointing:
            self._enable_activation_checkpointing()
        self.optimizer = build_optimizer(self.model, self.config, self.device)
        self._parameters = list(self.model.parameters())  # clipped every step: listed once
        total = self.total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_at(step, self.config, total) / self.config.learning_rate)
        # batch s+1 is gathered, pinned and copied while step s computes (CUDA only)
        self.batches = DevicePrefetcher(self.train_loader, self.device)

    def _use_precision(self, choice: PrecisionChoice) -> None:
        """The precision `choice` and its GradScaler (enabled for fp16 only)."""
        self.precision_choice = choice
        self.scaler = choice.grad_scaler()

    @property
    def precision(self) -> str:
        """The resolved precision: "fp32", "bf16" or "fp16" (known once training is set up)."""
        return self.precision_choice.name

    def _enable_activation_checkpointing(self) -> None:
        model = unwrap_model(self.model)
        if hasattr(model, "set_activation_checkpointing"):  # GPTModel
            model.set_activation_checkpointing(True)
        elif hasattr(model, "gradient_checkpointing_enable"):  # Hugging Face
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            warnings.warn(f"activation_checkpointing=True: {type(model).__name__} has no "
                          "switch for it; training without", stacklevel=3)

    def _say_precision(self) -> None:
        if not self._precision_said:
            self._precision_said = True
            self._say(f"precision: {self.precision} ({self.precision_choice.reason})")

    # ---------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, float | None]:
        """Validation loss (mean over all ranks) and perplexity; None without val data."""
        self._setup()
        if self.val_loader is None:
            return {"val_loss": None, "perplexity": None}
        model = self._compiled if self._compiled is not None else self.model
        with tf32_matmuls(self.device):
            local = evaluate(model, self.val_loader, self.config.eval_batches, self.device,
                             self.precision_choice.autocast())
        loss = self.dist.all_reduce_mean(local)
        return {"val_loss": loss, "perplexity": perplexity(loss)}

    # ---------------------------------------------------------------- checkpoints
    def _parts(self) -> TrainingParts:
        return TrainingParts(unwrap_model(self.model), self.optimizer, self.scheduler,
                             self.scaler, self.train_loader)

    def checkpoint_state(self, record: dict[str, Any]) -> dict[str, Any]:
        """DESIGN.md's checkpoint dict for the current state (live tensors, not copies)."""
        return training_checkpoint(self._parts(), record, {
            "precision": self.precision_choice.to_dict(),
            "training_config": _plain(self.config.to_dict()),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "metrics_history": self.metrics_history,
            "tokenizer": self.tokenizer_name,
            "run_id": self.run_id,
            "run_fingerprint": self.fingerprint,
            "total_steps": self.total_steps,
            "data_identity": self.data_identity(),
        })

    @property
    def fingerprint(self) -> str:
        """What makes two trainings the same run (see `runs.run_fingerprint`)."""
        if self._fingerprint is None:
            self._fingerprint = run_fingerprint(
                model_config_dict(unwrap_model(self.model)), self.tokenizer_name,
                self._data_hash(), {**self.config.to_dict(), "init_from": self.init_from})
        return self._fingerprint

    def _data_hash(self) -> str:
        """sha256 of the training and validation tokens (computed once per Trainer)."""
        if self._data_sha256 is None:
            val = self.val_loader.tokens if self.val_loader is not None else None
            self._data_sha256 = hash_tokens(self.train_loader.tokens, val)
        return self._data_sha256

    def data_identity(self) -> dict[str, Any]:
        """What the checkpoint records of the data: the tokens' sha256 and their counts."""
        return {"sha256": self._data_hash(), "train_tokens": len(self.train_loader.tokens),
                "val_tokens": (len(self.val_loader.tokens) if self.val_loader is not None
                               else None)}

    def load_checkpoint(self, checkpoint: str | Path) -> dict[str, Any]:
        """Restore everything `checkpoint_state` saved (model, optimizer, ..., RNG, data)."""
        self._setup()
        path = Path(checkpoint)
        state = load_checkpoint_file(path, mmap=False)
        check_resumable(path, state)  # a weights-only file (a convert output) says so
        check_fits(unwrap_model(self.model), state, path)  # a mismatch changes nothing
        check_same_data(path, state, self.data_identity())  # other data changes nothing
        stored = state.get("precision")
        if isinstance(stored, dict) and self.config.precision == "auto":
            # "auto" keeps the precision the run started with (an explicit one stands)
            self._use_precision(resolve_precision(self.device, self.config.precision,
                                                  resumed=stored))
        restore_training_checkpoint(self._parts(), state)
        self._continue_run_of(state)
        return state

    def _continue_run_of(self, state: dict[str, Any]) -> None:
        """Take over the run a restored checkpoint belongs to: its step, history, id and
        identity, and the best val_loss it recorded."""
        self.global_step = int(state["global_step"])
        self.metrics_history = [dict(entry) for entry in state.get("metrics_history") or []]
        if self.metrics_history:
            self._elapsed_before = float(self.metrics_history[-1].get("elapsed_s") or 0.0)
        run_id, fingerprint = state.get("run_id"), state.get("run_fingerprint")
        self.run_id = run_id if isinstance(run_id, str) and run_id else None
        if self.run_id is not None and isinstance(fingerprint, str):
            # A run keeps the identity it got at step 0, whatever this session changed
            # (a larger step budget, a resume with other flags).
            self._fingerprint = fingerprint
        self.best_val_loss = best_val_loss_of_run(self.metrics_history,
                                                  self.config.checkpoint_dir, self.run_id)

    # ---------------------------------------------------------------- training
    def fit(self, resume_from: str | Path | None = "auto",
            stop_at_step: int | None = None) -> list[dict[str, Any]]:
        """Train until `total_steps`; returns the metrics history (one dict per evaluation).

        `resume_from`:
        - "auto" (default): continue the newest run in `config.checkpoint_dir` that has this
          training's fingerprint if it is unfinished; if it has finished, load its final
          state and train nothing (`self.finished` is True); otherwise start a new run.
          A Trainer that has already trained continues from where it is.
        - None: start a new run from the model as it is.
        - "latest": the newest run's newest readable checkpoint; or a checkpoint path.
        `stop_at_step`: end this session early at that global step (with a checkpoint
        there), keeping the schedule of the whole run: a later `fit()` continues exactly as
        if it had never stopped.
        """
        self._setup()
        self.finished = False
        if self.dist.is_main:
            check_loggers_available(self.config.loggers)  # before any work: one clear line
        session = RunSession(self.config, self.dist)
        try:
            if not self._start_or_resume(resume_from, session):
                return self.metrics_history
            self._stop_step = self._session_end(stop_at_step)
        except BaseException:
            session.release()
            raise
        if self.global_step == 0:
            seed_everything(self.config.seed)  # same seed on every rank: identical dropout
        self._say_precision()
        try:
            session.open_writer(self.run_id)
            self._check_storage(session)  # before the first step: said, or refused
        except BaseException:
            session.finish(failed=True)
            raise
        self._train_session(session)
        if session.stop_requested:  # the checkpoint of this step is on disk (finish waited)
            # A plain KeyboardInterrupt, so a script stopped by Ctrl-C still exits as one
            # (killed by SIGINT: a shell loop around it stops too); the message says where
            # training resumes (the command line prints it as its last line).
            raise KeyboardInterrupt(interrupted_message(
                self.run_id, self.global_step, self.total_steps, session.last_checkpoint))
        return self.metrics_history

    def _session_end(self, stop_at_step: int | None) -> int:
        """The global step this session stops at: the run's end, or `stop_at_step`."""
        if stop_at_step is None:
            return self.total_steps
        if min(stop_at_step, self.total_steps) <= self.global_step:
            raise ValueError(f"stop_at_step={stop_at_step} is not after the current step "
                             f"{self.global_step}")
        return min(stop_at_step, self.total_steps)

    def _train_session(self, session: RunSession) -> None:
        """Run the loop on the (compiled, DDP-wrapped) model with its progress bar, and
        finish the session however the loop ends."""
        compiled = self._compiled_model()
        training_model = self.dist.wrap(self.model if compiled is None else compiled)
        training_model.train()
        bar = session.progress_bar(self.global_step, self._stop_step, self.progress)
        failed = True
        try:
            session.open_loggers(self.run_id, self.global_step)
            with tf32_matmuls(self.device), session.stop_on_ctrl_c():
                self._train_loop(training_model, session, bar)
            failed = False
        except Exception as error:
            if is_out_of_memory(error):
                raise TrainingOutOfMemoryError(self._out_of_memory_message(error)) from error
            raise
        finally:
            bar.close()
            session.finish(failed)

    def _train_loop(self, model: nn.Module, session: RunSession, bar) -> None:
        """The loop, step by step until `_stop_step`: train one step, log it, evaluate,
        checkpoint. The loss stays on the device: it is read (one host sync, and under
        DDP one all-reduce) at log intervals and evaluations, never per step."""
        losses, speed = LossMeter(self.device), self._throughput_meter()
        started, first_step = time.perf_counter(), self.global_step
        speed.start(first_step)
        while self.global_step < self._stop_step:
            self._measure_norm = self._reads_loss_at(self.global_step + 1)
            losses.add(self._train_step(model))  # micro-batches, backward, clip, step, lr
            self.global_step += 1
            stopping = session.stop_requested  # Ctrl-C: this step is the last, checkpointed
            if stopping:
                self._say(f"Ctrl-C: stopping at step {self.global_step}, writing its "
                          "checkpoint (Ctrl-C again stops at once, without it)")
            if self.global_step == first_step + 1:
                self._after_first_step(session, started)
            bar.update(1)
            checkpoint_due = self._checkpoint_due() or stopping
            evaluation_due = checkpoint_due or self._evaluation_due()
            if evaluation_due or self.global_step % self.config.log_interval == 0:
                self._log_progress(losses, speed, bar, session)
            if evaluation_due:
                seconds = time.perf_counter() - started
                train_loss = losses.read_record(self.dist.all_reduce_mean)
                record = self._record(train_loss, seconds, speed, session)
                if checkpoint_due:
                    self._checkpoint(record, session)
                speed.start(self.global_step)  # evaluation and checkpointing are not training
            if stopping:
                return

    def _train_step(self, training_model: nn.Module) -> torch.Tensor:
        """One optimizer step: forward and backward over `gradient_accumulation_steps`
        micro-batches, clip, step, next learning rate. Returns the mean loss as a 0-d
        tensor on the device (reading it is the caller's choice)."""
        if not self.model.training:
            # .train() walks every module (a dozen attribute writes per block): fit() calls
            # it once, evaluation restores the mode it found; here only if someone changed it
            training_model.train()
        loss = self._forward_backward(training_model)
        self._clip_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return loss

    def _forward_backward(self, training_model: nn.Module) -> torch.Tensor:
        """Accumulate the gradients of every micro-batch; returns their mean loss."""
        accumulation = self.config.gradient_accumulation_steps
        total = None
        for micro in range(accumulation):
            inputs, targets = next(self.batches)
            # DDP averages gradients across ranks only on the last micro-batch
            last = micro == accumulation - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled \
                else training_model.no_sync()
            with sync:
                with self.precision_choice.autocast():
                    loss = language_model_loss(training_model, inputs, targets)
                    if accumulation > 1:  # x / 1 == x: no extra kernel (and its backward)
                        loss = loss / accumulation
                self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        return total

    def _clip_gradients(self) -> None:
        """Clip to `grad_clip`. The gradient norm stays on the device in `_grad_norm`:
        clipping measures it anyway; without clipping it is measured only when
        `_measure_norm` (a step that is logged)."""
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            foreach = True if self.device.type in ("cpu", "cuda") else None  # one kernel per list
            self._grad_norm = nn.utils.clip_grad_norm_(
                self._parameters, self.config.grad_clip, foreach=foreach).detach()
        elif self._measure_norm:
            self.scaler.unscale_(self.optimizer)  # the norm of the true gradients (fp16)
            self._grad_norm = _gradient_norm(self._parameters)

    def _after_first_step(self, session: RunSession, started: float) -> None:
        """Once the session's first step is done: say what compiling cost (once per
        Trainer: one sync), and let the writer allocate its checkpoint buffers now that
        the optimizer state exists, off the critical path."""
        if self._report_compile_time:
            self._report_compile_time = False
            self._say_warmup(started)
        session.prepare_checkpoints(lambda: {
            "model_state_dict": unwrap_model(self.model).state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict()})

    def _log_progress(self, losses: LossMeter, speed: ThroughputMeter, bar,
                      session: RunSession) -> None:
        """Read the loss window (the sync point), check it, update the bar and the log."""
        window = losses.log_steps
        # the gradient norm comes back in the same host read as the loss
        loss, grad_norm = losses.read_log_with(self._grad_norm, self.dist.all_reduce_mean)
        self._grad_norm = None
        self._check_finite(loss, window)
        rates = speed.mark(self.global_step)
        postfix = {"loss": f"{loss:.4f}", "lr": f"{self._lr_of_last_step():.2e}"}
        if rates["tokens_per_s"] is not None:
            postfix["tok_s"] = f"{rates['tokens_per_s']:,.0f}"
        if rates["mfu"] is not None:
            postfix["mfu"] = f"{rates['mfu']:.1%}"
        bar.set_postfix(postfix, refresh=False)
        values = {"train_loss": loss, "learning_rate": self._lr_of_last_step(),
                  "tokens_per_s": rates["tokens_per_s"], "mfu": rates["mfu"],
                  "grad_norm": grad_norm}
        session.log_train(self.global_step, self.epoch, values, self._stop_step,
                          self._eta(rates["tokens_per_s"]))

    def _record(self, train_loss: float, session_seconds: float, speed: ThroughputMeter,
                session: RunSession) -> dict[str, Any]:
        """Evaluate, append a metrics record, sample, tell the callbacks; returns it."""
        evaluation = self.evaluate()
        rates = speed.rates()
        record = {
            "step": self.global_step,
            "epoch": self.epoch,
            "train_loss": train_loss,
            "val_loss": evaluation["val_loss"],
            "perplexity": evaluation["perplexity"],
            "learning_rate": self._lr_of_last_step(),
            "tokens_seen": self.global_step * self.tokens_per_step,
            "elapsed_s": self._elapsed_before + session_seconds,
            "tokens_per_s": rates["tokens_per_s"],
            "mfu": rates["mfu"],
            "timestamp": timestamp_now(),
        }
        self.metrics_history.append(record)
        session.log_eval(record, self._stop_step, self._eta(record["tokens_per_s"]))
        if self.dist.is_main:
            last = self.global_step == self.total_steps
            if self._sampler.due(len(self.metrics_history), last):
                text = self._sampler.sample(unwrap_model(self.model), self.global_step)
                if text is not None:
                    session.loggers.log(self.global_step, {"sample": text}, "sample")
            for callback in self.callbacks:
                callback(dict(record))
        return record

    def _checkpoint(self, record: dict[str, Any], session: RunSession) -> None:
        """Hand this step's checkpoint to the session (rank 0 writes), tracking the best."""
        val_loss = record["val_loss"]
        is_best = (session.writer is not None and val_loss is not None
                   and val_loss < self.best_val_loss)
        session.save(lambda: self.checkpoint_state(record), is_best)
        if is_best:
            self.best_val_loss = val_loss

    def _eta(self, tokens_per_s: float | None) -> float | None:
        return eta_seconds(self._stop_step - self.global_step, self.tokens_per_step,
                           tokens_per_s)

    def _reads_loss_at(self, step: int) -> bool:
        """Whether the loop reads the loss after `step` (a log interval, an evaluation)."""
        config = self.config
        return (step % config.log_interval == 0 or step % config.eval_interval == 0
                or step in (self._stop_step, self.total_steps) or self._checkpoint_due(step))

    def _evaluation_due(self) -> bool:
        return (self.global_step % self.config.eval_interval == 0
                or self.global_step == self._stop_step)

    def _checkpoint_due(self, step: int | None = None) -> bool:
        config = self.config
        step = self.global_step if step is None else step
        if not config.checkpoint_dir:
            return False
        return (step in (self.total_steps, self._stop_step)
                or (config.checkpoint_interval is not None
                    and step % config.checkpoint_interval == 0)
                or (config.checkpoint_every_epoch and step % self.steps_per_epoch == 0))

    def train_step(self) -> float:
        """One optimizer step outside `fit()` (benchmarks, custom loops); returns its loss
        (read at once: this is the one place a per-step sync is asked for). No evaluation,
        no checkpoint, no DDP wrapper."""
        self._setup()
        with tf32_matmuls(self.device):
            loss = self._train_step(self.model).item()
        self.global_step += 1
        return loss

    def _check_finite(self, loss: float, window: int = 1) -> None:
        """Stop before a diverged state can be evaluated, saved or replace a good checkpoint
        (the loss is read at every log point and before every evaluation; `window` is the
        number of steps that reading averaged)."""
        if math.isfinite(loss):
            return
        where = self.config.checkpoint_dir
        step = self.global_step
        when = f"at step {step}" if window <= 1 else f"between steps {step - window + 1} and {step}"
        raise TrainingDivergedError(
            f"training diverged {when}: the loss is {loss}. Nothing was "
            f"saved from this state{f'; the checkpoints in {where} are intact' if where else ''}."
            f" Fix: lower learning_rate (now {self.config.learning_rate}) or raise "
            f"warmup_steps (now {self.config.warmup_steps}), then train again.")

    def _lr_of_last_step(self) -> float:
        return lr_at(max(0, self.global_step - 1), self.config, self.total_steps)

    def _say_warmup(self, session_start: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # wait for the first step to finish
        self._say(f"torch.compile warm-up: the first step took "
                  f"{time.perf_counter() - session_start:.1f} s (compilation included; "
                  f"later steps run compiled)")

    def _throughput_meter(self) -> ThroughputMeter:
        """Tokens/s and MFU (`_flops_per_token`; the device's peak)."""
        flops = self._flops_per_token
        peak = peak_flops(self.device, self.precision)[0] if flops else None
        return ThroughputMeter(self.tokens_per_step, flops, peak)

    @functools.cached_property
    def _flops_per_token(self) -> int:
        """Training FLOPs per token as nanoGPT counts them; 0 for a model without GPT-2's
        config (no MFU, and compile "auto" sees no saving)."""
        try:
            return model_flops_per_token(self.model, self.context_length)
        except (AttributeError, StopIteration, TypeError):
            return 0

    def storage_plan(self) -> StoragePlan:
        """What this run keeps at most in `config.checkpoint_dir` (`storage.py`): its
        checkpoints (the newest `keep_full` whole, the others weights-only), best_model.pt
        and its metrics log, sized from the model and optimizer as they are (before the
        first step, AdamW's moments are predicted)."""
        self._setup()
        config, total = self.config, self.total_steps
        every_epoch = self.steps_per_epoch if config.checkpoint_every_epoch else None
        saves = [config.checkpoint_interval, every_epoch]
        records = count_due_steps(total, [config.eval_interval, *saves], (total,))
        train_lines = count_due_steps(total, [config.log_interval, config.eval_interval,
                                              *saves], (total,))
        record = sample_record({"global_step": total, "epoch": total // self.steps_per_epoch})
        if self.val_loader is None:
            record.update(val_loss=None, perplexity=None)
        state = self.checkpoint_state(record)  # live tensors: measured, never copied
        state.update(global_step=total, epoch=record["epoch"])
        return plan_storage(config.checkpoint_dir, state, self.optimizer, config,
                            checkpoints=count_due_steps(total, saves, (total,)),
                            records=records, log_lines=(train_lines, records),
                            best_model=self.val_loader is not None)

    def _check_storage(self, session: RunSession) -> None:
        """Say what the run keeps at most in its folder and the free space there; refuse
        a plan that does not fit unless `check_storage` is False (all ranks stop)."""
        error: BaseException | None = None
        if session.writer is not None:
            try:
                self._say(check_storage(self.storage_plan(), self.run_id,
                                        refuse=self.config.check_storage))
            except InsufficientStorageError as caught:
                error = caught
        session.fail_together(error)

    # ---------------------------------------------------------------- which run
    def _start_or_resume(self, resume_from: str | Path | None, session: RunSession) -> bool:
        """Load what `resume_from` asks for, give the run its id and hold it (`session`);
        False: nothing to train."""
        folder = self.config.checkpoint_dir
        runs = None  # the folder's runs, when the plan below has listed them
        if resume_from == "auto" and self.run_id is None and folder:
            plan = plan_resume(folder, self.fingerprint, self.total_steps)
            runs = plan.runs
            if plan.action == "interrupted":
                from utils.config import ConfigError

                raise ConfigError(plan.message)  # names max_steps: the setting to change
            if plan.action == "resume":
                session.hold(plan.run.run_id)  # before anything changes: it may be in use
            if plan.action != "new":
                self._say(plan.message)
                load_first_readable(resumable_checkpoints(plan.run), self.load_checkpoint,
                                    folder, f"of run {plan.run.run_id} ", "newest")
            if plan.action == "finished":
                self.finished = True
                return False
        elif resume_from not in (None, "auto"):
            self._resume_explicitly(resume_from)
        if self.run_id is None:
            self.run_id = self.dist.broadcast(new_run_id())
            self._announce_new_run(runs)
        session.hold(self.run_id)
        return True

    def _resume_explicitly(self, resume_from: str | Path) -> None:
        """Continue from "latest" (the newest run's newest readable checkpoint) or a path,
        saying so, and naming the run's settings that differ from the ones given."""
        folder = self.config.checkpoint_dir
        if resume_from == "latest" and not folder:
            raise NoCheckpointsError("resume_from='latest' needs config.checkpoint_dir")
        given = _plain(self.config.to_dict())
        path, state = find_resume_checkpoint(resume_from, folder, self.load_checkpoint)
        if resume_from == "latest":
            self._say(f"resuming run {self.run_id or '(legacy)'} at step {self.global_step} "
                      f"from {path}")
        else:
            self._say(f"resuming at step {self.global_step} from {resume_from}")
        saved = state.get("training_config")
        differences = settings_differences(saved, given) if isinstance(saved, dict) else []
        if differences:
            self._say(f"the checkpoint was trained with other settings than the ones given "
                      f"({'; '.join(differences)}); training continues with the ones given, "
                      f"as run {self.run_id or '(legacy)'}")

    def _announce_new_run(self, runs: list[RunInfo] | None = None) -> None:
        """Say that a run starts (or that an old-format checkpoint continues as one), and
        which runs are already in the folder (`runs`, if already listed): they stay
        untouched."""
        if self.global_step > 0:
            self._say(f"the checkpoint carries no run id (written before runs existed): it "
                      f"continues as run {self.run_id}; its older files stay as they are")
            return
        others = runs
        if others is None:
            others = list_runs(self.config.checkpoint_dir) if self.config.checkpoint_dir else []
        message = f"starting a new run {self.run_id}"
        if others:
            message += (f"; runs already in {self.config.checkpoint_dir} stay untouched: "
                        f"{describe_runs(others)}")
        self._say(message)

    def _compiled_model(self) -> nn.Module | None:
        """`torch.compile(self.model)` when `config.compile` asks (True, or "auto" where it
        pays: `compiling.choose_compile`) and this machine can build its kernels; built
        once per Trainer. self.model stays the plain module, so state dicts (checkpoints,
        loading, resuming) never see the wrapper's `_orig_mod.` prefix. Where compiling
        cannot work (no C++ compiler for CPU kernels, say) training goes on without it,
        with a warning that says why."""
        choice = self._decide_compile()
        if not choice.enabled or self._compile_refused:
            return None
        if self._compiled is None:
            problem = compile_problem(self.device)
            if problem:
                self._compile_refused = True  # said once per Trainer, not at every fit()
                self._say(compile_unavailable_warning(self.config.compile, self.device, problem))
                return None
            self._compiled = torch.compile(self.model)
            self._report_compile_time = True  # after the first step (compiles lazily)
        return self._compiled

    def _decide_compile(self) -> CompileChoice:
        """The compile decision, made once per Trainer from the run's whole step budget (a
        resumed session decides as the first did) and said where it is not the obvious
        one: on CUDA, or when asked for explicitly."""
        if self._compile_choice is None:
            self._compile_choice = resolve_compile(
                self.config.compile, self.device, steps=self.total_steps,
                flops_per_step=self._flops_per_token * self.tokens_per_step,
                precision=self.precision)
            if self.device.type == "cuda" or self.config.compile is True:
                state = "on" if self._compile_choice.enabled else "off"
                self._say(f"torch.compile: {state} ({self._compile_choice.reason})")
        return self._compile_choice

    def _out_of_memory_message(self, error: BaseException) -> str:
        settings = {"batch_size": self.config.batch_size,
                    "gradient_accumulation_steps": self.config.gradient_accumulation_steps,
                    "precision": self.precision,
                    "activation_checkpointing": self.config.activation_checkpointing,
                    "context_length": self.context_length}
        return out_of_memory_message(error, settings,
                                     getattr(unwrap_model(self.model), "config", None),
                                     device_memory_bytes(self.device))

    def _say(self, message: str) -> None:
        if self.dist.is_main:
            self.announce(message)

    # How the Trainer's messages reach the user (rank 0 only): the command line sets one that
    # writes its flags where a message names a setting (`max_steps` -> `--max-steps`).
    announce: Callable[[str], None] = print

    def _write(self, text: str) -> None:
        """Print above the progress bar (rank 0)."""
        if self.dist.is_main:
            from tqdm.auto import tqdm

            tqdm.write(text)
            sys.stdout.flush()


def _gradient_norm(parameters: Iterable[nn.Parameter]) -> torch.Tensor | None:
    """The L2 norm of all gradients together (what clip_grad_norm_ measures), on the device."""
    norms = [torch.linalg.vector_norm(p.grad.detach(), dtype=torch.float32)
             for p in parameters if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else None


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    """JSON types only (a torch.device given as `device` becomes "cuda:0"), so the
    checkpoint loads with weights_only=True."""
    import json

    return json.loads(json.dumps(data, default=str))


def _as_list(callbacks: Callback | Iterable[Callback] | None) -> list[Callback]:
    if callbacks is None:
        return []
    return [callbacks] if callable(callbacks) else list(callbacks)
