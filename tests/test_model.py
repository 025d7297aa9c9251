"""GPTModel: GPT-2's shapes, names, tying, causality, KV cache, loss and initialisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from utils.config import GPT2_CONFIGS, ModelConfig
from utils.model import GPTModel, count_parameters

# Small enough for a quick CPU test, big enough to have several heads and layers.
TINY = ModelConfig(vocab_size=97, context_length=32, embedding_dimension=48, number_of_heads=4,
                   number_of_layers=3, dropout_rate=0.0, use_attention_bias=True)


def tiny_model(seed: int = 0, **overrides) -> GPTModel:
    torch.manual_seed(seed)
    config = ModelConfig.from_dict({**TINY.to_dict(), **overrides})
    return GPTModel(config).eval()


@pytest.mark.parametrize("preset, expected", [
    ("small", 124_439_808), ("medium", 354_823_168), ("large", 774_030_080), ("xl", 1_557_611_200),
])
def test_parameter_counts_match_gpt2(preset, expected):
    # The meta device allocates no memory, so even xl costs nothing.
    with torch.device("meta"):
        model = GPTModel(ModelConfig.from_preset(preset))
    assert count_parameters(model) == expected


def test_state_dict_names_are_the_checkpoint_contract():
    model = tiny_model()
    expected = ["token_embedding.weight", "position_embedding.weight"]
    for i in range(TINY.number_of_layers):
        block = f"transformer_blocks.{i}."
        expected += [block + "norm1.scale", block + "norm1.shift"]
        for name in ("W_query", "W_key", "W_value", "out_proj"):
            expected += [f"{block}attention.{name}.weight", f"{block}attention.{name}.bias"]
        expected += [block + "norm2.scale", block + "norm2.shift"]
        for layer in (0, 2):
            expected += [f"{block}feed_forward.net.{layer}.weight",
                         f"{block}feed_forward.net.{layer}.bias"]
    expected += ["final_norm.scale", "final_norm.shift", "lm_head.weight"]
    assert sorted(model.state_dict()) == sorted(expected)


def test_attention_bias_can_be_switched_off():
    names = tiny_model(use_attention_bias=False).state_dict()
    assert "transformer_blocks.0.attention.W_query.bias" not in names
    assert "transformer_blocks.0.attention.out_proj.bias" in names  # c_proj always has a bias


def test_head_is_tied_to_token_embedding():
    model = tiny_model()
    assert model.lm_head.weight is model.token_embedding.weight
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["token_embedding.weight"].data_ptr()
    with torch.no_grad():
        model.token_embedding.weight[3, 5] = 7.0
    assert model.lm_head.weight[3, 5].item() == 7.0


def test_tie_weights_reties_after_assign_load():
    model = tiny_model()
    state = {k: v.clone() for k, v in tiny_model(seed=1).state_dict().items()}
    model.load_state_dict(state, assign=True)
    model.tie_weights()
    assert model.lm_head.weight is model.token_embedding.weight
    assert torch.equal(model.lm_head.weight, state["token_embedding.weight"])


def test_future_tokens_do_not_change_earlier_logits():
    model = tiny_model()
    ids = torch.randint(0, TINY.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % TINY.vocab_size
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])  # and the change does show where it may


def test_kv_cache_decoding_equals_full_forward():
    model = tiny_model()
    ids = torch.randint(0, TINY.vocab_size, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_kv_cache(batch_size=2)
        pieces = [model(ids[:, :10], kv_cache=cache)]            # prefill
        for t in range(10, 15):                                   # single steps
            pieces.append(model(ids[:, t:t + 1], kv_cache=cache))
        pieces.append(model(ids[:, 15:23], kv_cache=cache))      # a multi-token chunk
        for t in range(23, 30):                                   # single steps again
            pieces.append(model(ids[:, t:t + 1], kv_cache=cache))
    incremental = torch.cat(pieces, dim=1)
    assert cache.length == 30
    torch.testing.assert_close(incremental, full, rtol=0, atol=1e-5)


def test_kv_cache_overflow_is_an_error():
    model = tiny_model()
    cache = model.new_kv_cache(batch_size=1, max_length=8)
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ValueError, match="8"):
            model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)


def test_loss_is_cross_entropy_of_logits():
    model = tiny_model()
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, TINY.vocab_size, (3, 16), generator=generator)
    targets = torch.randint(0, TINY.vocab_size, (3, 16), generator=generator)
    logits, loss = model(ids, targets)
    expected = F.cross_entropy(logits.reshape(-1, TINY.vocab_size), targets.reshape(-1))
    torch.testing.assert_close(loss, expected)
    # An untrained model is close to uniform: loss near ln(vocab).
    assert abs(loss.item() - math.log(TINY.vocab_size)) < 0.5
    loss.backward()
    assert model.token_embedding.weight.grad is not None


def test_initialisation_follows_gpt2():
    config = ModelConfig(vocab_size=1000, context_length=64, embedding_dimension=256,
                         number_of_heads=4, number_of_layers=4)
    torch.manual_seed(0)
    model = GPTModel(config)
    residual_std = 0.02 / math.sqrt(2 * config.number_of_layers)
    block = model.transformer_blocks[1]
    for weight, std in [
        (model.token_embedding.weight, 0.02),
        (model.position_embedding.weight, 0.02),
        (block.attention.W_query.weight, 0.02),
        (block.feed_forward.net[0].weight, 0.02),
        (block.attention.out_proj.weight, residual_std),
        (block.feed_forward.net[2].weight, residual_std),
    ]:
        assert weight.std().item() == pytest.approx(std, rel=0.05)
        assert abs(weight.mean().item()) < std / 10
    assert torch.count_nonzero(block.attention.W_query.bias) == 0
    assert torch.equal(block.norm1.scale, torch.ones(256))
    assert torch.count_nonzero(block.norm1.shift) == 0


def test_context_length_overflow_is_a_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="context_length 32"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_last_position_only_gives_the_last_logits():
    model = tiny_model()
    ids = torch.randint(0, TINY.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)
        last = model(ids, last_position_only=True)
    assert last.shape == (2, 1, TINY.vocab_size)
    torch.testing.assert_close(last, full[:, -1:], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="no loss"):
        model(ids, ids, last_position_only=True)


def test_meta_skeleton_has_shapes_only_and_runs_no_initialiser(monkeypatch):
    from utils.model import meta_skeleton

    calls = []
    real_normal = torch.nn.init.normal_

    def spy(tensor, *args, **kwargs):
        calls.append(tensor.shape)
        return real_normal(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "normal_", spy)
    config = GPT2_CONFIGS["small"]
    skeleton = meta_skeleton(config)
    assert calls == []
    assert all(p.is_meta for p in skeleton.parameters())
    assert count_parameters(skeleton) == 124_439_808
    assert torch.nn.init.normal_ is spy  # the patch is undone after the build
    GPTModel(ModelConfig.from_preset("tiny", vocab_size=64))  # a normal build initialises again
    assert calls
