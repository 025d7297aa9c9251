"""Load OpenAI's GPT-2 into GPTModel, check it against Hugging Face, and generate.

    python examples/load_openai_weights.py --model-size small --prompt "The future of AI"
    python examples/load_openai_weights.py --model-size medium --device cuda
    python examples/load_openai_weights.py --model-size path/to/save_pretrained_folder

`--model-size` is small | medium | large | xl (gpt2, gpt2-medium, ... also work; downloaded
once from the Hugging Face hub), or a local folder / .safetensors / .bin file, so it runs
offline. Memory is checked before loading. When transformers is installed, the converted
model's logits are compared with GPT2LMHeadModel's on the prompt (and, if they differ, the
first diverging layer is printed); --no-verify skips that (it loads a second model).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere


def verify_against_hf(model, source: str, tokenizer, prompt: str) -> bool:
    """Compare logits with Hugging Face's GPT-2 on the same weights; print the result."""
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        print("verification skipped: transformers is not installed")
        return True
    from utils.config import PRESET_ALIASES
    from utils.model.memory import InsufficientMemoryError, check_memory
    from utils.pretrained.huggingface import HUB_REPOS
    from utils.pretrained.layers_diff import compare_layers
    from utils.pretrained.verify import compare_outputs

    if Path(source).is_file():
        print("verification skipped: HF needs a folder, not a single weights file")
        return True
    try:  # a second full model: only if it fits next to the first
        check_memory(model.config, "cpu", name="the Hugging Face copy for verification")
    except InsufficientMemoryError as error:
        print(f"verification skipped: {error}")
        return True
    size = PRESET_ALIASES.get(source, source)
    hf_model = GPT2LMHeadModel.from_pretrained(HUB_REPOS.get(size, source)).eval()
    match, max_diff = compare_outputs(model, hf_model, tokenizer, prompt)
    print(f"matches Hugging Face: {match} (largest logit difference {max_diff:.2e})")
    if not match:
        print(compare_layers(model.cpu(), hf_model, tokenizer.encode(prompt)).to_string())
    return match


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-size", default="small",
                        help="small | medium | large | xl, or a local folder or weights file")
    parser.add_argument("--prompt", default="Hello, I'm a language model,")
    parser.add_argument("--length", type=int, default=40, help="new tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default=None, help="cpu | cuda | mps (default: best)")
    parser.add_argument("--tokenizer", default="gpt2", help="gpt2 | byte")
    parser.add_argument("--no-verify", action="store_true", help="skip the HF comparison")
    args = parser.parse_args(argv)

    from utils.generation import generate_from_prompt
    from utils.model import count_parameters
    from utils.pretrained.huggingface import load_openai_gpt2
    from utils.tokenizer import get_tokenizer
    from utils.training.engine.loading import resolve_device

    device = resolve_device(args.device)
    model, config = load_openai_gpt2(args.model_size, device=device)
    print(f"loaded {args.model_size}: {count_parameters(model):,} parameters, "
          f"{config.number_of_layers} layers, width {config.embedding_dimension}, on {device}")
    tokenizer = get_tokenizer(args.tokenizer)
    if not args.no_verify and not verify_against_hf(model, args.model_size, tokenizer, args.prompt):
        return 1
    text = generate_from_prompt(model, tokenizer, args.prompt, maximum_new_tokens=args.length,
                                temperature=args.temperature, top_k_tokens=args.top_k,
                                seed=args.seed)
    print("-" * 40)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
