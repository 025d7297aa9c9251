"""Model and training configuration.

`ModelConfig` uses seed 000's field names because they are the checkpoint contract: every
checkpoint stores `config` as a plain dict of these fields. `ModelConfig.from_dict` is the
one way in from such a dict; it migrates legacy keys and rejects anything it cannot trust.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Keys that older checkpoints used, mapped to today's names.
LEGACY_MODEL_KEYS = {"query_key_value_bias": "use_attention_bias"}

GPT2_VOCAB_SIZE = 50257


class ConfigError(ValueError):
    """A configuration value or key that cannot be used; the message names it."""


@dataclass
class ModelConfig:
    """Shape of a GPT-2 style model. Defaults are GPT-2 small (124M)."""

    vocab_size: int = GPT2_VOCAB_SIZE
    context_length: int = 1024
    embedding_dimension: int = 768
    number_of_heads: int = 12
    number_of_layers: int = 12
    dropout_rate: float = 0.1
    use_attention_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "embedding_dimension",
                     "number_of_heads", "number_of_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.embedding_dimension % self.number_of_heads != 0:
            raise ConfigError(
                f"embedding_dimension ({self.embedding_dimension}) must be divisible by "
                f"number_of_heads ({self.number_of_heads}); "
                f"{self.embedding_dimension} / {self.number_of_heads} = "
                f"{self.embedding_dimension / self.number_of_heads:.3g}"
            )
        if not 0.0 <= float(self.dropout_rate) < 1.0:
            raise ConfigError(f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
        self.dropout_rate = float(self.dropout_rate)
        self.use_attention_bias = bool(self.use_attention_bias)

    @property
    def head_dimension(self) -> int:
        return self.embedding_dimension // self.number_of_heads

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (ints, floats, bools): safe for `torch.load(weights_only=True)`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a checkpoint's `config` dict, migrating legacy keys.

        Unknown keys are an error rather than silently dropped: a key we do not understand
        may change the architecture, and a wrong architecture loads garbage.
        """
        if isinstance(data, ModelConfig):
            return dataclasses.replace(data)
        if not isinstance(data, dict):
            raise ConfigError(f"model config must be a dict, got {type(data).__name__}")
        data = dict(data)
        for old, new in LEGACY_MODEL_KEYS.items():
            if old in data:
                legacy_value = data.pop(old)
                if new in data and data[new] != legacy_value:
                    raise ConfigError(
                        f"config has both {old}={legacy_value!r} and {new}={data[new]!r}; "
                        f"remove the legacy key {old!r}"
                    )
                data.setdefault(new, legacy_value)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown model config key(s) {unknown}; expected some of {sorted(known)}"
            )
        return cls(**data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A copy of a preset from `GPT2_CONFIGS` (by name or alias) with optional overrides."""
        key = PRESET_ALIASES.get(name, name)
        if key not in GPT2_CONFIGS:
            choices = sorted(set(GPT2_CONFIGS) | set(PRESET_ALIASES))
            raise ConfigError(f"unknown model preset {name!r}; choose one of {choices}")
        return dataclasses.replace(GPT2_CONFIGS[key], **overrides)


def _gpt2(dim: int, heads: int, layers: int) -> ModelConfig:
    return ModelConfig(GPT2_VOCAB_SIZE, 1024, dim, heads, layers, 0.1, True)


# GPT-2's released shapes (use_attention_bias=True: GPT-2's c_attn has a bias, and dropping
# it, as seed 000 did, gives wrong logits). `tiny` is for tests and quick demos.
GPT2_CONFIGS: dict[str, ModelConfig] = {
    "small": _gpt2(768, 12, 12),
    "medium": _gpt2(1024, 16, 24),
    "large": _gpt2(1280, 20, 36),
    "xl": _gpt2(1600, 25, 48),
    "tiny": ModelConfig(GPT2_VOCAB_SIZE, 128, 128, 4, 2, 0.0, True),
}
PRESET_ALIASES = {
    "gpt2": "small",
    "gpt2-small": "small",
    "gpt2-medium": "medium",
    "gpt2-large": "large",
    "gpt2-xl": "xl",
    "124M": "small",
    "355M": "medium",
    "774M": "large",
    "1558M": "xl",
}

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Half precisions the weights-only copies may be written in (None: as trained, fp32).
WEIGHTS_ONLY_DTYPES = ("bf16", "fp16")


def _setting(default: Any, meaning: str) -> Any:
    """A `TrainingConfig` field with its one-line meaning (read by `setting_help`)."""
    return field(default=default, metadata={"help": meaning})


@dataclass
class TrainingConfig:
    """Optimisation, evaluation and checkpointing settings for `Trainer`.

    Each field is defined here once, with its default and its meaning (`setting_help`);
    utils/settings.py's table adds its flag and form field, and the command line
    (`python -m utils train --help`) and the notebook's settings cell are derived from
    that. An epoch is `len(train tokens) // (batch_size * context_length)`
    micro-batches, divided by `gradient_accumulation_steps`.
    """

    learning_rate: float = _setting(
        6e-4, "peak learning rate, reached after the warmup, then cosine-decayed")
    min_learning_rate: float = _setting(
        6e-5, "learning rate at the end of the decay (at most learning_rate)")
    warmup_steps: int = _setting(100, "steps of linear warmup from 0 to the peak learning rate")
    max_steps: int | None = _setting(
        1000, "optimizer steps to train for (wins over epochs when both are set)")
    epochs: int | None = _setting(
        None, "passes over the training tokens (used when max_steps is None)")
    batch_size: int = _setting(8, "sequences per micro-batch, per process")
    gradient_accumulation_steps: int = _setting(1, "micro-batches per optimizer step")
    weight_decay: float = _setting(
        0.1, "AdamW weight decay of matrices and embeddings, not biases or norms (0: none)")
    betas: tuple[float, float] = _setting((0.9, 0.95), "AdamW's (beta1, beta2)")
    grad_clip: float | None = _setting(
        1.0, "clip the gradient norm to this value (0 or None: no clipping)")
    eval_interval: int = _setting(100, "optimizer steps between validation-loss evaluations")
    eval_batches: int = _setting(20, "validation batches averaged per evaluation")
    checkpoint_interval: int | None = _setting(
        100, "optimizer steps between checkpoints (the last step is always saved)")
    checkpoint_every_epoch: bool = _setting(False, "also save a checkpoint after every epoch")
    checkpoint_dir: str = _setting(
        "checkpoints", "folder for the checkpoints (empty: write none)")
    keep_last: int | None = _setting(3, "newest checkpoints to keep (None: keep all)")
    keep_best: int | None = _setting(1, "best checkpoints by val_loss to keep as well")
    background_checkpointing: bool = _setting(
        True, "write checkpoints on a background thread while training goes on")
    precision: str = _setting(
        "auto", "auto | fp32 | bf16 | fp16; auto: fp32 on CPU, bf16 on CUDA >= 8.0, fp16 below")
    compile: bool | str = _setting(
        "auto", "torch.compile: auto (on CUDA where it repays the warm-up), on or off")
    activation_checkpointing: bool = _setting(
        False, "recompute each block in the backward pass: far less memory, ~1/3 more compute")
    log_interval: int = _setting(
        10, "optimizer steps between reads of the loss (progress bar, metrics log)")
    seed: int = _setting(1337, "random seed of batch order and dropout (CLI: initial weights too)")
    device: str | None = _setting(None, "cpu | cuda | cuda:1 | mps; unset: the best available")
    log_to: str = _setting(
        "", "also log the metrics to: tensorboard, csv, wandb (comma-separated; empty: none)")
    log_dir: str = _setting(
        "", "folder of those logs, a subfolder per run (empty: <checkpoint_dir>/logs)")
    sample_every: int = _setting(
        0, "print and log a text sample every N evaluations and at the last (0: none)")
    sample_prompt: str = _setting(
        "", "prompt of the text samples (empty: start from the end-of-text token)")
    keep_full: int | None = _setting(
        1, "newest checkpoints keeping the optimizer state (None: all); others: weights only")
    weights_only_dtype: str | None = _setting(
        None, "bf16 | fp16: weights-only copies in half precision; unset: as trained (fp32)")
    check_storage: bool = _setting(
        True, "refuse to train when the checkpoints would not fit in their folder")

    def __post_init__(self) -> None:
        self.betas = _check_training_values(self)
        self.log_to = _logger_names(self.log_to)

    @property
    def loggers(self) -> tuple[str, ...]:
        """The names in `log_to`, e.g. ("tensorboard", "csv")."""
        return tuple(name for name in self.log_to.split(",") if name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown training config key(s) {unknown}; expected some of {sorted(known)}"
            )
        return cls(**data)  # __post_init__ turns a JSON list of betas back into a tuple


def setting_help(name: str) -> str:
    """The one-line meaning of the `TrainingConfig` field `name` (for help texts, comments)."""
    return _training_field(name).metadata["help"]


def setting_default(name: str) -> Any:
    """The default of the `TrainingConfig` field `name`."""
    return _training_field(name).default


def _training_field(name: str) -> dataclasses.Field:
    for item in fields(TrainingConfig):
        if item.name == name:
            return item
    raise ConfigError(f"TrainingConfig has no setting {name!r}")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _require(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {rule}, got {value!r}")


def _check_training_values(config: TrainingConfig) -> tuple[float, float]:
    """Raise `ConfigError` naming the first setting, in field order, that cannot be used;
    return the betas as a tuple of floats. Non-finite numbers are refused: a NaN learning
    rate would train for hours and save NaN checkpoints."""
    c = config
    _require(_is_number(c.learning_rate) and c.learning_rate > 0, "learning_rate",
             "a positive finite number", c.learning_rate)
    _require(_is_number(c.min_learning_rate) and c.min_learning_rate >= 0,
             "min_learning_rate", "a finite number >= 0", c.min_learning_rate)
    if c.min_learning_rate > c.learning_rate:
        raise ConfigError(f"min_learning_rate ({c.min_learning_rate}) exceeds learning_rate "
                          f"({c.learning_rate}); lower min_learning_rate")
    for name, minimum in (("warmup_steps", 0), ("max_steps", 1), ("epochs", 1),
                          ("batch_size", 1), ("gradient_accumulation_steps", 1)):
        _check_count(c, name, minimum)
    if c.max_steps is None and c.epochs is None:
        raise ConfigError("set max_steps or epochs (both are None)")
    _require(_is_number(c.weight_decay) and c.weight_decay >= 0, "weight_decay",
             "a finite number >= 0", c.weight_decay)
    betas = tuple(c.betas) if isinstance(c.betas, (list, tuple)) else ()
    _require(len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas), "betas",
             "two numbers in [0, 1)", c.betas)
    _require(c.grad_clip is None or (_is_number(c.grad_clip) and c.grad_clip >= 0),
             "grad_clip", "a finite number >= 0 or None", c.grad_clip)
    for name, minimum in (("eval_interval", 1), ("eval_batches", 1), ("log_interval", 1),
                          ("checkpoint_interval", 1), ("keep_last", 0), ("keep_best", 0)):
        _check_count(c, name, minimum)
    _require(c.precision in PRECISIONS, "precision", f"one of {PRECISIONS}", c.precision)
    c.compile = _compile_setting(c.compile)
    _check_count(c, "keep_full", 1)
    _require(c.weights_only_dtype is None or c.weights_only_dtype in WEIGHTS_ONLY_DTYPES,
             "weights_only_dtype", f"None or one of {WEIGHTS_ONLY_DTYPES}",
             c.weights_only_dtype)
    _require(_is_integer(c.seed), "seed", "an integer", c.seed)
    _check_count(c, "sample_every", 0)
    for name in ("log_dir", "sample_prompt"):
        _require(isinstance(getattr(c, name), str), name, "text", getattr(c, name))
    return tuple(float(b) for b in betas)


# What `compile` accepts: True / False / "auto", and the words of the CLI and notebook form.
COMPILE_WORDS = {"auto": "auto", "on": True, "off": False, "true": True, "false": False}


def _compile_setting(value: Any) -> bool | str:
    """`compile` as True, False or "auto" ("on"/"off" and "True"/"False" in any case too)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in COMPILE_WORDS:
        return COMPILE_WORDS[value.strip().lower()]
    raise ConfigError(f"compile must be 'auto', True or False (or 'on' / 'off'), got {value!r}")


# What `log_to` may name (utils/training/engine/loggers.py writes each).
LOGGERS = ("tensorboard", "csv", "wandb")


def _logger_names(value: Any) -> str:
    """`log_to` as "name,name" (lower case, known names, no repeats); a list or tuple of
    names is accepted too. A comma string stays a plain JSON value in checkpoints."""
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        value = ",".join(value)
    _require(isinstance(value, str), "log_to", f"comma-separated names from {LOGGERS}", value)
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in LOGGERS]
    if unknown:
        raise ConfigError(f"log_to names {unknown[0]!r}, which is not a logger; choose from "
                          f"{', '.join(LOGGERS)} (comma-separated), or leave it empty")
    return ",".join(dict.fromkeys(names))


_OPTIONAL_COUNTS = ("max_steps", "epochs", "checkpoint_interval", "keep_last", "keep_best",
                    "keep_full")


def _check_count(config: TrainingConfig, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if value is None and name in _OPTIONAL_COUNTS:
        return
    or_none = " or None" if name in _OPTIONAL_COUNTS else ""
    _require(_is_integer(value), name, "an integer" + or_none, value)
    _require(value >= minimum, name, f">= {minimum}{or_none}", value)
