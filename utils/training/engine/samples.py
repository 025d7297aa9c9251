"""Short text samples during training (`TrainingConfig.sample_every`), rank 0 only.

A sample shows what the model writes now: a continuation of `sample_prompt`, printed above
the progress bar and sent to the loggers. It draws from a generator of its own and leaves
the model's mode as it found it, so training goes on exactly as without it; a sample that
fails is never worth the run (a warning, then no more samples).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from utils.config import TrainingConfig
from utils.training.engine.loggers import sample_block

SAMPLE_NEW_TOKENS = 48  # length of the text samples


class TextSampler:
    """Writes a sample at every `sample_every`-th evaluation of the run and at its last."""

    def __init__(self, config: TrainingConfig, tokenizer_name: str | None,
                 write: Callable[[str], None]) -> None:
        self.config = config
        self.tokenizer_name = tokenizer_name
        self.write = write  # prints above the progress bar
        self._prompt: tuple[Any, list[int]] | tuple[()] | None = None  # (tokenizer, ids)

    def due(self, evaluations: int, last: bool) -> bool:
        """Whether the evaluation numbered `evaluations` of the run (`last`: the run's final
        one) gets a sample."""
        every = self.config.sample_every
        return bool(every) and (evaluations % every == 0 or last)

    def sample(self, model: nn.Module, step: int) -> str | None:
        """Write a continuation of the prompt at `step`; returns its text (None: none)."""
        from utils.generation import generate_text

        prompt = self._prompt_ids(model)
        if prompt is None:
            return None
        tokenizer, prompt_ids = prompt
        end = getattr(tokenizer, "eot_token", None)
        try:
            ids = generate_text(model, prompt_ids, SAMPLE_NEW_TOKENS, temperature=0.8,
                                top_k_tokens=50, eos_token_id=end, seed=self.config.seed)
        except Exception as error:  # a sample is never worth the training run
            self._prompt = ()
            self.write(f"WARNING: no more text samples (sample_every): generating one "
                       f"failed: {type(error).__name__}: {error}")
            return None
        text = self.config.sample_prompt + tokenizer.decode(ids[len(prompt_ids):])
        self.write(sample_block(step, self.config.sample_prompt, text))
        return text

    def _prompt_ids(self, model: nn.Module) -> tuple[Any, list[int]] | None:
        """(tokenizer, prompt ids), made once; None (said once) where this run has no
        tokenizer that fits the model."""
        if self._prompt is None:
            self._prompt = self._encode_prompt(model)
        return self._prompt or None

    def _encode_prompt(self, model: nn.Module) -> tuple[Any, list[int]] | tuple[()]:
        from utils.tokenizer import get_tokenizer

        prompt = self.config.sample_prompt
        try:
            tokenizer = get_tokenizer(self.tokenizer_name or "")
            ids = (tokenizer.encode(prompt, allowed_special="all") if prompt
                   else [tokenizer.eot_token])
            vocab = getattr(getattr(model, "config", None), "vocab_size", None)
            if not ids or (vocab is not None and max(ids) >= vocab):
                raise ValueError(f"the prompt does not encode to ids of this model's "
                                 f"vocabulary of {vocab}")
        except (ValueError, KeyError, OSError, AttributeError) as error:
            self.write(f"WARNING: no text samples (sample_every): the tokenizer "
                       f"{self.tokenizer_name!r} cannot encode sample_prompt for this "
                       f"model ({error})")
            return ()
        return tokenizer, ids
