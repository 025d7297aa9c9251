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
from utils.config import (
    PRECISIONS,
    WEIGHTS_ONLY_DTYPES,
    TrainingConfig,
    setting_default,
    setting_help,
)
from utils.errors import UserError

# TrainingConfig field -> its flag. Help texts and defaults come from TrainingConfig
# (`setting_help`, `setting_default`): a setting is defined there once.
TRAINING_FLAGS = {
    "max_steps": "--max-steps", "epochs": "--epochs", "batch_size": "--batch-size",
    "gradient_accumulation_steps": "--grad-accum", "learning_rate": "--lr",
    "min_learning_rate": "--min-lr", "warmup_steps": "--warmup-steps",
    "weight_decay": "--weight-decay", "grad_clip": "--grad-clip",
    "eval_interval": "--eval-interval", "eval_batches": "--eval-batches",
    "precision": "--precision", "compile": "--compile",
    "activation_checkpointing": "--activation-checkpointing", "log_interval": "--log-interval",
    "seed": "--seed", "device": "--device",
    "checkpoint_interval": "--checkpoint-interval", "checkpoint_dir": "--checkpoint-dir",
    "keep_last": "--keep-last", "keep_best": "--keep-best", "keep_full": "--keep-full",
    "weights_only_dtype": "--weights-only-dtype",
    "log_to": "--log-to", "log_dir": "--log-dir", "sample_every": "--sample-every",
    "sample_prompt": "--sample-prompt",
}
# Set otherwise: background_checkpointing by --sync-checkpoints and check_storage by
# --ignore-storage-check (their opposites); the others keep TrainingConfig's default (or
# the checkpoint's, with --resume).
FIELDS_WITHOUT_FLAG = ("background_checkpointing", "betas", "checkpoint_every_epoch",
                       "check_storage")
MODEL_FLAGS = {"number_of_layers": "--layers", "number_of_heads": "--heads",
               "embedding_dimension": "--dim", "context_length": "--context",
               "dropout_rate": "--dropout"}
# Library messages name settings by field; a command-line user sees the flag (__main__, and
# the Trainer's printed messages). Fit's arguments are flags too.
# cache_dir: the token cache folder (its flag is --cache-dir).
SETTING_FLAGS = {**TRAINING_FLAGS, **MODEL_FLAGS, "resume_from=None": "--new-run",
                 "cache_dir": "--cache-dir"}


# Settings whose None the command line can give explicitly, and the words for it (a parsed
# None means "not given": with --resume the checkpoint's value then stands).
NONE_WORDS = {"grad_clip": ("none",), "keep_last": ("all", "none"), "keep_best": ("all", "none"),
              "keep_full": ("all", "none")}


class _ExplicitNone:
    """What `--keep-last all` parses to: the setting's None, given on purpose."""

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


def add_setting(group: argparse._ActionsContainer, field: str, note: str = "") -> None:
    """`--flag` for the TrainingConfig `field`: its meaning, type and default from there.

    The parsed default is None (False for a switch): "not given", so that `--resume` can
    take the checkpoint's value instead.
    """
    flag, default = TRAINING_FLAGS[field], setting_default(field)
    shown = "" if default is None or isinstance(default, bool) else f"default: {default}"
    shown = "default: ''" if default == "" else shown  # an empty text, not a missing one
    suffix = "; ".join(part for part in (shown, note) if part)
    help_text = setting_help(field) + (f" ({suffix})" if suffix else "")
    if isinstance(default, bool):
        group.add_argument(flag, action="store_true", help=help_text)
    elif field == "precision":
        group.add_argument(flag, choices=PRECISIONS, help=help_text)
    elif field == "compile":  # `--compile` alone: on
        group.add_argument(flag, nargs="?", const="on", choices=("auto", "on", "off"),
                           help=help_text)
    elif field in NONE_WORDS:
        group.add_argument(flag, type=_or_none(_setting_type(field), NONE_WORDS[field]),
                           help=help_text)
    elif field == "weights_only_dtype":
        group.add_argument(flag, choices=WEIGHTS_ONLY_DTYPES, help=help_text)
    else:
        group.add_argument(flag, type=_setting_type(field), help=help_text)


