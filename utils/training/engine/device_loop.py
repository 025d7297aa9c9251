"""Pieces of a training loop that keeps the GPU busy: no host sync per step, and batches
that arrive before they are needed.

- `LossMeter` sums the loss on the device; the host reads it (one sync, and under DDP one
  all-reduce) only when asked, at log intervals and evaluations. `loss.item()` every step
  would make the CPU wait for the GPU's queue to drain before it could enqueue the next
  step, leaving the GPU idle for the Python overhead of every step.
- `DevicePrefetcher` hands out batch s while batch s+1 is already being gathered, pinned and
  copied (CUDA only): the copy from pinned memory is asynchronous, so the CPU goes on to
  enqueue the forward pass instead of waiting for the transfer. The loader's `step` counts
  only the batches handed out, so a checkpoint's data state resumes exactly.

What an out-of-memory error says is utils/training/engine/out_of_memory.py.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from utils.data import BatchLoader


class LossMeter:
    """Running sums of the training loss on the device, read on demand.

    Two windows: the log window (progress bar, read every `log_interval` steps) and the
    evaluation window (the `train_loss` of each metrics record). `add` never syncs.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        dtype = torch.float32 if self.device.type == "mps" else torch.float64  # MPS: no float64
        self._log = torch.zeros((), device=self.device, dtype=dtype)
        self._record = torch.zeros((), device=self.device, dtype=dtype)
        self.log_steps = 0
        self.record_steps = 0

    def add(self, loss: torch.Tensor) -> None:
        """Add one optimizer step's mean loss (a 0-d tensor on the device)."""
        loss = loss.detach().to(self._log.dtype)
        self._log += loss
        self._record += loss
        self.log_steps += 1
        self.record_steps += 1

    def read_log(self, reduce: Callable[[float], float] | None = None) -> float | None:
        """Mean loss since the last `read_log` (None if no step), then restart the window.
        `reduce` (e.g. DDP's all-reduce mean) runs here, never per step."""
        if not self.log_steps:
            return None
        value = (self._log / self.log_steps).item()  # the one host sync of the window
        self._log.zero_()
        self.log_steps = 0
        return reduce(value) if reduce else value

    def read_log_with(self, value: torch.Tensor | None,
                      reduce: Callable[[float], float] | None = None
                      ) -> tuple[float | None, float | None]:
        """`read_log`, and `value` (a 0-d device tensor such as the gradient norm, or None)
        read in the same host sync; `reduce` applies to the loss only."""
        if value is None or not self.log_steps:
            return self.read_log(reduce), None if value is None else float(value)
        both = torch.stack([self._log / self.log_steps, value.detach().to(self._log.dtype)])
        loss, other = both.tolist()  # the one host sync of the window
        self._log.zero_()
        self.log_steps = 0
        return (reduce(loss) if reduce else loss), other

    def read_record(self, reduce: Callable[[float], float] | None = None) -> float | None:
        """Mean loss since the last `read_record` (the metrics record's `train_loss`)."""
        if not self.record_steps:
            return None
        value = (self._record / self.record_steps).item()
        self._record.zero_()
        self.record_steps = 0
        return reduce(value) if reduce else value


def pin_memory_available() -> bool:
    """Pinned (page-locked) host memory exists only with a CUDA runtime."""
    return torch.cuda.is_available()


class DevicePrefetcher:
    """Batches of `loader` on `device`, the next one prepared while the current computes.

    On CUDA each batch is pinned and copied with `non_blocking=True` one step ahead; the
    copy is queued on the current stream before the step's kernels, so it is ordered
    correctly without any explicit synchronisation, and the caching host allocator keeps
    the pinned buffer until the copy has run. Elsewhere it is a plain `.to(device)`.
    """

    def __init__(self, loader: BatchLoader, device: torch.device | str) -> None:
        self.loader = loader
        self.device = torch.device(device)
        self.asynchronous = self.device.type == "cuda" and pin_memory_available()
        self._ready: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _fetch(self, step: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        inputs, targets = self.loader.get_batch(step)
        if self.asynchronous:
            inputs, targets = inputs.pin_memory(), targets.pin_memory()
        return (step, inputs.to(self.device, non_blocking=self.asynchronous),
                targets.to(self.device, non_blocking=self.asynchronous))

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        step = self.loader.step
        if self._ready is not None and self._ready[0] == step:
            _, inputs, targets = self._ready
        else:  # first call, or the loader was moved (a resume): fetch now
            _, inputs, targets = self._fetch(step)
        self.loader.step = step + 1  # only batches handed out count (exact resume)
        self._ready = self._fetch(step + 1) if self.asynchronous else None
        return inputs, targets
