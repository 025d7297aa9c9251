"""`python -m utils train`: train a GPT-2 style model with checkpoints; resumable.

Single process:   python -m utils train --preset tiny --max-steps 200
Several GPUs:     torchrun --standalone --nproc_per_node=4 -m utils train --preset small ...
Again after a crash: the same command. It continues the folder's newest run with the same
settings (exactly where its last checkpoint left it), reports a finished run instead of
training it again, and otherwise starts a new run next to the others (`--new-run` always
starts one).

With --resume latest|PATH, settings not given on the command line come from the checkpoint
(model shape, batch size, schedule, tokenizer), so `--resume latest --max-steps 2000`
extends a run; a flag that is given wins.
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Any

from utils.cli.common import check_device, with_flag_names
from utils.config import ModelConfig, TrainingConfig
from utils.errors import UserError
from utils.settings import (
    SETTINGS,
    Setting,
    default_min_learning_rate,
    file_in_the_way,
    flag_names,
    flags_of,
)

# Derived from utils/settings.py's table, where each setting is defined once.
TRAINING_FLAGS = flags_of(TrainingConfig)  # TrainingConfig field -> its flag
MODEL_FLAGS = flags_of(ModelConfig)  # ModelConfig field -> its flag
# TrainingConfig fields no flag sets: background_checkpointing and check_storage are turned
# off by --sync-checkpoints and --ignore-storage-check; the others keep TrainingConfig's
# default (or the checkpoint's, with --resume).
FIELDS_WITHOUT_FLAG = tuple(name for name in TrainingConfig.__dataclass_fields__
                            if name not in TRAINING_FLAGS)
# Library messages name settings by field; a command-line user sees the flag (__main__, and
# the Trainer's printed messages). Fit's arguments are flags too.
SETTING_FLAGS = {**flag_names(), "resume_from=None": "--new-run"}


class _ExplicitNone:
    """What `--keep-last all` parses to (a setting's `none_words`): its None, given on
    purpose. A parsed None means "not given": with --resume the checkpoint's value stands."""

    def __repr__(self) -> str:
        return "None"


EXPLICIT_NONE = _ExplicitNone()


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def _or_none(kind: type, words: tuple[str, ...]) -> typing.Callable[[str], Any]:
    """`kind(text)`, or EXPLICIT_NONE for one of `words` (any case)."""
    def parse(text: str) -> Any:
        return EXPLICIT_NONE if text.strip().lower() in words else kind(text)

    parse.__name__ = kind.__name__  # argparse says "invalid int value: 'x'"
    return parse


def argument_options(row: Setting) -> dict[str, Any]:
    """The argparse keywords of `row.flag`: meaning, type, choices and default, from the
    table (a TrainingConfig setting's from its dataclass field).

    A config setting's parsed default is None (False for a switch): "not given", so that
    `--resume` can take the checkpoint's value instead (and a model size the preset's).
    """
    options: dict[str, Any] = {"help": _help_text(row), **row.argument}
    if row.choices is not None:
        options["choices"] = row.choices
    value = row.library_default
    if row.flag_negates or isinstance(value, bool):
        options["action"] = "store_true"
    elif row.config is None:
        options["default"] = value
        if isinstance(value, (int, float)):
            options["type"] = type(value)
    elif row.none_words:
        options["type"] = _or_none(row.value_type, row.none_words)
    elif row.choices is None:
        options["type"] = row.value_type
    return options


def _help_text(row: Setting) -> str:
    """The meaning, then (in parentheses) a TrainingConfig setting's default and the note;
    a model size not given is the preset's."""
    shown = ""
    if row.config is TrainingConfig and not row.flag_negates:
        default = row.library_default
        shown = "" if default is None or isinstance(default, bool) else f"default: {default}"
        shown = "default: ''" if default == "" else shown  # an empty text, not a missing one
    elif row.config is ModelConfig:
        shown = "default: the preset's"
    suffix = "; ".join(part for part in (shown, row.note) if part)
    return row.help + (f" ({suffix})" if suffix else "")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model (checkpoints, resume, torchrun)",
        description="Train a GPT-2 style model on a text file or folder (default: the "
                    "built-in corpus), writing timestamped crash-safe checkpoints. Works "
                    "under `torchrun --nproc_per_node=N -m utils train ...` (DDP). With "
                    "--resume, a setting not given comes from the checkpoint.",
    )
    sections: dict[str, Any] = {}  # --help's sections, in the table's order
    exclusive: dict[str, Any] = {}  # flags that exclude each other (--max-steps | --epochs)
    for row in SETTINGS:
        if row.flag is None:
            continue
        if row.group is not None and row.group not in sections:
            sections[row.group] = parser.add_argument_group(row.group)
        container = parser if row.group is None else sections[row.group]
        if row.exclusive:
            if row.exclusive not in exclusive:
                exclusive[row.exclusive] = container.add_mutually_exclusive_group()
            container = exclusive[row.exclusive]
        container.add_argument(row.flag, **argument_options(row))
    parser.set_defaults(func=run)