def _setting_type(field: str) -> type:
    """int, float or str: the TrainingConfig annotation without its `| None`."""
    hint = typing.get_type_hints(TrainingConfig)[field]
    return next(arg for arg in typing.get_args(hint) or (hint,) if arg is not type(None))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model (checkpoints, resume, torchrun)",
        description="Train a GPT-2 style model on a text file or folder (default: the "
                    "built-in corpus), writing timestamped crash-safe checkpoints. Works "
                    "under `torchrun --nproc_per_node=N -m utils train ...` (DDP). With "
                    "--resume, a setting not given comes from the checkpoint.",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--preset", default=None,
                       help="tiny | small (gpt2) | medium | large | xl (default: tiny)")
    model.add_argument("--layers", type=int,
                       help="number of transformer blocks (default: the preset's)")
    model.add_argument("--heads", type=int, help="attention heads (default: the preset's)")
    model.add_argument("--dim", type=int, help="embedding dimension (default: the preset's)")
    model.add_argument("--context", type=int,
                       help="context length in tokens (default: the preset's)")
    model.add_argument("--dropout", type=float, help="dropout rate (default: the preset's)")
    model.add_argument("--init-from", default=None,
                       help="start from GPT-2 weights: gpt2 | gpt2-medium | ... | a local "
                            "save_pretrained folder or .safetensors/.bin file (default: "
                            "random initial weights)")
    data = parser.add_argument_group("data")
    data.add_argument("--data", default=None,
                      help="a .txt file or folder of them, a nanoGPT folder (train.bin/val.bin), "
                           "llm.c .bin shards (a file or folder), hf:NAME[?config=&split=&column=] "
                           "or a save_to_disk folder (default: built-in corpus); see "
                           "docs/08-data.md")
    data.add_argument("--tokenizer", default=None,
                      help="gpt2 (default) | byte; token files bring their own")
    data.add_argument("--cache-dir", default=None,
                      help="folder for the token cache of prepared text (default: the "
                           "local disk's user cache, ~/.cache/gpt2-training/data; keep it "
                           "off Google Drive)")
    data.add_argument("--val-fraction", type=float, default=0.1,
                      help="share of the tokens held out for validation (inputs with their "
                           "own validation split keep it)")
    data.add_argument("--val-split", choices=("end", "block", "document"), default="end",
                      help="validation: the end of the corpus (default), blocks or whole "
                           "documents spread over it (inputs with their own val keep it)")
    run_group = parser.add_argument_group("training")
    length = run_group.add_mutually_exclusive_group()
    add_setting(length, "max_steps")
    add_setting(length, "epochs", note="default: none, --max-steps bounds the run")
    for field in ("batch_size", "gradient_accumulation_steps", "learning_rate"):
        add_setting(run_group, field)
    add_setting(run_group, "min_learning_rate", note="with --lr: lr/10")
    for field in ("warmup_steps", "weight_decay", "grad_clip", "eval_interval",
                  "eval_batches", "precision", "compile", "activation_checkpointing",
                  "log_interval", "seed", "device"):
        add_setting(run_group, field)
    checkpoints = parser.add_argument_group("checkpoints")
    for field in ("checkpoint_interval", "checkpoint_dir"):
        add_setting(checkpoints, field)
    for field in ("keep_last", "keep_best", "keep_full"):
        add_setting(checkpoints, field, note="all or None: keep every one")
    add_setting(checkpoints, "weights_only_dtype")
    checkpoints.add_argument("--sync-checkpoints", action="store_true",
                             help="write checkpoints on the training thread (default: "
                                  "in the background)")
    checkpoints.add_argument("--ignore-storage-check", action="store_true",
                             help="train even when the checkpoints would not fit in the "
                                  "free space of --checkpoint-dir (default: refuse before "
                                  "the first step)")
    start = checkpoints.add_mutually_exclusive_group()
    start.add_argument("--resume", nargs="?", const="latest", default="auto",
                       metavar="auto|latest|PATH",
                       help="auto (default): continue the newest run with these settings "
                            "if unfinished, else start a new one; latest: the newest "
                            "checkpoint, its settings unless flags say otherwise; or PATH")
    start.add_argument("--new-run", action="store_true",
                       help="always start a new run (other runs' files stay untouched)")
    logging = parser.add_argument_group("logging")
    for field in ("log_to", "log_dir", "sample_every", "sample_prompt"):
        add_setting(logging, field)
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar: print a line per log interval and per "
                             "evaluation instead (also when the output is not a terminal)")
    parser.set_defaults(func=run)


def _resume_source(args: argparse.Namespace) -> tuple[Any, dict[str, Any] | None]:
    """(checkpoint path, its contents) for --resume latest|PATH, else (None, None)."""
    if args.new_run or args.resume == "auto":
        return None, None
    from utils.training.engine.checkpoint import check_resumable, load_checkpoint_file
    from utils.training.engine.recovery import load_newest_readable

    def load(path: Path) -> dict[str, Any]:
        checkpoint = load_checkpoint_file(path, mmap=True)  # tensors stay on disk
        check_resumable(path, checkpoint)
        return checkpoint

    if args.resume == "latest":
        return load_newest_readable(args.checkpoint_dir or "checkpoints", load)
    path = Path(args.resume)
    return path, load(path)


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
        values["min_learning_rate"] = args.lr / 10
    values["background_checkpointing"] = not args.sync_checkpoints
    values["check_storage"] = not args.ignore_storage_check
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
    if folder and Path(folder).exists() and not Path(folder).is_dir():
        raise UserError(f"--checkpoint-dir {folder} is a file, not a folder; name a folder "
                        f"for the checkpoints (it is created if missing)")
    if folder:
        from utils.fileio import check_writable_folder

        check_writable_folder(folder)


def model_config(args: argparse.Namespace, saved: dict[str, Any] | None, vocab_size: int):
    """The new model's ModelConfig: the checkpoint's, a preset, or explicit sizes.

    A new model gets the tokenizer's vocabulary (257 for `byte`, 50257 for `gpt2`).
    """
    from utils.config import ModelConfig

    sizes = {"number_of_layers": args.layers, "number_of_heads": args.heads,
             "embedding_dimension": args.dim, "context_length": args.context,
             "dropout_rate": args.dropout}
    sizes = {key: value for key, value in sizes.items() if value is not None}
    if saved is not None and args.preset is None:
        return ModelConfig.from_dict({**saved["config"], **sizes})
    return ModelConfig.from_preset(args.preset or "tiny", vocab_size=vocab_size, **sizes)


def check_training_fits(config: Any, training_config: Any, device: Any) -> None:
    """Refuse, before anything is allocated, a model or batch that cannot fit in memory:
    the notebook's check (`check_memory`: weights, gradients, AdamW, activations and the
    output head in the precision this device will use), with a batch size that fits."""
    from utils.pretrained.memory import check_memory, parameter_count
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
