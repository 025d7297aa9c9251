"""`python -m utils export --format hf|binary|llmc`: weights out for other tools.

hf:     a complete Hugging Face folder: weights (model.safetensors, config.json),
        generation_config.json, the tokenizer's files and a model card (README.md), so
        `pipeline("text-generation", model=FOLDER)` and `AutoTokenizer` load it;
        --push-to-hub REPO uploads it
binary: a plain C/C++ format (gpt2_weights.bin, gpt2_config.txt, gpt2_weight_mapping.txt)
llmc:   llm.c's float32 model file (e.g. gpt2_124M.bin)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from utils.cli.common import check_output_file
from utils.cli.convert import add_source_arguments, load_source, load_source_with_metadata
from utils.errors import UserError

FORMATS = ("hf", "binary", "llmc")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export weights to Hugging Face, the C/C++ binary format or llm.c",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_arguments(parser, with_device=False)
    parser.add_argument("--format", choices=FORMATS, required=True,
                        help="hf (a Hugging Face folder), binary (C/C++) or llmc (llm.c's "
                             "model file); see above")
    parser.add_argument("--output", "-o", required=True,
                        help="folder (hf, binary) or file (llmc) to write; refuses to "
                             "replace a file or a non-empty folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --output even if it holds files (they may be replaced)")
    hf = parser.add_argument_group("hf format")
    hf.add_argument("--tokenizer", default=None,
                    help="tokenizer files to write: gpt2 | byte (default: the one the weights "
                         "were made with)")
    hf.add_argument("--data-description", default=None, metavar="TEXT",
                    help="what the model was trained on, for the model card (checkpoints do "
                         "not record it; default: the card says so)")
    hf.add_argument("--push-to-hub", default=None, metavar="REPO",
                    help="then upload the folder to this Hugging Face Hub repository "
                         "(USER/NAME; needs a token: `hf auth login` or HF_TOKEN; default: "
                         "no upload)")
    hf.add_argument("--private", action="store_true",
                    help="with --push-to-hub: create the repository as private")
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


def check_hf_flags(args: argparse.Namespace) -> None:
    """Refuse Hugging Face-only flags with another format, and an upload that cannot work
    (no token, a malformed repository name), before anything is loaded or written."""
    given = [flag for flag, value in (("--tokenizer", args.tokenizer),
                                      ("--data-description", args.data_description),
                                      ("--push-to-hub", args.push_to_hub),
                                      ("--private", args.private)) if value]
    if args.format != "hf" and given:
        raise UserError(f"{', '.join(given)} only apply to --format hf; leave them out for "
                        f"--format {args.format}")
    if args.private and not args.push_to_hub:
        raise UserError("--private applies to the repository --push-to-hub creates; add "
                        "--push-to-hub USER/NAME or leave --private out")
    if args.push_to_hub:
        from utils.pretrained.hub import check_can_push

        check_can_push(args.push_to_hub)


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    check_hf_flags(args)
    check_output(output, args.format, args.overwrite)
    args.device = "cpu"  # exporting only copies tensors: no accelerator needed
    if args.format == "hf":
        return export_hf(args, output)
    model, _ = load_source(args)
    if args.format == "binary":
        from utils.pretrained.binary import export_binary

        written = export_binary(model, output)
    else:
        from utils.pretrained.llmc import export_llmc

        written = export_llmc(model, output)
    print(f"wrote {written} ({args.format})")
    return 0


def export_hf(args: argparse.Namespace, output: Path) -> int:
    """The Hugging Face folder (weights, generation config, tokenizer, card), then the upload."""
    from utils.pretrained.huggingface import write_hf_folder

    # A checkpoint's tokenizer goes by its recorded name (so "char" gets its note); converted
    # weights bring theirs (a TensorFlow release's encoder.json).
    model, tokenizer, metadata = load_source_with_metadata(args, build_tokenizer=False)
    written = write_hf_folder(model, output, tokenizer=args.tokenizer or tokenizer,
                              checkpoint=metadata, data_description=args.data_description,
                              name=args.push_to_hub or output.name)
    print(f"wrote {written.path} (hf): {', '.join(written.files)}")
    if written.tokenizer_note:
        print(f"no tokenizer files: {written.tokenizer_note}")
    if args.push_to_hub:
        from utils.pretrained.hub import push_folder

        url = push_folder(written.path, args.push_to_hub, private=args.private or None)
        print(f"uploaded to {url}")
    return 0
