"""Load weights from checkpoints: strict, safe, low-memory and transactional.

- Safe: files are read with `torch.load(weights_only=True)`, whose unpickler refuses any
  global that could run code; such a file raises `UnsafeCheckpointError` and nothing in it
  runs. `trust_checkpoint=True` lifts that for a file you trust (with a warning).
- Strict: every tensor must fit. A mismatch raises `ArchitectureMismatchError` listing
  missing / unexpected / wrong-shape keys and the config values that differ. Partial
  loading for transfer learning is explicit (`strict=False`) and returns a `LoadReport`.
- Low memory: `load_pretrained_model` builds the model on the meta device (no weights,
  no initialisation), memory-maps the file (`mmap=True`) and hands the mapped tensors to
  the model (`assign=True`), so peak memory is about one copy of the weights, and an
  optimizer state stored in the same file is never read.
- Transactional: `load_model_weights` reads and checks everything, and stages the new
  tensors on the target device, before it changes the model; any failure before that
  point leaves parameters, buffers, device and train/eval mode exactly as they were.

On CPU the weights of `load_pretrained_model` stay memory-mapped from the file,
copy-on-write: training changes private copies of the pages, never the file. Do not
overwrite that file *in place* while the model lives (our checkpoint writer replaces files
atomically, which is safe); `load_model_weights` always copies.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.checkpoint_errors import (
    ArchitectureMismatchError,
    CheckpointConfigError,
    CheckpointError,
    CorruptCheckpointError,
    InvalidWeightsError,
    ModelNotInitializedError,
    NoCheckpointsError,
    UnsafeCheckpointError,
)
from utils.config import ConfigError, ModelConfig
from utils.model import GPTModel, meta_skeleton
from utils.pretrained.foreign import RecognizedCheckpoint, recognize
from utils.reading import read_checkpoint, read_hf_config_beside
from utils.training.engine.distributed import default_device
from utils.training.engine.recovery import select_checkpoint  # noqa: F401  (public here too)

__all__ = [
    "ArchitectureMismatchError", "CheckpointError", "CorruptCheckpointError", "LoadReport",
    "ModelNotInitializedError", "NoCheckpointsError", "UnsafeCheckpointError",
    "inspect_checkpoint", "load_model_weights", "load_pretrained_model", "read_checkpoint",
    "resolve_device", "select_checkpoint",
]


MODES = ("eval", "train")
# Config fields that change tensor shapes or which tensors exist (dropout does not).
ARCHITECTURE_FIELDS = ("vocab_size", "context_length", "embedding_dimension",
                       "number_of_heads", "number_of_layers", "use_attention_bias")
LISTED_KEYS = 3  # how many keys of each kind an error message names


# ---------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------

def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device`, or the best available one (`distributed.default_device`: CUDA, MPS, CPU);
    a requested device this machine lacks is refused with the fix."""
    if device is None:
        return default_device()
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was requested but CUDA is not available. "
                         "Fix: pass device='cpu' or leave device=None to pick automatically.")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None)
                                     and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was requested but MPS is not available. "
                         "Fix: pass device='cpu' or leave device=None.")
    return device


def inspect_checkpoint(path: str | Path, trust_checkpoint: bool = False,
                       config: ModelConfig | dict | None = None) -> RecognizedCheckpoint:
    """Read a checkpoint and recognise its format; the state dict uses GPTModel's names."""
    path = Path(path)
    payload = read_checkpoint(path, trust_checkpoint)
    fallback = config.to_dict() if isinstance(config, ModelConfig) else config
    return recognize(payload, hf_config=read_hf_config_beside(path), fallback_config=fallback)


# ---------------------------------------------------------------------------------------
# Checking: does the state dict fit the model?
# ---------------------------------------------------------------------------------------

