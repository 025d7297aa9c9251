"""`utils.training.preparation`: one way to prepare a run, for the command line and the
notebook alike (tokenizer policy, model shape, memory check before the data, the Trainer
given the corpus's token hash)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import utils.data.batches as batches
from utils.config import GPT2_CONFIGS, ModelConfig, TrainingConfig
from utils.data import BatchLoader, hash_tokens, load_data
from utils.model.memory import InsufficientMemoryError
from utils.pretrained.huggingface import pretrained_model_config
from utils.pretrained.verify import random_hf_gpt2
from utils.training.engine.trainer import Trainer
from utils.training.preparation import (
    ModelChoice,
    RunSettings,
    build_model,
    data_tokenizer,
    describe_model,
    known_tokens_sha256,
    new_model_config,
    prepare_run,
)

SIZES = {"number_of_layers": 1, "number_of_heads": 2, "embedding_dimension": 16,
         "context_length": 16, "dropout_rate": 0.0}


def settings(tmp_path, **changes) -> RunSettings:
    training = TrainingConfig(max_steps=2, batch_size=2, eval_interval=2, eval_batches=1,
                              checkpoint_dir=str(tmp_path / "ckpt"), device="cpu")
    values = {"model": ModelChoice(preset="tiny", sizes=SIZES), "tokenizer": "byte",
              "val_fraction": 0.1, "progress": False, **changes}
    return RunSettings(training, **values)


def nanogpt_folder(root):
    """nanoGPT's character-level data: 10 characters (meta.pkl), ids 0..9."""
    folder = root / "nanogpt"
    folder.mkdir()
    ids = np.random.default_rng(0).integers(0, 10, 4000).astype(np.uint16)
    ids[:3000].tofile(folder / "train.bin")
    ids[3000:].tofile(folder / "val.bin")
    chars = "\n !abcdefg"
    meta = {"vocab_size": 10, "itos": dict(enumerate(chars)),
            "stoi": {c: i for i, c in enumerate(chars)}}
    (folder / "meta.pkl").write_bytes(pickle.dumps(meta))
    return folder


def test_prepare_run_gives_the_trainer_the_fingerprint_of_its_tokens(tmp_path):
    prepared = prepare_run(settings(tmp_path))
    data, trainer = prepared.data, prepared.trainer
    assert prepared.model_config == new_model_config(ModelChoice(preset="tiny", sizes=SIZES), 257)
    assert trainer.tokenizer_name == "byte" and trainer.init_from is None
    # the hash handed over is the one the Trainer would compute from its own loaders
    fresh = Trainer(prepared.model, trainer.config, data.train, data.val,
                    tokenizer_name="byte", progress=False)
    assert trainer.fingerprint == fresh.fingerprint
    assert trainer.data_identity()["sha256"] == hash_tokens(data.train, data.val)
    assert "model: " in prepared.summary() and "1 layers" in prepared.summary()


def test_the_corpus_is_hashed_once_however_many_trainers_use_it(tmp_path, monkeypatch):
    calls = []
    real = batches.hash_tokens
    monkeypatch.setattr("utils.data.load.hash_tokens",
                        lambda *arrays: calls.append(1) or real(*arrays))
    data = load_data(None, "byte", 0.1, progress=False)
    model = build_model(ModelConfig(vocab_size=257, **SIZES))[0]
    train, val = BatchLoader(data.train, 2, 16), BatchLoader(data.val, 2, 16)
    fingerprints = {Trainer(model, TrainingConfig(seed=seed), train, val, progress=False,
                            data_sha256=known_tokens_sha256(data, train, val)).fingerprint
                    for seed in (1, 2, 3)}
    assert len(fingerprints) == 3 and len(calls) == 1


def test_a_hash_is_handed_over_only_for_the_corpus_the_loaders_hold():
    data = load_data(None, "byte", 0.1, progress=False)
    other = np.arange(500, dtype=np.uint16)
    assert known_tokens_sha256(data, data.train, data.val) == data.tokens_sha256
    assert known_tokens_sha256(data, BatchLoader(data.train, 2, 16), data.val) is not None
    assert known_tokens_sha256(data, other, data.val) is None
    assert known_tokens_sha256(None, data.train, data.val) is None


