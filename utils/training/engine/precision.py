"""Which numeric precision a training run uses, and why.

`precision="auto"` (the default) picks what is fast *and* exact enough on the device:

- CPU and MPS: fp32. CPU autocast to bf16 is slower than fp32 on most CPUs without AMX, and
  the fused head + loss (utils/model/loss.py) only runs in fp32.
- CUDA, compute capability >= 8.0 (A100, L4, H100, RTX 30xx/40xx): bf16 autocast. bf16 has
  fp32's exponent range, so no loss scaling is needed.
- CUDA below 8.0 (T4, V100, P100): fp16 autocast with a GradScaler. These cards report
  `torch.cuda.is_bf16_supported() == True` because bf16 *works* there, emulated through
  fp32 units, several times slower than fp16 on the tensor cores; so the capability decides,
  never that query.

An explicit "fp32" / "bf16" / "fp16" wins, except "bf16" on CUDA below 8.0, which warns and
uses fp16 (the emulation is a trap nobody asks for on purpose). On CUDA, fp32 matrix
products are allowed TF32 in every case (the Ampere+ tensor cores' 10-bit-mantissa inputs
with fp32 accumulation, what nanoGPT enables) while training and evaluating
(`tf32_matmuls`): it changes nothing on older cards.

`choose_precision` is a pure function of (device type, compute capability, requested), so
every branch is tested on a CPU; `resolve_precision` asks the device and applies the choice.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from utils.config import PRECISIONS

BF16_MIN_CAPABILITY = (8, 0)  # Ampere: native bf16 tensor cores

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class PrecisionChoice:
    """The resolved precision: `name` ("fp32", "bf16" or "fp16"), the `requested` value it
    came from, the `device_type` it applies to, and a one-line `reason` for people."""

    name: str
    requested: str
    device_type: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        """The autocast dtype (torch.float32 for fp32, where no autocast runs)."""
        return _DTYPES[self.name]

    @property
    def uses_autocast(self) -> bool:
        return self.name != "fp32"

    @property
    def uses_grad_scaler(self) -> bool:
        """fp16's 5-bit exponent underflows small gradients: scale the loss up first."""
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """A context that runs the forward pass in this precision (a no-op for fp32)."""
        if not self.uses_autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for fp16 (disabled, every call is a pass-through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.uses_grad_scaler)

    def to_dict(self) -> dict[str, str]:
        """Plain strings for the checkpoint (loads with weights_only=True)."""
        return {"name": self.name, "requested": self.requested,
                "device_type": self.device_type, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrecisionChoice:
        return cls(name=str(data["name"]), requested=str(data.get("requested", data["name"])),
                   device_type=str(data["device_type"]), reason=str(data.get("reason", "")))


def _check_requested(requested: str) -> str:
    requested = str(requested).lower()
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    return requested


def choose_precision(device_type: str, capability: tuple[int, int] | None = None,
                     requested: str = "auto", device_name: str | None = None
                     ) -> tuple[PrecisionChoice, str | None]:
    """The precision for a device, as a pure function; returns `(choice, warning or None)`.

    `device_type`: "cpu", "cuda", "mps", ...; `capability`: CUDA's (major, minor) compute
    capability (ignored elsewhere); `device_name` only makes the reason readable.
    """
    requested = _check_requested(requested)
    where = device_name or device_type
    if device_type == "cuda":
        if capability is None:
            raise ValueError("choose_precision needs the compute capability of a CUDA device")
        cap = f"compute capability {capability[0]}.{capability[1]}"
        native_bf16 = tuple(capability) >= BF16_MIN_CAPABILITY
        if requested == "auto":
            if native_bf16:
                name, why = "bf16", f"auto: {where} has {cap} (>= 8.0): bf16 autocast, no loss scaling"
            else:
                name, why = "fp16", (f"auto: {where} has {cap} (< 8.0, bf16 would be emulated): "
                                     f"fp16 autocast with a GradScaler")
        elif requested == "bf16" and not native_bf16:
            warning = (f"precision='bf16' on {where} ({cap}) would run emulated, several times "
                       f"slower than fp16; using fp16 with a GradScaler instead. Pass "
                       f"precision='fp16' (or 'auto') to silence this warning.")
            choice = PrecisionChoice("fp16", requested, device_type,
                                     f"bf16 requested but {where} has {cap} (< 8.0): "
                                     f"fp16 autocast with a GradScaler")
            return _with_tf32(choice), warning
        else:
            name, why = requested, f"{requested} requested on {where} ({cap})"
        return _with_tf32(PrecisionChoice(name, requested, device_type, why)), None
    if requested == "auto":
        return PrecisionChoice("fp32", requested, device_type,
                               f"auto: fp32 on {where} (autocast pays off on CUDA GPUs)"), None
    return PrecisionChoice(requested, requested, device_type,
                           f"{requested} requested on {where}"), None


def _with_tf32(choice: PrecisionChoice) -> PrecisionChoice:
    return PrecisionChoice(choice.name, choice.requested, choice.device_type,
                           choice.reason + "; TF32 matmuls on")


@contextlib.contextmanager
def tf32_matmuls(device: str | torch.device) -> Iterator[None]:
    """Inside the block, CUDA's fp32 matrix products and convolutions may use TF32 (Ampere
    and later; nothing changes on older cards); after it, the previous setting is back.

    Scoped to training and evaluation, so that code run after a training session in the
    same process (comparing logits with Hugging Face's, checking a loaded model) keeps full
    fp32. Only the CUDA backends are touched: `torch.set_float32_matmul_precision("high")`
    would also switch the CPU's oneDNN matmuls. torch >= 2.9 has a new flag API and refuses
    to mix it with the legacy `allow_tf32` flags, so the new one is used where it exists.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):
        saved = matmul.fp32_precision, conv.conv.fp32_precision
        matmul.fp32_precision, conv.conv.fp32_precision = "tf32", "tf32"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.conv.fp32_precision = saved
    else:  # torch < 2.9
        saved = matmul.allow_tf32, conv.allow_tf32
        matmul.allow_tf32, conv.allow_tf32 = True, True
        try:
            yield
        finally:
            matmul.allow_tf32, conv.allow_tf32 = saved


def resolve_precision(device: str | torch.device, requested: str = "auto",
                      resumed: dict[str, Any] | None = None) -> PrecisionChoice:
    """`choose_precision` for a real device: asks CUDA for its capability and name, and
    warns when a request is overridden (TF32 is `tf32_matmuls`'s job, where the work runs).

    `resumed`: a checkpoint's stored choice (`PrecisionChoice.to_dict()`). With
    `requested="auto"` on the same device type, a resumed run keeps that choice, so a run
    does not change precision half-way (an explicit request still wins).
    """
    device = torch.device(device)
    requested = _check_requested(requested)
    capability, name = _cuda_identity(device)
    choice, warning = choose_precision(device.type, capability, requested, name)
    if resumed and requested == "auto" and resumed.get("device_type") == device.type:
        stored = str(resumed["name"])
        kept, kept_warning = choose_precision(device.type, capability, stored, name)
        if kept_warning is None:  # the device runs the stored precision natively: keep it
            original = str(resumed.get("reason") or "no reason stored")
            reason = original if original.startswith("resumed in") \
                else f"resumed in {stored}, as the run started: {original}"
            choice = PrecisionChoice(kept.name, "auto", kept.device_type, reason)
        elif stored != choice.name:
            choice = PrecisionChoice(choice.name, "auto", choice.device_type,
                                     f"the run started in {stored}, which this device cannot "
                                     f"run natively; {choice.reason}")
    if warning:
        warnings.warn(warning, stacklevel=2)
    return choice


def choose_precision_for(device: str | torch.device, requested: str = "auto") -> PrecisionChoice:
    """What `resolve_precision` would choose on `device`, without warning: for planning (the notebook's memory check runs before the Trainer exists)."""
    device = torch.device(device)
    capability, name = _cuda_identity(device)
    return choose_precision(device.type, capability, requested, name)[0]


def _cuda_identity(device: torch.device) -> tuple[tuple[int, int] | None, str | None]:
    """(compute capability, name) of a CUDA device; (None, None) for any other device."""
    if device.type != "cuda":
        return None, None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return tuple(torch.cuda.get_device_capability(index)), torch.cuda.get_device_name(index)