@dataclass
class LoadReport:
    """Exactly what a load did: which tensors were loaded and which were skipped, and why."""

    path: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file: kept as they were
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model: ignored
    mismatched: list[tuple[str, list[int], list[int]]] = field(default_factory=list)  # (key, file, model)
    config_differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The file's other entries (epoch, losses, timestamp, optimizer state, ...), for reports.
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def complete(self) -> bool:
        """True when every model tensor came from the file and nothing was skipped."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        return (f"loaded {len(self.loaded)} tensors; skipped {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, {len(self.mismatched)} wrong-shape")

    def __str__(self) -> str:
        lines = [f"Load report for {self.path} ({self.format}): {self.summary()}"]
        lines += [f"  note: {note}" for note in self.notes]
        lines += [f"  config differs: {diff}" for diff in self.config_differences]
        lines += [f"  missing (model keeps its values): {key}" for key in self.missing]
        lines += [f"  unexpected (ignored): {key}" for key in self.unexpected]
        lines += [f"  wrong shape (model keeps its values): {key} file {a} vs model {b}"
                  for key, a, b in self.mismatched]
        return "\n".join(lines)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:LISTED_KEYS])
    return shown + (f" (+{len(keys) - LISTED_KEYS} more)" if len(keys) > LISTED_KEYS else "")


def config_differences(checkpoint_config: Any, model_config: Any) -> list[str]:
    """`field: checkpoint X, model Y` for each architecture field that differs."""
    if checkpoint_config is None or model_config is None:
        return []
    try:
        ours = ModelConfig.from_dict(checkpoint_config)
    except ConfigError:
        return []
    return [f"{name}: checkpoint {getattr(ours, name)!r}, model {getattr(model_config, name)!r}"
            for name in ARCHITECTURE_FIELDS
            if getattr(ours, name) != getattr(model_config, name, None)]


def match_state_dict(recognized: RecognizedCheckpoint, model: nn.Module, path: str
                     ) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """The tensors that fit `model`, and a report of everything that does not."""
    expected = model.state_dict(keep_vars=True)
    state_dict = dict(recognized.state_dict)
    # GPT-2 ties the head to the embedding: a file may store the pair once.
    if ("lm_head.weight" in expected and "lm_head.weight" not in state_dict
            and "token_embedding.weight" in state_dict and _is_tied(model)):
        state_dict["lm_head.weight"] = state_dict["token_embedding.weight"]
    report = LoadReport(path, recognized.format, notes=list(recognized.notes),
                        metadata=dict(recognized.metadata),
                        config_differences=config_differences(
                            recognized.config, getattr(model, "config", None)))
    usable: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key not in expected:
            report.unexpected.append(key)
        elif tuple(tensor.shape) != tuple(expected[key].shape):
            report.mismatched.append((key, list(tensor.shape), list(expected[key].shape)))
        else:
            usable[key] = tensor
            report.loaded.append(key)
    report.missing = [key for key in expected if key not in state_dict]
    if _is_tied(model) and "lm_head.weight" in usable and "token_embedding.weight" in usable:
        head, embedding = usable["lm_head.weight"], usable["token_embedding.weight"]
        if head.data_ptr() != embedding.data_ptr() and not torch.equal(head, embedding):
            report.mismatched.append(("lm_head.weight (untied: differs from "
                                      "token_embedding.weight)", list(head.shape),
                                      list(head.shape)))
            del usable["lm_head.weight"]
            report.loaded.remove("lm_head.weight")
    return usable, report


def _is_tied(model: nn.Module) -> bool:
    head = getattr(getattr(model, "lm_head", None), "weight", None)
    embedding = getattr(getattr(model, "token_embedding", None), "weight", None)
    return head is not None and head is embedding


def _raise_mismatch(report: LoadReport) -> None:
    parts = [f"{len(report.missing)} missing, {len(report.unexpected)} unexpected, "
             f"{len(report.mismatched)} wrong-shape key(s)"]
    if report.config_differences:
        parts.append("config differs: " + "; ".join(report.config_differences))
    if report.missing:
        parts.append("missing: " + _listed(report.missing))
    if report.unexpected:
        parts.append("unexpected: " + _listed(report.unexpected))
    if report.mismatched:
        parts.append("wrong shape: " + _listed(
            [f"{k} (checkpoint {a} vs model {b})" for k, a, b in report.mismatched]))
    raise ArchitectureMismatchError(
        f"Model architecture mismatch: {report.path} does not fit this model. "
        + ". ".join(parts) + ". Fix: build the model from the checkpoint's own config "
        "(load_pretrained_model(path) does this), or make the model's config match the "
        "training config, or load a checkpoint of this architecture; for transfer learning "
        "pass strict=False to load only the tensors that fit (a report lists the rest).")


# Weights must be one of these; float64 is accepted and cast to the model's dtype.
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_weights(tensors: dict[str, torch.Tensor], path: str) -> None:
    """Refuse what would load quietly and be wrong: weights that are not float16/32/64 or
    bfloat16 (a bool tensor would load as all 1.0; fp8 crashes the first forward), tensors
    whose storage is smaller than their shape (stride-0 views: a small file posing as a
    huge model), and NaN/Inf (a diverged run's checkpoint)."""
    unique: dict[int, tuple[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        unique.setdefault(id(tensor), (key, tensor))  # a tied pair is checked once
    for key, tensor in unique.values():
        if tensor.dtype not in WEIGHT_DTYPES:
            raise InvalidWeightsError(
                f"{path}: tensor {key} has dtype {tensor.dtype}; weights must be float32, "
                "float16, bfloat16 or float64. Fix: the file was not written from a trained "
                "model's state_dict(); use another checkpoint.")
        if _storage_too_small(tensor):
            raise InvalidWeightsError(
                f"{path}: tensor {key} claims shape {list(tensor.shape)} but stores only "
                f"{tensor.untyped_storage().nbytes():,} bytes (a broadcast / stride-0 view, "
                "not real weights). Fix: save real tensors (model.state_dict()); use "
                "another checkpoint.")
    with _one_thread():
        bad = [key for key, tensor in unique.values() if not _all_finite(tensor)]
    if bad:
        raise InvalidWeightsError(
            f"{path}: {len(bad)} tensor(s) hold NaN or Inf values ({_listed(bad)}); training "
            "had diverged when this checkpoint was saved. Fix: load an earlier checkpoint "
            "(list_checkpoints shows them), and lower the learning rate for the next run.")


def _storage_too_small(tensor: torch.Tensor) -> bool:
    if tensor.numel() <= 1:
        return False
    if any(stride == 0 and size > 1 for stride, size in zip(tensor.stride(), tensor.shape,
                                                             strict=True)):
        return True
    return tensor.untyped_storage().nbytes() < tensor.numel() * tensor.element_size()


def check_layer_count(config: ModelConfig, state_dict: dict[str, torch.Tensor],
                      path: str) -> None:
    """Compare the config's depth with the blocks in the file before any module is built:
    building costs time per layer, so a config asking for 10^5 layers next to a one-layer
    state dict must fail here, not after minutes. (Other shapes are checked key by key.)"""
    blocks = {key.split(".")[1] for key in state_dict if key.startswith("transformer_blocks.")}
    if config.number_of_layers != len(blocks):
        raise ArchitectureMismatchError(
            f"Model architecture mismatch: {path}'s config has number_of_layers="
            f"{config.number_of_layers} but its weights hold {len(blocks)} blocks. Fix: use "
            "another checkpoint, or pass config=ModelConfig(...) matching the weights.")


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch ops on one thread for a while.

    Summing the weights streams them from memory once: one thread reads as fast as several,
    and on a shared CPU several threads waiting on each other are 5x slower (measured).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _all_finite(tensor: torch.Tensor) -> bool:
    """NaN and Inf propagate through a sum, which streams the tensor once without allocating
    a mask (10x faster than isfinite().all() on a CPU); a non-finite sum is confirmed
    element-wise, so an overflowing sum of large finite values is no false alarm."""
    wide = torch.float32 if tensor.element_size() < 4 else None
    if bool(torch.isfinite(tensor.sum(dtype=wide))):
        return True
    return bool(torch.isfinite(tensor).all())


def _model_config(recognized: RecognizedCheckpoint, config: ModelConfig | dict | None,
                  path: str) -> ModelConfig:
    """The config to build the model with: the caller's, else the file's."""
    source = config if config is not None else recognized.config
    if source is None:
        raise CheckpointConfigError(
            f"{path} ({recognized.format}) carries no model config, and its shapes match no "
            "GPT-2 preset, so the number of heads is unknown. Fix: pass config=ModelConfig(...) "
            "with the architecture it was trained with.")
    try:
        chosen = ModelConfig.from_dict(source)
    except ConfigError as error:
        raise CheckpointConfigError(
            f"{path}: its model config cannot build a model ({error}). Fix: pass a valid "
            "config=ModelConfig(...) for this checkpoint.") from error
    if config is not None and recognized.config is not None:
        differences = config_differences(recognized.config, chosen)
        if differences:
            raise ArchitectureMismatchError(
                f"Model architecture mismatch: the config you passed differs from {path}'s "
                f"own: {'; '.join(differences)}. Fix: pass config=None to use the "
                "checkpoint's config.")
    return chosen


def half_copy_note(metadata: dict[str, Any]) -> str | None:
    """The note for a weights-only copy saved in half precision (`weights_dtype` "bf16" or
    "fp16", the storage plan's `weights_only_dtype`): loading upcasts it to float32."""
    dtype = metadata.get("weights_dtype")
    if dtype not in ("bf16", "fp16"):
        return None
    return (f"the file holds a {dtype} weights-only copy: its weights were upcast to "
            f"float32 (they differ from the trained ones by {dtype} rounding)")


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------

def _check_mode(mode: str | None) -> None:
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be 'eval', 'train' or None, got {mode!r}")


def _use_exact_gelu(model: nn.Module) -> None:
    """nanoGPT uses erf GELU where GPT-2 (and GPTModel) use the tanh approximation."""
    for module in model.modules():
        if isinstance(module, nn.GELU):
            module.approximate = "none"


def load_pretrained_model(checkpoint_path: str | Path, device: str | torch.device | None = None,
                          mode: str = "eval", trust_checkpoint: bool = False,
                          config: ModelConfig | dict | None = None
                          ) -> tuple[GPTModel, dict[str, Any]]:
    """Build a model from a checkpoint's own config and load its weights (strict).

    Returns `(model, checkpoint)`: `checkpoint` is the file's dict without
    `model_state_dict` (its tensors now live in the model; the optimizer state and
    metadata are kept), plus `config` (as a dict), `checkpoint_path`, `format` and
    `load_notes`. `config` is needed only for a bare state dict whose shapes match no
    GPT-2 preset. `mode` is "eval" (inference; the default) or "train" (resume, fine-tune).
    """
    _check_mode(mode)
    target = resolve_device(device)
    path = Path(checkpoint_path)
    recognized = inspect_checkpoint(path, trust_checkpoint, config)
    model_config = _model_config(recognized, config, str(path))
    check_layer_count(model_config, recognized.state_dict, str(path))
    model = meta_skeleton(model_config)  # shapes only: no memory, no init
    state_dict, report = match_state_dict(recognized, model, str(path))
    if not report.complete:
        _raise_mismatch(report)
    check_weights(state_dict, str(path))
    if any(tensor.dtype == torch.float64 for tensor in state_dict.values()):
        state_dict = {key: tensor.float() if tensor.dtype == torch.float64 else tensor
                      for key, tensor in state_dict.items()}
        recognized.notes.append("float64 weights were cast to float32")
    note = half_copy_note(recognized.metadata)
    if note:  # the model trains and runs in float32; the file saved half the bytes
        state_dict = {key: tensor.float() if tensor.is_floating_point() else tensor
                      for key, tensor in state_dict.items()}
        recognized.notes.append(note)
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.tie_weights()  # assign=True gave the head its own Parameter object
    leftover = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
                if t.is_meta]
    if leftover:  # cannot happen after a strict load; guards against model changes
        raise ArchitectureMismatchError(f"tensors not set by the checkpoint: {leftover}")
    if recognized.metadata.get("gelu_approximate") == "none":
        _use_exact_gelu(model)
    model.to(target)
    model.train(mode == "train")
    checkpoint = dict(recognized.metadata)
    checkpoint.update(config=model_config.to_dict(), checkpoint_path=str(path),
                      format=recognized.format, load_notes=list(recognized.notes))
    return model, checkpoint


def load_model_weights(model: nn.Module | None, checkpoint_path: str | Path,
                       device: str | torch.device | None = None, strict: bool = True,
                       mode: str | None = "eval", trust_checkpoint: bool = False
                       ) -> LoadReport:
    """Load a checkpoint's weights into an existing model, all or nothing.

    Everything that can fail (reading, recognising, matching keys and shapes, NaN checks,
    allocating on the target device) happens before the model changes; then the staged
    tensors are swapped in. Parameter objects stay the same (an optimizer built on them
    keeps working); their dtypes are the model's. `strict=False` loads only the tensors that
    fit and warns with a summary; the returned `LoadReport` lists every skipped key.
    `mode`: "eval", "train", or None to keep the model's current mode.
    """
    if model is None:
        raise ModelNotInitializedError(
            "Model instance not found: there is no model to load weights into. Fix: "
            "create the model first (GPTModel(config)) and load into it, or use "
            "load_pretrained_model(path), which builds the model from the checkpoint's "
            "config.")
    _check_mode(mode)
    target = resolve_device(device)
    path = Path(checkpoint_path)
    recognized = inspect_checkpoint(path, trust_checkpoint, getattr(model, "config", None))
    state_dict, report = match_state_dict(recognized, model, str(path))
    if strict and not report.complete:
        _raise_mismatch(report)
    if not state_dict:
        _raise_mismatch(report)  # nothing fits at all: surely the wrong checkpoint
    check_weights(state_dict, str(path))
    if any(tensor.dtype == torch.float64 for tensor in state_dict.values()):
        report.notes.append("float64 weights were cast to the model's dtype")
    note = half_copy_note(recognized.metadata)
    if note:  # _stage casts every tensor to the model's dtype
        report.notes.append(note)
    staged = _stage(model, state_dict, target)
    _swap_in(model, staged)  # plain assignments from here on: nothing left to fail
    if recognized.metadata.get("gelu_approximate") == "none":
        _use_exact_gelu(model)
    if mode is not None:
        model.train(mode == "train")
    if not report.complete:
        warnings.warn(f"partial load of {path}: {report.summary()} (see the returned "
                      "LoadReport for the keys)", stacklevel=2)
    return report


def _stage(model: nn.Module, state_dict: dict[str, torch.Tensor], target: torch.device
           ) -> list[tuple[nn.Module, str, torch.Tensor, torch.Tensor | None]]:
    """New tensors for every parameter and buffer, on `target`, in the model's dtypes.

    Loaded tensors are copied (never left memory-mapped); the rest are moved only when the
    device changes. Allocation failures (out of memory) happen here, before any change.
    """
    staged = []
    seen: set[int] = set()
    with torch.no_grad():
        for module_name, module in model.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for kind in ("_parameters", "_buffers"):
                for name, current in getattr(module, kind).items():
                    if current is None or id(current) in seen:
                        continue
                    seen.add(id(current))
                    source = state_dict.get(prefix + name)
                    if source is None:
                        source = _tied_source(model, current, state_dict)
                    if source is not None:
                        new = source.to(device=target, dtype=current.dtype, copy=True)
                    else:
                        new = current.detach().to(target)
                    grad = getattr(current, "grad", None)
                    new_grad = grad.to(target) if grad is not None else None
                    staged.append((module, f"{kind}:{name}", new, new_grad))
    return staged


def _tied_source(model: nn.Module, current: torch.Tensor, state_dict: dict[str, torch.Tensor]
                 ) -> torch.Tensor | None:
    """A tensor in the file for another name of the same (tied) parameter."""
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if parameter is current and name in state_dict:
            return state_dict[name]
    return None


def _swap_in(model: nn.Module, staged: list) -> None:
    for module, slot, new, new_grad in staged:
        kind, name = slot.split(":", 1)
        if kind == "_parameters":
            parameter = module._parameters[name]
            parameter.data = new  # same Parameter object: optimizers keep their references
            if parameter.grad is not None:
                parameter.grad = new_grad
        else:
            module._buffers[name] = new
