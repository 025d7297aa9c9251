"""`python -m utils convert SOURCE --output FILE.pt`: GPT-2 weights -> one of our checkpoints.

SOURCE is a Hugging Face name (`gpt2`, `gpt2-medium`, ...), a `save_pretrained` folder, a
`.safetensors`/`.bin` file, or a folder with OpenAI's original TensorFlow release. The
output is a checkpoint like those training writes (the same keys, tensors and plain values
that load with `weights_only=True`; weights only, no optimizer state), written crash-safely,
so `load`, `generate --checkpoint` and `export --checkpoint` can use it. To train from these
weights, pass the same SOURCE to `train --init-from`.

Also home of the source arguments and loader shared by `generate` and `export`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from utils.errors import UserError


def add_source_arguments(parser: argparse.ArgumentParser, with_device: bool = True) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--checkpoint", metavar="PATH",
                       help="one of our checkpoints (.pt), e.g. checkpoints/best_model.pt")
    group.add_argument("--pretrained", metavar="NAME_OR_PATH",
                       help="gpt2 | gpt2-medium | gpt2-large | gpt2-xl (downloaded once), a "
                            "save_pretrained folder, a .safetensors/.bin file, or a folder "
                            "with OpenAI's TensorFlow release (model.ckpt.index, hparams.json)")
    if with_device:
        parser.add_argument("--device", default=None,
                            help="cpu, cuda, mps (default: the best available)")


def is_openai_tf_folder(path: str | Path) -> bool:
    folder = Path(path)
    return folder.is_dir() and (folder / "hparams.json").exists() and \
        any(folder.glob("*.index"))


def load_source(args: argparse.Namespace) -> tuple[Any, Any]:
    """`(model, tokenizer)` from `--checkpoint` or `--pretrained`, in eval mode on the device.

    The tokenizer is the one the weights were made with: OpenAI's encoder.json/vocab.bpe for
    a TensorFlow folder, the checkpoint's recorded tokenizer, or `--tokenizer` when given.
    """
    model, tokenizer, _ = load_source_with_metadata(args)
    return model, tokenizer


def load_source_with_metadata(args: argparse.Namespace, build_tokenizer: bool = True
                              ) -> tuple[Any, Any, dict[str, Any]]:
    """`load_source`, plus what the weights came with (for an export's model card): the
    checkpoint's entries without its tensors, or `{"source": NAME}` for converted weights.
    `build_tokenizer=False`: a checkpoint's tokenizer is left to the caller (None), which then
    reads its name from the metadata (e.g. "char", which `get_tokenizer` cannot build)."""
    from utils.tokenizer import get_tokenizer
    from utils.training.engine.loading import resolve_device

    device = resolve_device(getattr(args, "device", "cpu"))
    chosen = getattr(args, "tokenizer", None)
    if args.checkpoint:
        from utils.training.engine.loading import load_pretrained_model

        model, checkpoint = load_pretrained_model(args.checkpoint, device=device)
        recorded = checkpoint.get("tokenizer")
        name = chosen or (recorded if isinstance(recorded, str) else None) or "gpt2"
        metadata = {key: value for key, value in checkpoint.items()
                    if not key.endswith("_state_dict") and key != "rng_state"}
        return model, get_tokenizer(name) if build_tokenizer else None, metadata
    source = {"source": str(args.pretrained)}
    if is_openai_tf_folder(args.pretrained):
        from utils.pretrained.openai_tf import load_tf_gpt2, tokenizer_from_encoder

        model, _ = load_tf_gpt2(args.pretrained, device=str(device))
        tokenizer = get_tokenizer(chosen) if chosen else tokenizer_from_encoder(args.pretrained)
        return model, tokenizer, source
    from utils.pretrained.huggingface import load_openai_gpt2

    model, _ = load_openai_gpt2(args.pretrained, device=device)
    return model, get_tokenizer(chosen or "gpt2"), source


def pretrained_checkpoint(model: Any, source: str, tokenizer: str | None = "gpt2"
                          ) -> dict[str, Any]:
    """A checkpoint dict (DESIGN.md's keys) for weights that were converted, not trained."""
    from datetime import datetime, timezone

    from utils.training.engine.checkpoint import FORMAT_VERSION

    return {
        "format_version": FORMAT_VERSION, "model_state_dict": model.state_dict(),
        "optimizer_state_dict": None, "scheduler_state_dict": None, "scaler_state_dict": None,
        "config": model.config.to_dict(), "training_config": None, "epoch": 0,
        "global_step": 0, "train_loss": None, "val_loss": None, "learning_rate": None,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metrics_history": [], "rng_state": None, "data_state": None, "tokenizer": tokenizer,
        "source": str(source),
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert GPT-2 weights (HF or OpenAI TF) into a checkpoint",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("source", help="hub name, save_pretrained folder, .safetensors/.bin "
                                       "file, or OpenAI TensorFlow folder")
    parser.add_argument("--output", "-o", required=True, metavar="FILE.pt",
                        help="checkpoint file to write (refuses to overwrite one)")
    parser.add_argument("--force", "--overwrite", dest="force", action="store_true",
                        help="overwrite --output if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from utils.cli.common import check_output_file

    output = Path(args.output)
    if output.suffix != ".pt":
        raise UserError(f"--output {output} should be a .pt file name")
    check_output_file(output, "--output", args.force, "--force")
    from utils.config import GPT2_VOCAB_SIZE
    from utils.training.engine.checkpoint import save_checkpoint

    source = argparse.Namespace(checkpoint=None, pretrained=args.source, device="cpu",
                                tokenizer=None)
    model, _ = load_source(source)
    # Record a tokenizer `get_tokenizer` knows: GPT-2's BPE when the vocabulary is GPT-2's.
    tokenizer_name = "gpt2" if model.config.vocab_size == GPT2_VOCAB_SIZE else None
    path = save_checkpoint(pretrained_checkpoint(model, args.source, tokenizer_name), output)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): "
          f"{model.config.number_of_layers} layers, width {model.config.embedding_dimension}")
    return 0
