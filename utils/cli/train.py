"""`python -m utils train`: train a GPT-2 style model with checkpoints; resumable.

Single process:   python -m utils train --preset tiny --max-steps 200
Several GPUs:     torchrun --standalone --nproc_per_node=4 -m utils train --preset small ...
Resume:           python -m utils train --resume latest --checkpoint-dir checkpoints

With --resume, settings not given on the command line come from the checkpoint (model
shape, batch size, schedule, tokenizer), so `--resume latest --max-steps 2000` extends a
run; a flag that is given wins.
"""

from __future__ import annotations

import argparse
from typing import Any

# Command-line flag -> TrainingConfig field (None on the command line = not given).
TRAINING_FLAGS = {
    "max_steps": "max_steps", "epochs": "epochs", "batch_size": "batch_size",
    "grad_accum": "gradient_accumulation_steps", "lr": "learning_rate",
    "min_lr": "min_learning_rate", "warmup_steps": "warmup_steps",
    "weight_decay": "weight_decay", "grad_clip": "grad_clip",
    "eval_interval": "eval_interval", "eval_batches": "eval_batches",
    "checkpoint_interval": "checkpoint_interval", "checkpoint_dir": "checkpoint_dir",
    "keep_last": "keep_last", "keep_best": "keep_best", "precision": "precision",
    "log_interval": "log_interval", "seed": "seed", "device": "device",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a model (checkpoints, resume, torchrun)",
        description="Train a GPT-2 style model on a text file or folder (default: the "
                    "built-in corpus), writing timestamped crash-safe checkpoints. Works "
                    "under `torchrun --nproc_per_node=N -m utils train ...` (DDP).",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--preset", default=None,
                       help="tiny | small (gpt2) | medium | large | xl (default: tiny)")
    model.add_argument("--layers", type=int, help="number of transformer blocks")
    model.add_argument("--heads", type=int, help="attention heads")
    model.add_argument("--dim", type=int, help="embedding dimension")
    model.add_argument("--context", type=int, help="context length")
    model.add_argument("--dropout", type=float, help="dropout rate")
    model.add_argument("--init-from", default=None,
                       help="start from GPT-2 weights: gpt2 | gpt2-medium | ... | a local "
                            "save_pretrained folder or .safetensors/.bin file")
    data = parser.add_argument_group("data")
    data.add_argument("--data", default=None,
                      help="text file or folder of .txt files (default: built-in corpus)")
    data.add_argument("--tokenizer", default=None, help="gpt2 (default) | byte")
    data.add_argument("--val-fraction", type=float, default=0.1)
    run_group = parser.add_argument_group("training")
    length = run_group.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int, help="optimizer steps (default 200)")
    length.add_argument("--epochs", type=int, help="passes over the training tokens")
    run_group.add_argument("--batch-size", type=int, help="sequences per step per process")
    run_group.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    run_group.add_argument("--lr", type=float, help="peak learning rate")
    run_group.add_argument("--min-lr", type=float, help="final learning rate (default lr/10)")
    run_group.add_argument("--warmup-steps", type=int)
    run_group.add_argument("--weight-decay", type=float)
    run_group.add_argument("--grad-clip", type=float)
    run_group.add_argument("--eval-interval", type=int, help="steps between evaluations")
    run_group.add_argument("--eval-batches", type=int, help="batches per evaluation")
    run_group.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                           help="auto (default): fp32 on CPU/MPS, bf16 on CUDA >= 8.0 "
                                "(A100, L4, H100), fp16 + loss scaling below (T4)")
    run_group.add_argument("--compile", action="store_true", help="use torch.compile")
    run_group.add_argument("--activation-checkpointing", action="store_true",
                           help="recompute each block in the backward pass: much less "
                                "activation memory for ~1/3 more compute")
    run_group.add_argument("--log-interval", type=int,
                           help="steps between loss reads for the progress bar (default 10)")
    run_group.add_argument("--seed", type=int)
    run_group.add_argument("--device", help="cpu | cuda | cuda:1 | mps (default: best)")
    checkpoints = parser.add_argument_group("checkpoints")
    checkpoints.add_argument("--checkpoint-interval", type=int, help="steps between checkpoints")
    checkpoints.add_argument("--checkpoint-dir", help="folder (default: checkpoints)")
    checkpoints.add_argument("--keep-last", type=int, help="newest checkpoints to keep")
    checkpoints.add_argument("--keep-best", type=int, help="best checkpoints to keep")
    checkpoints.add_argument("--sync-checkpoints", action="store_true",
                             help="write checkpoints on the training thread (default: "
                                  "in the background)")
    checkpoints.add_argument("--resume", nargs="?", const="latest", default=None,
                             metavar="latest|PATH",
                             help="resume from the newest checkpoint (or PATH)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _resume_source(args: argparse.Namespace) -> tuple[Any, dict[str, Any] | None]:
    """(checkpoint path, its contents) for --resume, else (None, None)."""
    if args.resume is None:
        return None, None
    from utils.training.engine.checkpoint import load_checkpoint_file
    from utils.training.engine.recovery import resume_path

    path = resume_path(args.resume, args.checkpoint_dir or "checkpoints")
    return path, load_checkpoint_file(path, mmap=True)


def build_training_config(args: argparse.Namespace, saved: dict[str, Any] | None,
                          resume_path: Any = None, data_state: dict[str, Any] | None = None):
    """TrainingConfig: the checkpoint's settings (if resuming), then the given flags.

    A resumed run keeps writing next to the checkpoint it resumed unless told otherwise.
    """
    from utils.config import TrainingConfig

    values: dict[str, Any] = dict(saved or {"max_steps": 200, "warmup_steps": 20,
                                            "eval_interval": 50, "checkpoint_interval": 50})
    for flag, field in TRAINING_FLAGS.items():
        given = getattr(args, flag)
        if given is not None:
            values[field] = given
    if args.epochs is not None:
        values["max_steps"] = None  # --epochs bounds the run (max_steps would win)
    if args.lr is not None and args.min_lr is None:
        values["min_learning_rate"] = args.lr / 10
    values["compile"] = bool(args.compile or values.get("compile", False))
    values["activation_checkpointing"] = bool(args.activation_checkpointing
                                              or values.get("activation_checkpointing", False))
    values["background_checkpointing"] = not args.sync_checkpoints
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


def build_model(args: argparse.Namespace, saved: dict[str, Any] | None, vocab_size: int):
    """GPTModel from --init-from, the checkpoint's config, a preset, or explicit sizes.

    A new model gets the tokenizer's vocabulary (257 for `byte`, 50257 for `gpt2`).
    """
    from utils.config import ModelConfig
    from utils.model import GPTModel
    from utils.pretrained.huggingface import load_openai_gpt2

    if args.init_from:
        model, config = load_openai_gpt2(args.init_from, device="cpu", training=True)
        return model.train(), config
    sizes = {"number_of_layers": args.layers, "number_of_heads": args.heads,
             "embedding_dimension": args.dim, "context_length": args.context,
             "dropout_rate": args.dropout}
    sizes = {key: value for key, value in sizes.items() if value is not None}
    if saved is not None and args.preset is None:
        config = ModelConfig.from_dict({**saved["config"], **sizes})
    else:
        config = ModelConfig.from_preset(args.preset or "tiny", vocab_size=vocab_size, **sizes)
    return GPTModel(config), config


def run(args: argparse.Namespace) -> int:
    import torch

    from utils.cli.recover import format_checkpoint_table
    from utils.data import tokenize_corpus, train_val_split
    from utils.model import count_parameters
    from utils.tokenizer import get_tokenizer
    from utils.training.engine.distributed import setup_distributed
    from utils.training.engine.recovery import list_checkpoints
    from utils.training.engine.trainer import Trainer

    resume_path, checkpoint = _resume_source(args)
    training_config = build_training_config(
        args, checkpoint.get("training_config") if checkpoint else None, resume_path,
        checkpoint.get("data_state") if checkpoint else None)
    tokenizer_name = args.tokenizer or (checkpoint or {}).get("tokenizer") or "gpt2"
    dist = setup_distributed(training_config.device)  # so only rank 0 tokenises
    if not dist.is_main:
        dist.barrier()
    corpus = tokenize_corpus(args.data, tokenizer_name=tokenizer_name)
    if dist.is_main:
        dist.barrier()
    train_tokens, val_tokens = train_val_split(corpus.tokens, args.val_fraction)
    torch.manual_seed(training_config.seed)  # the same initial weights on every rank
    vocab_size = get_tokenizer(tokenizer_name).n_vocab
    model, model_config = build_model(args, checkpoint, vocab_size)
    if vocab_size > model_config.vocab_size:
        raise ValueError(f"tokenizer {tokenizer_name!r} has {vocab_size} ids but the model's "
                         f"vocabulary is {model_config.vocab_size}; use --tokenizer gpt2")
    del checkpoint  # the Trainer reads it again, fully, to restore the state
    if dist.is_main:
        print(f"model: {count_parameters(model):,} parameters "
              f"({model_config.number_of_layers} layers, {model_config.number_of_heads} heads, "
              f"{model_config.embedding_dimension} wide, context {model_config.context_length}); "
              f"data: {len(train_tokens):,} training / {len(val_tokens):,} validation tokens "
              f"({tokenizer_name}); {dist.world_size} process(es) on {dist.device}")
    trainer = Trainer(model, training_config, train_tokens, val_tokens,
                      tokenizer_name=tokenizer_name, progress=not args.no_progress)
    history = trainer.fit(resume_from=resume_path)
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
