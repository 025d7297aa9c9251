"""Hugging Face <-> GPTModel weight mapping: every key, the right transposes, exact round trips."""

from __future__ import annotations

import pytest
import torch

from utils.config import ModelConfig
from utils.model import GPTModel
from utils.pretrained.mapping import (
    convert_custom_to_hf,
    convert_hf_to_custom,
    get_weight_mapping,
    iter_converted,
    normalize_hf_key,
)
from utils.pretrained.verify import random_hf_gpt2

# Non-square everywhere it can be (vocab != context != dim) so a shape mix-up cannot hide.
CONFIG = ModelConfig(vocab_size=101, context_length=24, embedding_dimension=32,
                     number_of_heads=4, number_of_layers=3, dropout_rate=0.0)
D = CONFIG.embedding_dimension


@pytest.fixture(scope="module")
def hf_model():
    # 10x GPT-2's init scale: one wrong matrix moves logits a lot, and float rounding
    # cannot flip an argmax.
    return random_hf_gpt2(CONFIG, seed=3, weight_scale=10)


@pytest.fixture(scope="module")
def hf_state(hf_model):
    return {k: v.clone() for k, v in hf_model.state_dict().items()}


def test_every_hf_key_is_mapped_and_every_model_key_filled(hf_state):
    mapping = get_weight_mapping(CONFIG.number_of_layers)
    assert set(mapping) == set(hf_state) - {"lm_head.weight"}
    converted = convert_hf_to_custom(hf_state, CONFIG)
    expected = GPTModel(CONFIG).state_dict()
    assert set(converted) == set(expected)
    for key, tensor in converted.items():
        assert tensor.shape == expected[key].shape, key


def test_c_attn_is_split_and_conv1d_weights_transposed(hf_state):
    ours = convert_hf_to_custom(hf_state, CONFIG)
    h, b = "transformer.h.1.", "transformer_blocks.1."
    c_attn_weight, c_attn_bias = hf_state[h + "attn.c_attn.weight"], hf_state[h + "attn.c_attn.bias"]
    assert c_attn_weight.shape == (D, 3 * D)  # Conv1D: [in, out]
    for index, name in enumerate(("W_query", "W_key", "W_value")):
        columns = slice(index * D, (index + 1) * D)
        assert torch.equal(ours[f"{b}attention.{name}.weight"], c_attn_weight[:, columns].t())
        assert torch.equal(ours[f"{b}attention.{name}.bias"], c_attn_bias[columns])
    assert torch.equal(ours[b + "attention.out_proj.weight"], hf_state[h + "attn.c_proj.weight"].t())
    assert torch.equal(ours[b + "feed_forward.net.0.weight"], hf_state[h + "mlp.c_fc.weight"].t())
    assert torch.equal(ours[b + "feed_forward.net.2.weight"], hf_state[h + "mlp.c_proj.weight"].t())
    assert torch.equal(ours[b + "norm2.scale"], hf_state[h + "ln_2.weight"])
    assert torch.equal(ours[b + "norm2.shift"], hf_state[h + "ln_2.bias"])
    assert ours["lm_head.weight"] is ours["token_embedding.weight"]


def _logit_gap(state: dict, hf_model) -> float:
    model = GPTModel(CONFIG).eval()
    model.load_state_dict(state)
    ids = torch.arange(CONFIG.context_length).unsqueeze(0) % CONFIG.vocab_size
    with torch.no_grad():
        return (model(ids) - hf_model(ids).logits).abs().max().item()


def test_correct_conversion_matches_and_a_wrong_transpose_does_not(hf_state, hf_model):
    good = convert_hf_to_custom(hf_state, CONFIG)
    assert _logit_gap(good, hf_model) < 1e-5
    # Square weights load with either orientation, so only the logits can tell (seed 002's bug).
    wrong = dict(good)
    wrong["transformer_blocks.0.attention.W_query.weight"] = \
        good["transformer_blocks.0.attention.W_query.weight"].t().contiguous()
    assert _logit_gap(wrong, hf_model) > 0.1
    wrong = dict(good)
    wrong["transformer_blocks.2.attention.out_proj.weight"] = \
        good["transformer_blocks.2.attention.out_proj.weight"].t().contiguous()
    assert _logit_gap(wrong, hf_model) > 0.1
    # Non-square ones fail a strict load outright.
    wrong = dict(good)
    wrong["transformer_blocks.0.feed_forward.net.0.weight"] = \
        good["transformer_blocks.0.feed_forward.net.0.weight"].t()
    with pytest.raises(RuntimeError, match="size mismatch"):
        GPTModel(CONFIG).load_state_dict(wrong)


