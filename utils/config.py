"""Model and training configuration.

`ModelConfig` uses seed 000's field names because they are the checkpoint contract: every
checkpoint stores `config` as a plain dict of these fields. `ModelConfig.from_dict` is the
one way in from such a dict; it migrates legacy keys and rejects anything it cannot trust.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
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


@dataclass
class TrainingConfig:
    """Optimisation, evaluation and checkpointing settings for `Trainer`.

    Either `max_steps` or `epochs` bounds the run (`max_steps` wins when both are set);
    an epoch is `len(train tokens) // (batch_size * context_length)` optimizer steps of
    micro-batches times `gradient_accumulation_steps`.
    """

    learning_rate: float = 6e-4
    min_learning_rate: float = 6e-5
    warmup_steps: int = 100
    max_steps: int | None = 1000
    epochs: int | None = None
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    eval_interval: int = 100
    eval_batches: int = 20
    checkpoint_interval: int | None = 100
    checkpoint_every_epoch: bool = False
    checkpoint_dir: str = "checkpoints"
    keep_last: int | None = 3
    keep_best: int | None = 1
    background_checkpointing: bool = True
    precision: str = "auto"  # auto: fp32 on CPU/MPS, bf16 on CUDA >= 8.0, fp16 + GradScaler below
    compile: bool = False  # torch.compile for training and evaluation (warm-up time is printed)
    activation_checkpointing: bool = False  # recompute each block in backward: less memory
    log_interval: int = 10  # optimizer steps between reads of the loss (progress bar, log)
    seed: int = 1337
    device: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.max_steps is None and self.epochs is None:
            raise ConfigError("set max_steps or epochs (both are None)")
        for name in ("batch_size", "gradient_accumulation_steps", "eval_interval",
                     "eval_batches", "log_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("max_steps", "epochs", "checkpoint_interval", "keep_last", "keep_best"):
            value = getattr(self, name)
            if value is not None and value < (0 if name.startswith("keep") else 1):
                raise ConfigError(f"{name} must be positive or None, got {value!r}")
        if self.min_learning_rate > self.learning_rate:
            raise ConfigError(
                f"min_learning_rate ({self.min_learning_rate}) exceeds learning_rate "
                f"({self.learning_rate})"
            )
        self.betas = tuple(float(b) for b in self.betas)

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
