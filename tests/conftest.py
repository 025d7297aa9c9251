"""Shared fixtures. Nothing here touches the network: GPT-2's BPE comes from the repository's
tiktoken cache, which `make install` fills (scripts/prepare_tokenizer.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from utils.config import ModelConfig
from utils.tokenizer import REPO_TIKTOKEN_CACHE

REPO_ROOT = Path(__file__).resolve().parent.parent

# Set at import, before any test can load tiktoken: tests read GPT-2's BPE from the repo cache
# (an explicit TIKTOKEN_CACHE_DIR from the caller wins).
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO_TIKTOKEN_CACHE))


@pytest.fixture
def tiny_config() -> ModelConfig:
    """Two layers, 256+1 ids (pairs with `get_tokenizer("byte")`), no dropout: fast and exact."""
    return ModelConfig(vocab_size=257, context_length=32, embedding_dimension=32,
                       number_of_heads=4, number_of_layers=2, dropout_rate=0.0,
                       use_attention_bias=True)


@pytest.fixture(scope="session")
def uninterrupted_run(tmp_path_factory):
    """(final state dict, metrics history) of tests/_train_worker.py's run, never
    interrupted: in this process, single-threaded like the workers."""
    import torch

    from tests import _train_worker as worker

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = worker.make_trainer(tmp_path_factory.mktemp("reference"))
        history = trainer.fit(resume_from=None)
    finally:
        torch.set_num_threads(threads)
    return trainer.model.state_dict(), history


@pytest.fixture(scope="session")
def uninterrupted_weights(uninterrupted_run):
    return uninterrupted_run[0]


@pytest.fixture()
def one_thread():
    """Tiny models run fastest single-threaded, above all on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
