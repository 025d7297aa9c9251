"""Load a trained checkpoint and (optionally) continue a prompt with it.

    python examples/load_pretrained_weights.py --checkpoint checkpoints/best_model.pt
    python examples/load_pretrained_weights.py --checkpoint checkpoints/best_model.pt \
        --prompt "Once upon a time" --length 100 --device cuda

The model is built from the checkpoint's own config and loaded strictly and safely
(weights_only=True); see docs for loading OpenAI's GPT-2 weights instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from utils.checkpoint_errors import CheckpointError  # noqa: E402
from utils.generation import generate_text  # noqa: E402
from utils.reports import checkpoint_info_report, loading_report, model_info_report  # noqa: E402
from utils.tokenizer import get_tokenizer  # noqa: E402
from utils.training.engine.loading import load_pretrained_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (.pt)")
    parser.add_argument("--prompt", default=None, help="text to continue (optional)")
    parser.add_argument("--length", type=int, default=50, help="new tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50, help="sample from the k most likely")
    parser.add_argument("--seed", type=int, default=None, help="for a reproducible sample")
    parser.add_argument("--device", default=None, help="cpu | cuda | mps (default: best)")
    parser.add_argument("--tokenizer", default=None,
                        help="gpt2 | byte (default: the one the checkpoint names, else gpt2)")
    args = parser.parse_args(argv)

    try:
        model, checkpoint = load_pretrained_model(args.checkpoint, device=args.device)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(loading_report(args.checkpoint, model, notes=checkpoint.get("load_notes", ())))
    print(checkpoint_info_report(checkpoint))
    print(model_info_report(model))

    if args.prompt is not None:
        tokenizer = get_tokenizer(args.tokenizer or checkpoint.get("tokenizer") or "gpt2")
        prompt_ids = tokenizer.encode(args.prompt)
        output_ids = generate_text(model, prompt_ids, maximum_new_tokens=args.length,
                                   temperature=args.temperature, top_k_tokens=args.top_k,
                                   seed=args.seed)
        print(tokenizer.decode(output_ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
