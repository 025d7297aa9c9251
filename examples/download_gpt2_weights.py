"""Write OpenAI's GPT-2 weights in seed 002's C/C++ binary format.

    python examples/download_gpt2_weights.py                 # gpt2 (124M), from the HF hub
    python examples/download_gpt2_weights.py gpt2-xl         # 355M / 774M / 1558M likewise
    python examples/download_gpt2_weights.py path/to/folder  # a local save_pretrained folder,
                                                             # .safetensors file or OpenAI TF folder

Creates assets/weights/<124M|355M|774M|1558M>/ with gpt2_weights.bin, gpt2_config.txt and
gpt2_weight_mapping.txt (layout: docs/binary-weight-format.md). Weights stream into the
model tensor by tensor, and memory is checked before anything is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

SIZE_DIRS = {"small": "124M", "medium": "355M", "large": "774M", "xl": "1558M"}


def size_folder(config) -> str:
    """124M / 355M / 774M / 1558M for GPT-2's shapes, else a name built from the shape."""
    from utils.config import GPT2_CONFIGS

    for size, preset in GPT2_CONFIGS.items():
        if size in SIZE_DIRS and preset.to_dict() | {"dropout_rate": 0} == \
                config.to_dict() | {"dropout_rate": 0}:
            return SIZE_DIRS[size]
    return f"custom_L{config.number_of_layers}_C{config.embedding_dimension}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="gpt2",
                        help="gpt2 | gpt2-medium | gpt2-large | gpt2-xl, or a local folder/file")
    parser.add_argument("--output-root", default="assets/weights",
                        help="parent folder of the <size> folders (default: assets/weights)")
    args = parser.parse_args(argv)

    from utils.cli.convert import is_openai_tf_folder
    from utils.pretrained.binary import export_binary

    if is_openai_tf_folder(args.model):
        from utils.pretrained.openai_tf import load_tf_gpt2

        model, config = load_tf_gpt2(args.model)
    else:
        from utils.pretrained.huggingface import load_openai_gpt2

        model, config = load_openai_gpt2(args.model)
    out_dir = export_binary(model, Path(args.output_root) / size_folder(config))
    for path in sorted(out_dir.iterdir()):
        print(f"{path}  ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
