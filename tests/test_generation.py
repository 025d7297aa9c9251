"""generate_text: HF-identical greedy decoding, reproducible sampling, filters, eos, windows."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from utils.config import ModelConfig
from utils.generation import generate_from_prompt, generate_text
from utils.model import GPTModel
from utils.pretrained.mapping import convert_hf_to_custom
from utils.pretrained.verify import random_hf_gpt2
from utils.tokenizer import get_tokenizer

# Vocabulary 257 = the byte tokenizer's, so generate_from_prompt can decode the output.
CONFIG = ModelConfig(vocab_size=257, context_length=48, embedding_dimension=64,
                     number_of_heads=4, number_of_layers=2, dropout_rate=0.0)
PROMPT = [72, 101, 108, 108, 111]


@pytest.fixture(scope="module")
def hf_model():
    # 10x GPT-2's init scale: one wrong matrix moves logits a lot, and float rounding
    # cannot flip an argmax.
    return random_hf_gpt2(CONFIG, seed=5, weight_scale=10)


@pytest.fixture(scope="module")
def model(hf_model):
    ours = GPTModel(CONFIG)
    ours.load_state_dict(convert_hf_to_custom(hf_model.state_dict(), CONFIG))
    return ours.eval()


@pytest.fixture(scope="module")
def soft_model():
    """Init-scale weights: a flat next-token distribution, good for testing sampling."""
    torch.manual_seed(6)
    return GPTModel(CONFIG).eval()


@pytest.mark.parametrize("prompt_length, new_tokens", [(5, 30), (1, 47), (20, 28)])
def test_greedy_equals_hugging_face_generate(model, hf_model, prompt_length, new_tokens):
    prompt = torch.arange(3, 3 + prompt_length) * 7 % CONFIG.vocab_size
    ours = generate_text(model, prompt, new_tokens, temperature=0)
    with torch.no_grad():
        theirs = hf_model.generate(prompt.unsqueeze(0), max_new_tokens=new_tokens, do_sample=False,
                                   pad_token_id=CONFIG.vocab_size - 1, eos_token_id=None)
    assert ours == theirs[0].tolist()
    assert len(ours) == prompt_length + new_tokens  # the last one fills the context exactly


def test_prompt_forms_are_equivalent_and_zero_new_tokens_returns_the_prompt(model):
    expected = generate_text(model, PROMPT, 10, temperature=0)
    assert generate_text(model, torch.tensor(PROMPT), 10, temperature=0) == expected
    assert generate_text(model, torch.tensor([PROMPT]), 10, temperature=0) == expected
    assert generate_text(model, PROMPT, 0) == PROMPT
    assert all(type(i) is int for i in expected)


def test_sampling_is_reproducible_per_seed(soft_model):
    first = generate_text(soft_model, PROMPT, 25, temperature=1.0, seed=11)
    again = generate_text(soft_model, PROMPT, 25, temperature=1.0, seed=11)
    other = generate_text(soft_model, PROMPT, 25, temperature=1.0, seed=12)
    assert first == again
    assert first != other


def test_seeded_sampling_leaves_global_rng_alone(soft_model):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    generate_text(soft_model, PROMPT, 10, temperature=1.0, top_k_tokens=50, top_p=0.9, seed=3)
    assert torch.equal(torch.get_rng_state(), before)


def test_top_k_one_and_tiny_top_p_are_greedy(soft_model):
    greedy = generate_text(soft_model, PROMPT, 20, temperature=0)
    assert generate_text(soft_model, PROMPT, 20, temperature=1.0, top_k_tokens=1, seed=1) == greedy
    assert generate_text(soft_model, PROMPT, 20, temperature=1.0, top_p=1e-9, seed=1) == greedy


class FixedLogits(nn.Module):
    """A 'model' that always predicts the same distribution (no cache, no config)."""

    def __init__(self, probabilities: list[float]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(probabilities).log())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(ids.shape[0], ids.shape[1], -1)


def _frequencies(model: nn.Module, draws: int = 2000, **sampling) -> list[float]:
    new = generate_text(model, [0], draws, seed=7, **sampling)[1:]
    counts = Counter(new)
    return [counts[i] / draws for i in range(model.logits.numel())]


def test_sampling_follows_temperature_top_k_and_top_p():
    model = FixedLogits([0.4, 0.3, 0.2, 0.1])
    assert _frequencies(model) == pytest.approx([0.4, 0.3, 0.2, 0.1], abs=0.04)
    # temperature 0.5 squares the probabilities: [.16, .09, .04, .01] / .30
    assert _frequencies(model, temperature=0.5) == pytest.approx([0.533, 0.3, 0.133, 0.033], abs=0.04)
    assert _frequencies(model, top_k_tokens=2) == pytest.approx([4 / 7, 3 / 7, 0, 0], abs=0.04)
    # top_p 0.65: 0.4 < 0.65, so the 0.3 token is needed too; 0.7 >= 0.65 stops there.
    assert _frequencies(model, top_p=0.65) == pytest.approx([4 / 7, 3 / 7, 0, 0], abs=0.04)
    # top-k first (0.4, 0.3, 0.2 renormalised to .44, .33, .22), then top-p 0.5 keeps two.
    assert _frequencies(model, top_k_tokens=3, top_p=0.5) == pytest.approx([4 / 7, 3 / 7, 0, 0], abs=0.04)


def test_stops_at_end_of_text(model):
    greedy = generate_text(model, PROMPT, 12, temperature=0)
    eos = greedy[len(PROMPT) + 3]
    first_eos = greedy.index(eos, len(PROMPT))
    stopped = generate_text(model, PROMPT, 12, temperature=0, eos_token_id=eos)
    assert stopped == greedy[:first_eos + 1]


def test_restores_train_mode_and_decodes_without_dropout():
    torch.manual_seed(8)
    dropout_model = GPTModel(ModelConfig.from_dict({**CONFIG.to_dict(), "dropout_rate": 0.5}))
    expected = generate_text(dropout_model.eval(), PROMPT, 15, temperature=0)
    dropout_model.train()
    assert generate_text(dropout_model, PROMPT, 15, temperature=0) == expected
    assert dropout_model.training
    dropout_model.eval()
    generate_text(dropout_model, PROMPT, 2)
    assert not dropout_model.training


class NoCache(nn.Module):
    """Wraps GPTModel as a plain ids -> logits module, so generation cannot use the cache."""

    def __init__(self, model: GPTModel) -> None:
        super().__init__()
        self.inner = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.inner(ids)


def test_any_logits_module_works_and_cache_changes_nothing(model, hf_model):
    cached = generate_text(model, PROMPT, 30, temperature=0)
    assert generate_text(NoCache(model), PROMPT, 30, temperature=0) == cached
    assert generate_text(hf_model, PROMPT, 30, temperature=0) == cached  # `.logits` outputs
    sampled = generate_text(model, PROMPT, 30, temperature=0.8, top_k_tokens=20, seed=4)
    assert generate_text(NoCache(model), PROMPT, 30, temperature=0.8, top_k_tokens=20, seed=4) == sampled


def test_slides_a_window_past_the_context_length(model):
    context = CONFIG.context_length
    # Reference: the plain loop, always the last `context` tokens, no cache.
    expected = list(PROMPT)
    with torch.no_grad():
        for _ in range(context + 20):
            window = torch.tensor([expected[-context:]])
            expected.append(int(model(window)[0, -1].argmax()))
    assert generate_text(model, PROMPT, context + 20, temperature=0) == expected
    long_prompt = expected[:context + 5]  # a prompt longer than the context is windowed too
    assert generate_text(model, long_prompt, 10, temperature=0) == expected[:context + 15]


def test_generate_from_prompt_decodes_prompt_and_continuation(model):
    tokenizer = get_tokenizer("byte")
    text = generate_from_prompt(model, tokenizer, "Hello", maximum_new_tokens=8, temperature=0,
                                stop_at_end_of_text=False)
    ids = generate_text(model, tokenizer.encode("Hello"), 8, temperature=0)
    assert text == tokenizer.decode(ids) and text.startswith("Hello")


@pytest.mark.parametrize("arguments, message", [
    ({"maximum_new_tokens": -1}, "maximum_new_tokens"),
    ({"maximum_new_tokens": 2.5}, "maximum_new_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_k_tokens": 0}, "top_k_tokens"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"input_ids": []}, "empty"),
    ({"input_ids": "Hello"}, "tokenizer"),
    ({"input_ids": [1, 2.0]}, "int token ids"),
    ({"input_ids": torch.zeros(2, 3, dtype=torch.long)}, r"\[1, T\]"),
    ({"input_ids": [5, 257]}, "vocabulary 0..256"),
])
def test_bad_arguments_are_clear_errors(model, arguments, message):
    call = {"input_ids": PROMPT, "maximum_new_tokens": 3, **arguments}
    with pytest.raises(ValueError, match=message):
        generate_text(model, **call)


def test_a_compiled_model_decodes_through_its_module_with_the_kv_cache(monkeypatch):
    """torch.compile's wrapper is unwrapped: same ids as the plain model, and the KV cache
    is used (the compiled module would recompile for every new length instead)."""
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(vocab_size=257, context_length=64, embedding_dimension=32,
                                 number_of_heads=4, number_of_layers=2, dropout_rate=0.0))
    plain = generate_text(model, [5, 17, 42], 12, temperature=0)
    caches = []
    real = GPTModel.new_kv_cache
    monkeypatch.setattr(GPTModel, "new_kv_cache",
                        lambda self, *a, **k: caches.append(1) or real(self, *a, **k))
    compiled = torch.compile(model, backend="eager")  # the wrapper, without a C++ compiler
    assert generate_text(compiled, [5, 17, 42], 12, temperature=0) == plain
    assert caches == [1]
