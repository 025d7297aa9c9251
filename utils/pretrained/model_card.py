"""The model card (README.md) of an exported Hugging Face folder: what the model is, what it
was trained on, for how long, how well, and how.

Everything comes from the checkpoint the weights were taken from (its step, losses, metrics
history, training settings and precision); what a checkpoint does not record (the corpus)
is said to be unknown rather than guessed. Plain text only: no heavy imports.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from utils import DISTRIBUTION

HISTORY_ROWS = 10  # evaluations shown in the card's table (the last ones)


def model_card(*, name: str, config: Any, parameters: int, checkpoint: Mapping[str, Any] | None,
               tokenizer_description: str, tokenizer_note: str | None = None,
               data_description: str | None = None) -> str:
    """README.md for an exported folder. `checkpoint`: the dict the weights came from (our
    checkpoint, or `cli.convert.pretrained_checkpoint` for converted weights), or None."""
    checkpoint = checkpoint or {}
    sections = [
        _front_matter(),
        f"# {name}\n\n{_summary(config, parameters, checkpoint)}",
        _usage(name, tokenizer_note),
        "## Training data\n\n" + _data(checkpoint, tokenizer_description, tokenizer_note,
                                      data_description),
        "## Training\n\n" + _training(checkpoint, config),
        _history(checkpoint.get("metrics_history")),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def _front_matter() -> str:
    return ("---\nlibrary_name: transformers\npipeline_tag: text-generation\n"
            f"tags:\n- gpt2\n- text-generation\n- {DISTRIBUTION}\n---")


def _summary(config: Any, parameters: int, checkpoint: Mapping[str, Any]) -> str:
    shape = (f"A GPT-2 style language model of {parameters:,} parameters: "
             f"{_count(config.number_of_layers, 'layer')}, "
             f"{_count(config.number_of_heads, 'attention head')}, "
             f"width {config.embedding_dimension}, context {config.context_length} tokens, "
             f"vocabulary {config.vocab_size:,}. It loads as `GPT2LMHeadModel`.")
    if checkpoint.get("global_step"):
        origin = f"Trained with {DISTRIBUTION} (`python -m utils train` or its notebook)."
    elif checkpoint.get("source"):
        origin = f"Weights converted from `{checkpoint['source']}` by {DISTRIBUTION}; not " \
                 "trained here."
    else:
        origin = f"Exported by {DISTRIBUTION} from a model in memory, without the " \
                 "checkpoint that would say how it was trained."
    return f"{shape} {origin}"


def _usage(name: str, tokenizer_note: str | None) -> str:
    if tokenizer_note:
        return ("## Use\n\n```python\nfrom transformers import GPT2LMHeadModel\n\n"
                f"model = GPT2LMHeadModel.from_pretrained({json.dumps(name)})\n```\n\n"
                f"This folder has no tokenizer files: {tokenizer_note}.")
    return ("## Use\n\n```python\nfrom transformers import pipeline\n\n"
            f"generator = pipeline(\"text-generation\", model={json.dumps(name)})\n"
            "print(generator(\"Hello, I'm a language model,\", max_new_tokens=30)"
            "[0][\"generated_text\"])\n```")


def _data(checkpoint: Mapping[str, Any], tokenizer_description: str,
          tokenizer_note: str | None, data_description: str | None) -> str:
    corpus = data_description or ("not recorded in the checkpoint (edit this card to "
                                  "name it)")
    rows = [("corpus", corpus), ("tokenizer", tokenizer_description)]
    tokens = _last(checkpoint.get("metrics_history"), "tokens_seen")
    if tokens is not None:
        rows.append(("tokens seen", f"{int(tokens):,}"))
    return _table(rows)


def _training(checkpoint: Mapping[str, Any], config: Any) -> str:
    step = checkpoint.get("global_step")
    if not step:
        return "No training steps recorded for these weights."
    settings = checkpoint.get("training_config") or {}
    rows = [("steps", f"{step:,} (epoch {checkpoint.get('epoch', 0)})")]
    for label, key in (("validation loss", "val_loss"), ("training loss", "train_loss")):
        value = checkpoint.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            extra = f" (perplexity {math.exp(value):.2f})" if key == "val_loss" else ""
            rows.append((label, f"{value:.4f}{extra}"))
    if "init_from" in checkpoint:
        rows.append(("started from", _start(checkpoint["init_from"])))
    rows.extend(_settings_rows(settings, checkpoint, config))
    precision = checkpoint.get("precision")
    if isinstance(precision, Mapping) and precision.get("name"):
        rows.append(("precision", str(precision["name"])))
    for label, key in (("run", "run_id"), ("saved", "timestamp")):
        if checkpoint.get(key):
            rows.append((label, str(checkpoint[key])))
    return _table(rows)


def _start(init_from: Any) -> str:
    return f"the weights of `{init_from}` (fine-tuned)" if init_from else \
        "random initial weights (trained from scratch)"


def _settings_rows(settings: Mapping[str, Any], checkpoint: Mapping[str, Any],
                   config: Any) -> list[tuple[str, str]]:
    if not settings:
        return []
    world = (checkpoint.get("data_state") or {}).get("world_size", 1)
    accumulation = settings.get("gradient_accumulation_steps", 1)
    batch = (f"{settings.get('batch_size')} sequences x {config.context_length} tokens"
             f" x {accumulation} accumulation step(s) x {world} process(es)")
    betas = settings.get("betas")
    optimizer = (f"AdamW, betas {tuple(betas) if betas else '-'}, weight decay "
                 f"{settings.get('weight_decay')}, gradient clipping "
                 f"{settings.get('grad_clip') or 'off'}")
    schedule = (f"{settings.get('warmup_steps')} warmup steps to "
                f"{settings.get('learning_rate')}, cosine decay to "
                f"{settings.get('min_learning_rate')}")
    return [("batch per optimizer step", batch), ("optimizer", optimizer),
            ("learning rate", schedule), ("dropout", str(config.dropout_rate)),
            ("seed", str(settings.get("seed")))]


def _history(history: Any) -> str:
    if not isinstance(history, list) or not history:
        return ""
    rows = ["| step | training loss | validation loss | perplexity |",
            "| ---: | ---: | ---: | ---: |"]
    for entry in history[-HISTORY_ROWS:]:
        if isinstance(entry, Mapping):
            rows.append(f"| {entry.get('step', '-')} | {_number(entry.get('train_loss'))} | "
                        f"{_number(entry.get('val_loss'))} | "
                        f"{_number(entry.get('perplexity'), '.2f')} |")
    shown = min(len(history), HISTORY_ROWS)
    return (f"## Evaluations (the last {shown} of {len(history)})\n\n" + "\n".join(rows))


def _last(history: Any, key: str) -> Any:
    if not isinstance(history, list):
        return None
    values = [entry.get(key) for entry in history if isinstance(entry, Mapping)]
    return next((value for value in reversed(values) if value is not None), None)


def _number(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _table(rows: list[tuple[str, str]]) -> str:
    lines = ["| | |", "| --- | --- |"]
    lines += [f"| {label} | {str(value).replace('|', chr(92) + '|')} |" for label, value in rows]
    return "\n".join(lines)
