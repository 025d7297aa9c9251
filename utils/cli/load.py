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
    parser.add_argument("--mode", choices=("eval", "train"), default="eval",
                        help="the model's mode after loading: eval (dropout off, for "
                             "inference) or train (dropout on, to continue training)")
    parser.add_argument("--preset", default=None,
                        help="model preset for a bare state dict without a config, e.g. "
                             "gpt2 (default: the shapes come from the file)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow pickled Python objects (runs code from the file: only for "
                             "files you trust)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    from utils.config import ModelConfig
    from utils.reports import full_load_report
    from utils.training.engine.loading import load_pretrained_model

    config = ModelConfig.from_preset(args.preset) if args.preset else None

    def load(path):
        return load_pretrained_model(path, device=args.device, mode=args.mode,
                                     trust_checkpoint=args.trust_checkpoint, config=config)

    infos = None
    if args.checkpoint_dir:
        from utils.training.engine.recovery import list_checkpoints

        infos = list_checkpoints(args.checkpoint_dir)
        path, method, (model, checkpoint) = _best_that_loads(args.checkpoint_dir, infos, load)
    else:
        path, method = args.checkpoint, "manual override (--checkpoint)"
        model, checkpoint = load(path)
    print(full_load_report(path, method, model, checkpoint, infos))
    return 0


def _best_that_loads(folder, infos, load):
    """(path, method, load(path)) for the best checkpoint of the folder that loads; one
    that listed fine but does not read (damaged since) is skipped with a warning naming it."""
    from utils.training.engine.recovery import load_first_readable, select_checkpoint

    _, method = select_checkpoint(checkpoint_dir=folder, infos=infos)
    path, loaded, skipped = load_first_readable(infos, load, folder)
    if skipped:
        method = f"next best by val_loss ({', '.join(skipped)} did not load)"
    return path, method, loaded
