"""Plain-loop demo without Jupyter or checkpoints: train the `tiny` preset for a few steps on
the built-in corpus and print a sample. Runs on a CPU in well under a minute; everything it
needs is on disk. (`make demo` runs the notebook instead: scripts/demo_notebook.py.)

    python scripts/demo.py [--steps 50] [--tokenizer gpt2|byte]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--tokenizer", default="gpt2", help="gpt2 (default) or byte")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args(argv)

    import torch
    from tqdm.auto import tqdm

    from utils.config import ModelConfig
    from utils.data import BatchLoader, tokenize_corpus, train_val_split
    from utils.generation import generate_from_prompt
    from utils.model import GPTModel, count_parameters
    from utils.tokenizer import get_tokenizer

    torch.manual_seed(args.seed)
    tokenizer = get_tokenizer(args.tokenizer)
    corpus = tokenize_corpus(None, tokenizer_name=args.tokenizer)
    train_tokens, val_tokens = train_val_split(corpus.tokens, 0.1)
    print(f"corpus: {corpus.source}, {len(corpus.tokens):,} tokens ({args.tokenizer})")

    config = ModelConfig.from_preset("tiny", vocab_size=tokenizer.n_vocab,
                                     context_length=args.context)
    model = GPTModel(config)
    print(f"model: tiny preset, {count_parameters(model):,} parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    train = BatchLoader(train_tokens, args.batch_size, args.context, seed=args.seed)
    val = BatchLoader(val_tokens, args.batch_size, args.context, seed=args.seed,
                      name="validation split")

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            losses = [model(*val.get_batch(step))[1].item() for step in range(5)]
        model.train()
        return sum(losses) / len(losses)

    start_loss = val_loss()
    model.train()
    for step in (progress := tqdm(range(args.steps), desc="training")):
        x, y = train.get_batch(step)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    end_loss = val_loss()
    print(f"validation loss: {start_loss:.3f} -> {end_loss:.3f} after {args.steps} steps")

    sample = generate_from_prompt(model, tokenizer, "The ", maximum_new_tokens=40,
                                  temperature=0.8, top_k_tokens=50, seed=args.seed)
    print(f"sample: {sample!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
