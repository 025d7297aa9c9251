"""`python -m utils load`: load a checkpoint (strict, safe) and print the full report."""

from __future__ import annotations

import argparse

from utils.cli.common import check_device

SETTING_FLAGS = {"checkpoint_dir": "--checkpoint-dir"}  # for library messages


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "load", help="load a checkpoint and print its report",
        description="Build a model from a checkpoint's own config, load its weights "
                    "(strict, weights_only) and print the checkpoint, model and architecture "
                    "report. Accepts our checkpoints, bare state dicts, Hugging Face GPT-2 "
                    "(.bin/.safetensors) and nanoGPT ckpt.pt files.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint file to load")
    source.add_argument("--checkpoint-dir",
                        help="folder: load its best checkpoint by val_loss (lists them all)")
    parser.add_argument("--device", default=None, help="cpu | cuda | mps (default: best available)")
    parser.add_argument("--mode", choices=("eval", "train"), default="eval")
    parser.add_argument("--preset", default=None,
                        help="model preset for a bare state dict without a config (e.g. gpt2)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow pickled Python objects (runs code from the file: only for "
                             "files you trust)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    from utils.config import ModelConfig
    from utils.reports import full_load_report
    from utils.training.engine.loading import load_pretrained_model
    from utils.training.engine.recovery import select_checkpoint

    infos = None
    if args.checkpoint_dir:
        from utils.training.engine.recovery import list_checkpoints

        infos = list_checkpoints(args.checkpoint_dir)
        path, method = select_checkpoint(checkpoint_dir=args.checkpoint_dir, infos=infos)
    else:
        path, method = args.checkpoint, "manual override (--checkpoint)"
    config = ModelConfig.from_preset(args.preset) if args.preset else None
    model, checkpoint = load_pretrained_model(path, device=args.device, mode=args.mode,
                                              trust_checkpoint=args.trust_checkpoint,
                                              config=config)
    print(full_load_report(path, method, model, checkpoint, infos))
    return 0
