"""`python -m utils export --format hf|binary|llmc`: weights out for other tools.

hf:     a folder `GPT2LMHeadModel.from_pretrained` loads (config.json + model.safetensors)
binary: a plain C/C++ format (gpt2_weights.bin, gpt2_config.txt, gpt2_weight_mapping.txt)
llmc:   llm.c's float32 model file (e.g. gpt2_124M.bin)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from utils.cli.common import check_output_file
from utils.cli.convert import add_source_arguments, load_source
from utils.errors import UserError

FORMATS = ("hf", "binary", "llmc")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export weights to Hugging Face, the C/C++ binary format or llm.c",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_arguments(parser, with_device=False)
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--output", "-o", required=True,
                        help="folder (hf, binary) or file (llmc) to write; refuses to "
                             "replace a file or a non-empty folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --output even if it holds files (they may be replaced)")
    parser.set_defaults(func=run)


# The files each folder format writes (each must be a regular file or a new name).
FOLDER_FILES = {"hf": ("config.json", "generation_config.json", "model.safetensors"),
                "binary": ("gpt2_weights.bin", "gpt2_config.txt", "gpt2_weight_mapping.txt")}


def check_output(output: Path, kind: str, overwrite: bool) -> None:
    """Refuse, before loading anything, an --output of the wrong kind or one holding files."""
    if kind == "llmc":
        if output.is_dir():
            raise UserError(f"--output {output} is a folder; llmc needs a file name like "
                            f"gpt2_124M.bin")
        check_output_file(output, "--output", overwrite)
        return
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; {kind} needs a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise UserError(f"--output {output} is a folder that holds files; choose an empty or "
                        f"new folder, or pass --overwrite to write into it")
    if output.is_dir():
        for name in FOLDER_FILES[kind]:
            if (output / name).exists() or (output / name).is_symlink():
                check_output_file(output / name, "--output", overwrite)


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    check_output(output, args.format, args.overwrite)
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
