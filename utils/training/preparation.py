"""Preparing a training run from its settings: the policy both front ends share.

`python -m utils train` calls `prepare_run`; the notebook takes the same steps one cell at
a time through the functions it is made of, so a setting means the same in both:

1. `data_tokenizer`: text is read with the chosen tokenizer; token files (nanoGPT, llm.c)
   bring their own ids and vocabulary.
2. `new_model_config` / `pretrained_model_config` (utils/pretrained): the model to train: a preset (or a
   checkpoint's shape) on the tokenizer's vocabulary, or a pretrained model's own shape.
3. `check_run_fits`: weights, gradients, AdamW state and one micro-batch's activations in
   the precision the device will use, against its free memory, before anything exists.
   For text that is before the corpus is read (its vocabulary is the tokenizer's).
4. The corpus (`load_data`; under torchrun rank 0 tokenises it first, `main_first`),
   then `build_model`.
5. The Trainer, given the corpus's token hash (`LoadedData.tokens_sha256`), so the run's
   fingerprint does not hash every token again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from utils.config import ModelConfig, TrainingConfig


def is_scratch(init_from: str) -> bool:
    """Whether `init_from` asks for a new model ("scratch" in any case, or nothing)."""
    return init_from.strip().lower() in ("", "scratch")


@dataclass(frozen=True)
class ModelChoice:
    """What the settings say of the model.

    `preset`: a `GPT2_CONFIGS` name; `sizes`: ModelConfig fields given on top of it;
    `saved`: a checkpoint's config (continuing its run: its shape wins over the default
    preset, `sizes` still on top); `init_from`: "scratch", a GPT-2 size or name, a folder or
    file of Hugging Face weights, or a hub id: the pretrained model then brings its shape.
    """

    preset: str | None = None
    sizes: dict[str, Any] = field(default_factory=dict)
    saved: dict[str, Any] | None = None
    init_from: str = "scratch"

    @property
    def from_scratch(self) -> bool:
        return is_scratch(self.init_from)


@dataclass(frozen=True)
class RunSettings:
    """Everything `prepare_run` needs: the training settings, the model, and the data
    (`data_path` None: the built-in corpus; `tokenizer` None: gpt2 for text, the token
    files' own otherwise)."""

    training: TrainingConfig
    model: ModelChoice = ModelChoice(preset="tiny")
    data_path: str | None = None
    tokenizer: str | None = None
    val_fraction: float = 0.1
    val_split: str = "end"
    cache_dir: str | None = None
    progress: bool = True


@dataclass
class PreparedRun:
    """A run ready to train: `trainer.fit()`."""

    data: Any  # utils.data.LoadedData
    model: Any  # GPTModel, on the CPU until fit() moves it
    model_config: ModelConfig
    trainer: Any  # utils.training.engine.trainer.Trainer
    dist: Any  # utils.training.engine.distributed.DistributedContext

    def summary(self) -> str:
        """One line: the model's size and shape, the data, the processes."""
        from utils.model import count_parameters

        config, data = self.model_config, self.data
        return (f"model: {count_parameters(self.model):,} parameters "
                f"({config.number_of_layers} layers, {config.number_of_heads} heads, "
                f"{config.embedding_dimension} wide, context {config.context_length}); "
                f"data: {len(data.train):,} training / {len(data.val):,} validation tokens "
                f"({data.kind}, {data.tokenizer_name}); {self.dist.world_size} process(es) "
                f"on {self.dist.device}")


class FitCheck(NamedTuple):
    """What `check_run_fits` found: bytes training needs, in which precision, and the
    free bytes of the device."""

    needed_bytes: int
    precision: str
    available_bytes: int


def data_tokenizer(data_path: str | Path | None, tokenizer: str | None, *,
                   chosen: bool = True) -> str | None:
    """The tokenizer `load_data` reads `data_path` with: for text `tokenizer` (None: gpt2).
    Token files (nanoGPT, llm.c) carry their own ids and vocabulary: a tokenizer `chosen`
    on purpose (a flag) is checked against theirs; one a form always holds (`chosen=False`)
    is left out."""
    from utils.data import TOKEN_FILE_KINDS, detect_kind

    return _tokenizer_for(detect_kind(data_path or None) in TOKEN_FILE_KINDS, tokenizer, chosen)


def _tokenizer_for(token_files: bool, tokenizer: str | None, chosen: bool = True) -> str | None:
    if not token_files:
        return tokenizer or "gpt2"
    return tokenizer if chosen else None


def new_model_config(choice: ModelChoice, vocab_size: int) -> ModelConfig:
    """A model trained from scratch: the checkpoint's shape when continuing one (unless a
    preset is named), else the preset on the tokenizer's vocabulary; `sizes` on top."""
    if choice.saved is not None and choice.preset is None:
        return ModelConfig.from_dict({**choice.saved["config"], **choice.sizes})
    return ModelConfig.from_preset(choice.preset or "tiny", vocab_size=vocab_size,
                                   **choice.sizes)


def describe_model(config: ModelConfig, choice: ModelChoice) -> str:
    """How messages name the model: the pretrained source, an unchanged preset by its name,
    otherwise its size and shape (setting names, which each front end shows its way)."""
    from utils.model.memory import parameter_count

    if not choice.from_scratch:
        return choice.init_from
    if choice.preset and choice.saved is None and not choice.sizes:
        return choice.preset
    return (f"a model of {parameter_count(config):,} parameters (number_of_layers "
            f"{config.number_of_layers}, embedding_dimension {config.embedding_dimension}, "
            f"context_length {config.context_length})")


def check_run_fits(config: ModelConfig, device: Any, *, batch_size: int,
                   precision: str = "auto", activation_checkpointing: bool = False,
                   context_length: int | None = None, name: str = "this model") -> FitCheck:
    """Refuse (`InsufficientMemoryError`, with a batch size and accumulation that fit) a
    model and micro-batch that cannot train on `device`, before anything is allocated."""
    from utils.model.memory import available_device_bytes, check_memory
    from utils.training.engine.precision import choose_precision_for

    chosen = choose_precision_for(device, precision).name
    needed = check_memory(config, device, training=True, name=name, batch_size=batch_size,
                          context_length=context_length, precision=chosen,
                          activation_checkpointing=activation_checkpointing)
    return FitCheck(needed, chosen, available_device_bytes(device))


def build_model(config: ModelConfig | None, init_from: str = "scratch",
                device: Any = "cpu") -> tuple[Any, ModelConfig]:
    """(model, config) in train mode on `device`: a new model of `config` (initialised
    from torch's current seed), or the pretrained weights `init_from` names."""
    from utils.model import GPTModel

    if is_scratch(init_from):
        if config is None:
            raise ValueError("a model trained from scratch needs its ModelConfig")
        return GPTModel(config).to(device).train(), config
    from utils.pretrained.huggingface import load_openai_gpt2

    model, config = load_openai_gpt2(init_from, device=device, training=True)
    return model.train(), config


def known_tokens_sha256(data: Any, train: Any, val: Any) -> str | None:
    """`data.tokens_sha256` (hashed once per corpus) when `train` and `val` (loaders or
    arrays) hold `data`'s own ids; None otherwise (the Trainer then hashes what it got),
    e.g. after the corpus was loaded again without building new loaders."""
    def ids(source: Any) -> Any:
        return getattr(source, "tokens", source)

    if data is None or ids(train) is not data.train or ids(val) is not data.val:
        return None
    return data.tokens_sha256


def _planned_config(settings: RunSettings, vocab_size: int, device: Any) -> ModelConfig | None:
    """The model `settings` ask for, on `vocab_size` ids if new; refused (memory) if it
    cannot train. None: a hub id, checked when it loads."""
    choice, training = settings.model, settings.training
    if choice.from_scratch:
        config = new_model_config(choice, vocab_size)
    else:
        from utils.pretrained.huggingface import pretrained_model_config

        config = pretrained_model_config(choice.init_from)
    if config is not None:
        check_run_fits(config, device, batch_size=training.batch_size,
                       precision=training.precision,
                       activation_checkpointing=training.activation_checkpointing,
                       name=describe_model(config, choice))
    return config


def prepare_run(settings: RunSettings) -> PreparedRun:
    """Data, model and Trainer for `settings`, each step in the order above; under torchrun
    every process calls it (rank 0 prepares the corpus's cache first)."""
    import torch

    from utils.data import TOKEN_FILE_KINDS, detect_kind, load_data
    from utils.tokenizer import get_tokenizer
    from utils.training.engine.distributed import setup_distributed
    from utils.training.engine.trainer import Trainer

    dist = setup_distributed(settings.training.device)
    token_files = detect_kind(settings.data_path) in TOKEN_FILE_KINDS
    tokenizer = _tokenizer_for(token_files, settings.tokenizer)
    planned = None
    if not token_files:  # text: the vocabulary is the tokenizer's, known before it is read
        planned = _planned_config(settings, get_tokenizer(tokenizer).n_vocab, dist.device)
    with dist.main_first():  # the others find rank 0's token cache ready
        data = load_data(settings.data_path, tokenizer, settings.val_fraction,
                         split=settings.val_split, cache_dir=settings.cache_dir,
                         progress=dist.is_main and settings.progress)
    if token_files:
        planned = _planned_config(settings, data.vocab_size, dist.device)
    torch.manual_seed(settings.training.seed)  # the same initial weights on every rank
    model, config = build_model(planned, settings.model.init_from)
    if data.vocab_size > config.vocab_size:
        raise ValueError(f"the data's tokenizer {data.tokenizer_name!r} has {data.vocab_size} "
                         f"ids but the model's vocabulary is {config.vocab_size}: the data "
                         "must be tokenised with the tokenizer the model was trained with")
    trainer = Trainer(model, settings.training, data.train, data.val,
                      tokenizer_name=data.tokenizer_name, progress=settings.progress,
                      data_sha256=data.tokens_sha256,
                      init_from=None if settings.model.from_scratch else settings.model.init_from)
    return PreparedRun(data, model, config, trainer, dist)