def _resume_source(args: argparse.Namespace) -> tuple[Any, dict[str, Any] | None]:
    """(checkpoint path, its contents) for --resume latest|PATH, else (None, None)."""
    if args.new_run or args.resume == "auto":
        return None, None
    from utils.training.engine.recovery import find_resume_checkpoint

    # the contents are read for their settings (tensors stay on disk); fit() restores them
    return find_resume_checkpoint(args.resume, args.checkpoint_dir or "checkpoints")


def build_training_config(args: argparse.Namespace, saved: dict[str, Any] | None,
                          resume_path: Any = None, data_state: dict[str, Any] | None = None):
    """TrainingConfig: the checkpoint's settings (if resuming), then the given flags.

    A resumed run keeps writing next to the checkpoint it resumed unless told otherwise.
    """
    values: dict[str, Any] = dict(saved or {})
    for field, flag in TRAINING_FLAGS.items():
        given = getattr(args, _dest(flag))
        if given is not None and given is not False:
            values[field] = None if given is EXPLICIT_NONE else given
    if args.epochs is not None:
        values["max_steps"] = None  # --epochs bounds the run (max_steps would win)
    if args.lr is not None and args.min_lr is None:
        values["min_learning_rate"] = default_min_learning_rate(args.lr)
    for row in SETTINGS:  # --sync-checkpoints, --ignore-storage-check
        if row.flag_negates:
            values[row.name] = not getattr(args, _dest(row.flag))
    if data_state and args.batch_size is None:
        # Keep the saved global batch (batch x processes) when the number of processes
        # changed, e.g. a 2-GPU run resumed on one: the same data stream continues.
        from utils.training.engine.distributed import launch_info

        world_size = launch_info()[2]
        global_batch = int(data_state["batch_size"]) * int(data_state.get("world_size", 1))
        if global_batch % world_size == 0:
            values["batch_size"] = global_batch // world_size
    if resume_path is not None and args.checkpoint_dir is None:
        values["checkpoint_dir"] = str(resume_path.parent)
    values.setdefault("checkpoint_dir", "checkpoints")
    return TrainingConfig.from_dict(values)


def check_checkpoint_dir(folder: str | None) -> None:
    """Refuse a --checkpoint-dir that is an existing file (checkpoints would replace it) or
    where nothing can be written (a read-only file system): every checkpoint would go to
    the local fallback folder instead."""
    # The folder itself (a file further up fails when `run` creates the folder, with an
    # OSError that names the path).
    if folder and file_in_the_way(folder) == Path(folder):
        raise UserError(f"--checkpoint-dir {folder} is a file, not a folder; name a folder "
                        f"for the checkpoints (it is created if missing)")
    if folder:
        from utils.fileio import check_writable_folder

        check_writable_folder(folder)


def model_config(args: argparse.Namespace, saved: dict[str, Any] | None, vocab_size: int):
    """The new model's ModelConfig: the checkpoint's, a preset, or explicit sizes.

    A new model gets the tokenizer's vocabulary (257 for `byte`, 50257 for `gpt2`).
    """
    sizes = {field: getattr(args, _dest(flag)) for field, flag in MODEL_FLAGS.items()}
    sizes = {key: value for key, value in sizes.items() if value is not None}
    if saved is not None and args.preset is None:
        return ModelConfig.from_dict({**saved["config"], **sizes})
    return ModelConfig.from_preset(args.preset or "tiny", vocab_size=vocab_size, **sizes)


def check_training_fits(config: Any, training_config: Any, device: Any) -> None:
    """Refuse, before anything is allocated, a model or batch that cannot fit in memory:
    the notebook's check (`check_memory`: weights, gradients, AdamW, activations and the
    output head in the precision this device will use), with a batch size that fits."""
    from utils.model.memory import check_memory, parameter_count
    from utils.training.engine.precision import choose_precision_for

    check_memory(config, device, training=True,
                 name=f"a model of {parameter_count(config):,} parameters (--layers "
                      f"{config.number_of_layers}, --dim {config.embedding_dimension}, "
                      f"--context {config.context_length})",
                 batch_size=training_config.batch_size,
                 precision=choose_precision_for(device, training_config.precision).name,
                 activation_checkpointing=training_config.activation_checkpointing)


