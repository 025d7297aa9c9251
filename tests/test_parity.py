"""Logit parity with Hugging Face's GPT2LMHeadModel on converted random weights (offline)."""

from __future__ import annotations

import pytest
import torch

from utils.config import ModelConfig
from utils.model import GPTModel
from utils.pretrained.mapping import convert_hf_to_custom
from utils.pretrained.verify import compare_outputs, random_hf_gpt2
from utils.tokenizer import get_tokenizer

TINY = ModelConfig.from_preset("tiny")  # GPT-2's vocabulary, 2 layers, context 128
TEXTS = ["Hello, my name is", "a", "The quick brown fox jumps over the lazy dog. " * 2,
         "naïve café — 東京 🚀"]


def converted(hf_model, config: ModelConfig) -> GPTModel:
    model = GPTModel(config)
    model.load_state_dict(convert_hf_to_custom(hf_model.state_dict(), config))  # strict
    return model.eval()


@pytest.fixture(scope="module")
def tiny_pair():
    hf_model = random_hf_gpt2(TINY, seed=0)
    return converted(hf_model, TINY), hf_model


@pytest.mark.parametrize("text", TEXTS)
def test_compare_outputs_matches_on_texts(tiny_pair, text):
    model, hf_model = tiny_pair
    match, max_diff = compare_outputs(model, hf_model, get_tokenizer("byte"), text)
    assert match and max_diff <= 1e-5


@pytest.mark.parametrize("length", [1, 7, 64, TINY.context_length])
def test_logits_match_up_to_the_context_length(tiny_pair, length):
    model, hf_model = tiny_pair
    ids = torch.randint(0, TINY.vocab_size, (2, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        ours, theirs = model(ids), hf_model(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_a_dropped_attention_bias_is_caught(tiny_pair):
    # Seed 000's mistake: loading GPT-2 without the Q/K/V biases.
    model, hf_model = tiny_pair
    broken = converted(hf_model, TINY)
    with torch.no_grad():
        for block in broken.transformer_blocks:
            for linear in (block.attention.W_query, block.attention.W_key, block.attention.W_value):
                linear.bias.zero_()
    match, max_diff = compare_outputs(broken, hf_model, get_tokenizer("byte"), TEXTS[0])
    assert not match and max_diff > 1e-3


def test_compare_outputs_restores_modes_and_rejects_bad_input(tiny_pair):
    model, hf_model = tiny_pair
    model.train()
    try:
        compare_outputs(model, hf_model, get_tokenizer("byte"), "abc")
        assert model.training and not hf_model.training
    finally:
        model.eval()
    with pytest.raises(ValueError, match="no tokens"):
        compare_outputs(model, hf_model, get_tokenizer("byte"), "")
    with pytest.raises(ValueError, match="context_length is 128"):
        compare_outputs(model, hf_model, get_tokenizer("byte"), "x" * 129)


@pytest.fixture(scope="module")
def small_pair():
    config = ModelConfig.from_preset("small")
    hf_model = random_hf_gpt2(config, seed=1)
    return converted(hf_model, config), hf_model


@pytest.mark.slow
def test_gpt2_small_shapes_match(small_pair):
    model, hf_model = small_pair
    text = "GPT-2 small has twelve layers of twelve heads; its logits must match exactly. " * 3
    match, max_diff = compare_outputs(model, hf_model, get_tokenizer("byte"), text)
    assert match, f"max |logit difference| {max_diff:.2e}"