def test_hf4_attention_buffers_are_ignored(hf_state):
    with_buffers = dict(hf_state)
    mask = torch.tril(torch.ones(CONFIG.context_length, CONFIG.context_length, dtype=torch.bool))
    for i in range(CONFIG.number_of_layers):
        with_buffers[f"transformer.h.{i}.attn.bias"] = mask.view(1, 1, *mask.shape)
        with_buffers[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    plain, buffered = convert_hf_to_custom(hf_state, CONFIG), convert_hf_to_custom(with_buffers, CONFIG)
    assert plain.keys() == buffered.keys()
    assert all(torch.equal(plain[k], buffered[k]) for k in plain)


def test_bare_gpt2model_state_dict_without_prefix(hf_model, hf_state):
    bare = hf_model.transformer.state_dict()  # a GPT2Model: "wte.weight", "h.0.ln_1.weight", ...
    assert "wte.weight" in bare and not any(k.startswith("transformer.") for k in bare)
    assert normalize_hf_key("h.0.ln_1.weight") == "transformer.h.0.ln_1.weight"
    from_bare, from_full = convert_hf_to_custom(bare, CONFIG), convert_hf_to_custom(hf_state, CONFIG)
    assert from_bare.keys() == from_full.keys()
    assert all(torch.equal(from_bare[k], from_full[k]) for k in from_full)


def test_round_trips_are_exact(hf_state):
    ours = convert_hf_to_custom(hf_state, CONFIG)
    back = convert_custom_to_hf(ours, CONFIG.number_of_layers)
    assert back.keys() == hf_state.keys()
    assert all(torch.equal(back[k], hf_state[k]) for k in hf_state)
    torch.manual_seed(4)
    model_state = GPTModel(CONFIG).state_dict()
    again = convert_hf_to_custom(convert_custom_to_hf(model_state, CONFIG.number_of_layers), CONFIG)
    assert again.keys() == model_state.keys()
    assert all(torch.equal(again[k], model_state[k]) for k in model_state)


def test_streaming_conversion_yields_the_same_tensors(hf_state):
    streamed = dict(iter_converted(hf_state, CONFIG.number_of_layers))
    whole = convert_hf_to_custom(hf_state, CONFIG)
    assert set(streamed) == set(whole) - {"lm_head.weight"}
    assert all(torch.equal(streamed[k], whole[k]) for k in streamed)


def test_missing_and_unexpected_keys_are_errors(hf_state):
    missing = {k: v for k, v in hf_state.items() if k != "transformer.h.2.mlp.c_fc.bias"}
    with pytest.raises(KeyError, match="lacks 1 key"):
        convert_hf_to_custom(missing, CONFIG)
    with pytest.raises(KeyError, match="unexpected"):
        convert_hf_to_custom({**hf_state, "transformer.h.0.attn.rotary.weight": torch.ones(1)}, CONFIG)
    # A 3-layer checkpoint is not a 2-layer model: layer 2's keys are unexpected there.
    with pytest.raises(KeyError, match="unexpected"):
        convert_hf_to_custom(hf_state, ModelConfig.from_dict({**CONFIG.to_dict(), "number_of_layers": 2}))


def test_mapping_errors_are_user_errors_with_a_plain_message(hf_state):
    """The CLI prints ValueErrors as one line; the message is not wrapped in KeyError quotes."""
    from utils.pretrained.mapping import WeightMappingError

    broken = dict(hf_state)
    broken["transformer.h.99.ln_1.weight"] = broken["transformer.ln_f.weight"]
    with pytest.raises(ValueError) as caught:
        convert_hf_to_custom(broken, CONFIG)
    assert isinstance(caught.value, WeightMappingError)
    assert str(caught.value).startswith("unexpected Hugging Face key")