def build_model(args: argparse.Namespace, config: Any):
    """(GPTModel, ModelConfig): GPT-2 weights for --init-from, else a new model of `config`."""
    from utils.model import GPTModel
    from utils.pretrained.huggingface import load_openai_gpt2

    if args.init_from:
        model, config = load_openai_gpt2(args.init_from, device="cpu", training=True)
        return model.train(), config
    return GPTModel(config), config


def run(args: argparse.Namespace) -> int:
    """Check the flags (cheap, before torch is imported), then build, train and report."""
    check_device(args.device)
    resume_path, checkpoint = _resume_source(args)
    training_config = build_training_config(
        args, checkpoint.get("training_config") if checkpoint else None, resume_path,
        checkpoint.get("data_state") if checkpoint else None)
    check_checkpoint_dir(training_config.checkpoint_dir)
    from utils.training.engine.loggers import check_loggers_available

    check_loggers_available(training_config.loggers)  # before the data is read
    import torch

    from utils.cli.recover import format_checkpoint_table
    from utils.data import TOKEN_FILE_KINDS, detect_kind, load_data
    from utils.model import count_parameters
    from utils.tokenizer import get_tokenizer
    from utils.training.engine.distributed import setup_distributed
    from utils.training.engine.recovery import list_checkpoints
    from utils.training.engine.trainer import Trainer

    # Token files (nanoGPT, llm.c) bring their own vocabulary; for text it is the tokenizer's,
    # known before any data is read, so the memory check comes first.
    tokenizer_name = args.tokenizer or (checkpoint or {}).get("tokenizer")
    token_files = detect_kind(args.data) in TOKEN_FILE_KINDS
    dist = setup_distributed(training_config.device)  # so only rank 0 tokenises
    new_config = None
    if not token_files and not args.init_from:
        tokenizer_name = tokenizer_name or "gpt2"
        new_config = model_config(args, checkpoint, get_tokenizer(tokenizer_name).n_vocab)
        check_training_fits(new_config, training_config, dist.device)
    if not dist.is_main:
        dist.barrier()
    data = load_data(args.data, tokenizer_name, args.val_fraction, split=args.val_split,
                     cache_dir=args.cache_dir, progress=dist.is_main and not args.no_progress)
    if dist.is_main:
        dist.barrier()
    train_tokens, val_tokens = data.train, data.val
    tokenizer_name, vocab_size = data.tokenizer_name, data.vocab_size
    if token_files and not args.init_from:
        new_config = model_config(args, checkpoint, vocab_size)
        check_training_fits(new_config, training_config, dist.device)
    torch.manual_seed(training_config.seed)  # the same initial weights on every rank
    model, config = build_model(args, new_config)
    if vocab_size > config.vocab_size:
        raise ValueError(f"tokenizer {tokenizer_name!r} has {vocab_size} ids but the model's "
                         f"vocabulary is {config.vocab_size}; use --tokenizer gpt2")
    del checkpoint  # the Trainer reads it again, fully, to restore the state
    if dist.is_main:
        print(f"model: {count_parameters(model):,} parameters "
              f"({config.number_of_layers} layers, {config.number_of_heads} heads, "
              f"{config.embedding_dimension} wide, context {config.context_length}); "
              f"data: {len(train_tokens):,} training / {len(val_tokens):,} validation tokens "
              f"({data.kind}, {tokenizer_name}); {dist.world_size} process(es) on {dist.device}")
    if training_config.checkpoint_dir:  # a folder, even if its name has a dot ("runs/v1.2")
        Path(training_config.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, training_config, train_tokens, val_tokens,
                      tokenizer_name=tokenizer_name, progress=not args.no_progress,
                      init_from=args.init_from)
    trainer.announce = lambda message: print(with_flag_names(message, SETTING_FLAGS))
    resume_from = None if args.new_run else (resume_path or "auto")
    history = trainer.fit(resume_from=resume_from)
    if dist.is_main:
        if history:
            last = history[-1]
            val = last["val_loss"]
            print(f"done: step {last['step']}, train loss {last['train_loss']:.4f}"
                  + (f", val loss {val:.4f}" if val is not None else ""))
        if training_config.checkpoint_dir:
            print(f"\ncheckpoints in {training_config.checkpoint_dir}:")
            print(format_checkpoint_table(list_checkpoints(training_config.checkpoint_dir)))
    return 0
