"""`python -m utils generate`: continue a prompt with a checkpoint or OpenAI's GPT-2."""

from __future__ import annotations

import argparse

from utils.cli.common import check_device
from utils.cli.convert import add_source_arguments, load_source
from utils.errors import UserError

# generate_text's argument -> the flag that sets it (for its error messages)
SETTING_FLAGS = {"maximum_new_tokens": "--length", "temperature": "--temperature",
                 "top_k_tokens": "--top-k", "top_p": "--top-p"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate text from a checkpoint or pretrained GPT-2",
        description="Generate text from one of our checkpoints (--checkpoint) or from "
                    "OpenAI's GPT-2 weights (--pretrained: hub name, HF folder/file or "
                    "OpenAI TensorFlow folder).",
    )
    add_source_arguments(parser)
    parser.add_argument("--prompt", default="Hello, I'm a language model,", help="text to continue")
    parser.add_argument("--length", type=int, default=50, help="new tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=None,
                        help="sample from the k most likely (default: all tokens)")
    parser.add_argument("--top-p", type=float, default=None,
                        help="nucleus sampling mass (default: off)")
    parser.add_argument("--seed", type=int, default=None,
                        help="for reproducible samples (default: a different sample each run)")
    parser.add_argument("--tokenizer", default=None,
                        help="gpt2 | byte (default: the one the weights were made with)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.length < 1:
        raise UserError(f"--length must be at least 1, got {args.length}")
    check_device(args.device)
    from utils.generation import generate_from_prompt

    model, tokenizer = load_source(args)
    text = generate_from_prompt(model, tokenizer, args.prompt, maximum_new_tokens=args.length,
                                temperature=args.temperature, top_k_tokens=args.top_k,
                                top_p=args.top_p, seed=args.seed)
    print(text)
    return 0