def test_tokenizer_policy_for_text_and_for_token_files(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("some text " * 50)
    folder = nanogpt_folder(tmp_path)
    assert data_tokenizer(text, None) == "gpt2" and data_tokenizer(text, "byte") == "byte"
    assert data_tokenizer(None, "byte", chosen=False) == "byte"
    # token files bring their ids: a flag is checked against them, a form's value left out
    assert data_tokenizer(folder, "gpt2") == "gpt2"  # load_data refuses it for characters
    assert data_tokenizer(folder, "gpt2", chosen=False) is None
    assert data_tokenizer(folder, None) is None


def test_token_files_give_the_model_their_vocabulary(tmp_path):
    prepared = prepare_run(settings(tmp_path, data_path=str(nanogpt_folder(tmp_path)),
                                    tokenizer=None))
    assert prepared.data.kind == "nanogpt" and prepared.model_config.vocab_size == 10


def test_a_model_too_big_is_refused_before_the_text_is_read(tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the corpus was read before the memory check")

    monkeypatch.setattr("utils.data.load_data", never)
    huge = {**SIZES, "number_of_layers": 1000, "embedding_dimension": 65536}
    with pytest.raises(InsufficientMemoryError, match="number_of_layers 1000"):
        prepare_run(settings(tmp_path, model=ModelChoice(preset="tiny", sizes=huge)))


def test_a_checkpoints_shape_wins_over_the_default_preset():
    saved = {"config": ModelConfig(vocab_size=257, **SIZES).to_dict()}
    config = new_model_config(ModelChoice(saved=saved, sizes={"dropout_rate": 0.1}), 50257)
    assert config.vocab_size == 257 and config.dropout_rate == 0.1
    named = new_model_config(ModelChoice(preset="tiny", saved=saved), 50257)
    assert named == ModelConfig.from_preset("tiny", vocab_size=50257)


def test_pretrained_weights_bring_their_shape(tmp_path):
    config = ModelConfig(vocab_size=300, **{**SIZES, "dropout_rate": 0.1})
    random_hf_gpt2(config, seed=1).save_pretrained(tmp_path / "hf")
    assert pretrained_model_config(str(tmp_path / "hf")) == config
    assert pretrained_model_config("gpt2-medium") == GPT2_CONFIGS["medium"]
    assert pretrained_model_config("someone/a-model") is None  # known when it loads
    prepared = prepare_run(settings(tmp_path, model=ModelChoice(init_from=str(tmp_path / "hf"))))
    assert prepared.model_config == config and prepared.trainer.init_from == str(tmp_path / "hf")
    assert prepared.model.training


def test_a_new_model_starts_from_the_training_seed(tmp_path):
    first = prepare_run(settings(tmp_path)).model.state_dict()
    torch.manual_seed(12345)  # whatever came before
    second = prepare_run(settings(tmp_path)).model.state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_data_with_more_ids_than_the_model_knows_is_refused(tmp_path):
    saved = {"config": ModelConfig(vocab_size=257, **SIZES).to_dict()}
    with pytest.raises(ValueError, match="'gpt2' has 50257 ids but the model's vocabulary is 257"):
        prepare_run(settings(tmp_path, model=ModelChoice(saved=saved), tokenizer="gpt2"))


def test_a_model_is_named_by_its_preset_only_when_no_size_was_changed():
    tiny = ModelConfig.from_preset("tiny", vocab_size=257)
    assert describe_model(tiny, ModelChoice(preset="tiny")) == "tiny"
    longer = ModelConfig.from_preset("tiny", vocab_size=257, context_length=4096)
    named = describe_model(longer, ModelChoice(preset="tiny", sizes={"context_length": 4096}))
    assert named.startswith("a model of ") and "context_length 4096" in named
    assert describe_model(tiny, ModelChoice(init_from="gpt2")) == "gpt2"
