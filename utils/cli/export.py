"""`python -m utils export --format hf|binary|llmc`: weights out for other tools.

hf:     a folder `GPT2LMHeadModel.from_pretrained` loads (config.json + model.safetensors)
binary: seed 002's C/C++ format (gpt2_weights.bin, gpt2_config.txt, gpt2_weight_mapping.txt)
llmc:   llm.c's float32 model file (e.g. gpt2_124M.bin)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from utils.cli.convert import add_source_arguments, load_source

FORMATS = ("hf", "binary", "llmc")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export weights to Hugging Face, the C/C++ binary format or llm.c",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_arguments(parser, with_device=False)
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--output", "-o", required=True,
                        help="folder (hf, binary) or file (llmc) to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from utils.__main__ import UserError

    output = Path(args.output)
    if args.format == "llmc" and output.is_dir():
        raise UserError(f"--output {output} is a folder; llmc needs a file name like gpt2_124M.bin")
    if args.format != "llmc" and output.is_file():
        raise UserError(f"--output {output} is a file; {args.format} needs a folder")
    args.device = "cpu"  # exporting only copies tensors: no accelerator needed
    model, _ = load_source(args)
    if args.format == "hf":
        from utils.pretrained.huggingface import export_to_hf

        written = export_to_hf(model, output)
    elif args.format == "binary":
        from utils.pretrained.binary import export_binary

        written = export_binary(model, output)
    else:
        from utils.pretrained.llmc import export_llmc

        written = export_llmc(model, output)
    print(f"wrote {written} ({args.format})")
    return 0
