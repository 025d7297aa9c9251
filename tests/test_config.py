"""ModelConfig / TrainingConfig: presets, validation messages, legacy keys, round trips."""

from __future__ import annotations

import pytest
import torch

from utils.config import (
    GPT2_CONFIGS,
    PRESET_ALIASES,
    ConfigError,
    ModelConfig,
    TrainingConfig,
)

GPT2_SHAPES = {  # (embedding_dimension, number_of_heads, number_of_layers), from OpenAI's hparams
    "small": (768, 12, 12),
    "medium": (1024, 16, 24),
    "large": (1280, 20, 36),
    "xl": (1600, 25, 48),
}


@pytest.mark.parametrize("name", sorted(GPT2_SHAPES))
def test_gpt2_presets_have_the_released_shapes(name):
    config = GPT2_CONFIGS[name]
    shape = (config.embedding_dimension, config.number_of_heads, config.number_of_layers)
    assert shape == GPT2_SHAPES[name]
    assert (config.vocab_size, config.context_length) == (50257, 1024)
    assert config.use_attention_bias is True  # GPT-2's c_attn has a bias (seed 000 dropped it)
    assert config.head_dimension == 64


def test_aliases_resolve_to_presets():
    assert ModelConfig.from_preset("gpt2") == GPT2_CONFIGS["small"]
    assert ModelConfig.from_preset("gpt2-xl") == GPT2_CONFIGS["xl"]
    assert ModelConfig.from_preset("355M") == GPT2_CONFIGS["medium"]
    assert all(target in GPT2_CONFIGS for target in PRESET_ALIASES.values())


def test_from_preset_copies_and_applies_overrides():
    config = ModelConfig.from_preset("tiny", context_length=64, dropout_rate=0.0)
    assert config.context_length == 64 and GPT2_CONFIGS["tiny"].context_length == 128
    config.number_of_layers = 99
    assert GPT2_CONFIGS["tiny"].number_of_layers == 2  # the preset itself is untouched


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match=r"unknown model preset 'gpt5'.*'gpt2'.*'tiny'"):
        ModelConfig.from_preset("gpt5")


def test_heads_must_divide_dimension_and_message_names_values():
    with pytest.raises(ConfigError, match=r"embedding_dimension \(100\).*number_of_heads \(3\)"):
        ModelConfig(embedding_dimension=100, number_of_heads=3)


@pytest.mark.parametrize("field, value", [
    ("vocab_size", 0), ("context_length", -1), ("number_of_layers", 2.0),
    ("number_of_heads", True), ("embedding_dimension", "768"),
])
def test_positive_integer_fields(field, value):
    with pytest.raises(ConfigError, match=rf"ModelConfig\.{field} must be a positive integer, "
                                          rf"got {value!r}"):
        ModelConfig(**{field: value})


@pytest.mark.parametrize("rate", [-0.1, 1.0])
def test_dropout_rate_range(rate):
    with pytest.raises(ConfigError, match=rf"dropout_rate must be in \[0, 1\), got {rate}"):
        ModelConfig(dropout_rate=rate)


def test_legacy_key_is_migrated():
    legacy = GPT2_CONFIGS["small"].to_dict()
    del legacy["use_attention_bias"]
    legacy["query_key_value_bias"] = False
    config = ModelConfig.from_dict(legacy)
    assert config.use_attention_bias is False
    assert "query_key_value_bias" in legacy  # the caller's dict is not modified


def test_conflicting_legacy_and_new_key_is_an_error():
    data = GPT2_CONFIGS["tiny"].to_dict() | {"query_key_value_bias": False}
    with pytest.raises(ConfigError, match=r"query_key_value_bias=False and use_attention_bias=True"):
        ModelConfig.from_dict(data)


def test_unknown_keys_are_rejected_by_name():
    data = GPT2_CONFIGS["tiny"].to_dict() | {"n_embd": 768, "rotary": True}
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\) \['n_embd', 'rotary'\]"):
        ModelConfig.from_dict(data)


def test_from_dict_rejects_non_dicts():
    with pytest.raises(ConfigError, match="must be a dict, got list"):
        ModelConfig.from_dict([768, 12])


def test_model_config_round_trips_through_a_weights_only_checkpoint(tmp_path):
    config = ModelConfig.from_preset("tiny", dropout_rate=0.1)
    path = tmp_path / "c.pt"
    torch.save({"config": config.to_dict()}, path)
    loaded = torch.load(path, weights_only=True)["config"]
    assert ModelConfig.from_dict(loaded) == config


def test_training_config_round_trip_and_validation(tmp_path):
    config = TrainingConfig(max_steps=10, batch_size=2, betas=[0.9, 0.99])
    assert config.betas == (0.9, 0.99)
    path = tmp_path / "t.pt"
    torch.save(config.to_dict(), path)
    assert TrainingConfig.from_dict(torch.load(path, weights_only=True)) == config
    with pytest.raises(ConfigError, match=r"unknown training config key\(s\) \['lr'\]"):
        TrainingConfig.from_dict({"lr": 1e-3})
    with pytest.raises(ConfigError, match="precision must be one of .* got 'fp8'"):
        TrainingConfig(precision="fp8")
    with pytest.raises(ConfigError, match="set max_steps or epochs"):
        TrainingConfig(max_steps=None, epochs=None)
    with pytest.raises(ConfigError, match="batch_size must be >= 1, got 0"):
        TrainingConfig(batch_size=0)
    with pytest.raises(ConfigError, match=r"min_learning_rate \(0.01\) exceeds learning_rate"):
        TrainingConfig(learning_rate=1e-3, min_learning_rate=1e-2)


def test_tiny_config_fixture_pairs_with_byte_tokenizer(tiny_config):
    from utils.tokenizer import get_tokenizer

    assert tiny_config.vocab_size == get_tokenizer("byte").n_vocab


def test_training_config_rejects_what_no_training_can_use():
    """Non-finite or nonsensical values fail at once, naming the setting that was given
    (a learning rate of -1 is a learning_rate problem, not a min_learning_rate one)."""
    for settings, named in [({"learning_rate": float("inf")}, "learning_rate"),
                            ({"learning_rate": -1.0, "min_learning_rate": -0.1},
                             "learning_rate must"),
                            ({"grad_clip": float("nan")}, "grad_clip"),
                            ({"weight_decay": float("nan")}, "weight_decay"),
                            ({"betas": (0.9, 1.5)}, "betas"),
                            ({"warmup_steps": -1}, "warmup_steps"),
                            ({"batch_size": 2.5}, "batch_size must be an integer")]:
        with pytest.raises(ConfigError, match=named):
            TrainingConfig(**settings)
