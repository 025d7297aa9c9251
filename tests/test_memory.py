"""Training memory as arithmetic: weights, gradients, AdamW, activations; the batch size and
accumulation that fit a GPU (gpt2-medium on a 15 GB T4) planned without one."""

from __future__ import annotations

import pytest
import torch

from utils.config import GPT2_CONFIGS, ModelConfig
from utils.model import GPTModel
from utils.model import memory as M

MEDIUM = GPT2_CONFIGS["medium"]
MEDIUM_PARAMS = 354_823_168
T4_BYTES = 15 * M.GIB


def test_block_activation_bytes_by_hand():
    config = ModelConfig(vocab_size=1000, context_length=64, embedding_dimension=128,
                         number_of_heads=4, number_of_layers=4, dropout_rate=0.0)
    # two fp32 LayerNorm inputs (2 x 4d) + 15d in the activation dtype + 4 bytes per head
    assert M.block_activation_bytes_per_token(config, "fp32") == 8 * 128 + 15 * 4 * 128 + 16
    assert M.block_activation_bytes_per_token(config, "bf16") == 8 * 128 + 15 * 2 * 128 + 16
    dropout = ModelConfig.from_dict({**config.to_dict(), "dropout_rate": 0.1})
    assert M.block_activation_bytes_per_token(dropout, "fp16") == 8 * 128 + 15 * 2 * 128 + 16 + 256


def test_training_memory_of_gpt2_medium_in_fp16_by_hand():
    estimate = M.training_memory(MEDIUM, batch_size=4, precision="fp16")
    tokens, d = 4 * 1024, 1024
    assert M.parameter_count(MEDIUM) == MEDIUM_PARAMS
    assert (estimate.weights, estimate.gradients, estimate.optimizer, estimate.autocast_weights) \
        == (4 * MEDIUM_PARAMS, 4 * MEDIUM_PARAMS, 8 * MEDIUM_PARAMS, 2 * MEDIUM_PARAMS)
    per_block = 8 * d + 30 * d + 4 * 16 + 2 * d  # GPT-2 presets have dropout 0.1: masks
    assert estimate.activations == 24 * per_block * tokens + 4 * d * tokens
    assert estimate.head == 12 * tokens * 50257
    assert estimate.total == sum((estimate.weights, estimate.gradients, estimate.optimizer,
                                  estimate.autocast_weights, estimate.activations, estimate.head))
    fp32 = M.training_memory(MEDIUM, batch_size=4, precision="fp32")
    assert fp32.autocast_weights == 0
    assert fp32.head == 4 * (512 * 50257 + tokens * d + 50257 * d)  # fused head + loss


def test_activation_checkpointing_keeps_block_inputs_and_one_block():
    plain = M.training_memory(MEDIUM, 8, precision="bf16")
    checkpointed = M.training_memory(MEDIUM, 8, precision="bf16", activation_checkpointing=True)
    per_block = M.block_activation_bytes_per_token(MEDIUM, "bf16")
    tokens = 8 * 1024
    assert checkpointed.activations == (24 * 4 * 1024 + per_block + 4 * 1024) * tokens
    assert checkpointed.activations < plain.activations / 6
    assert checkpointed.head == plain.head  # the logits are not inside a block


def test_gpt2_medium_on_a_15_gb_t4():
    plan = M.suggest_batch_size(MEDIUM, T4_BYTES, batch_size=16, precision="fp16")
    assert (plan.micro_batch_size, plan.gradient_accumulation_steps,
            plan.activation_checkpointing) == (4, 4, False)
    assert plan.batch_size == 16
    usable = T4_BYTES - M.CUDA_RESERVED_BYTES
    assert plan.estimate.total * M.SAFETY_FACTOR <= usable
    # it is the largest power of two that fits
    assert M.training_memory(MEDIUM, 8, precision="fp16").total * M.SAFETY_FACTOR > usable
    assert "batch_size=4, gradient_accumulation_steps=4" in plan.describe()
    # an odd target rounds the step up, never down
    odd = M.suggest_batch_size(MEDIUM, T4_BYTES, batch_size=10, precision="fp16")
    assert (odd.micro_batch_size, odd.gradient_accumulation_steps) == (4, 3)


def test_checkpointing_only_when_nothing_fits_without_it():
    plan = M.suggest_batch_size(MEDIUM, 9 * M.GIB, batch_size=16, precision="fp16")
    assert (plan.micro_batch_size, plan.gradient_accumulation_steps,
            plan.activation_checkpointing) == (1, 16, True)
    plain = M.suggest_batch_size(MEDIUM, 10 * M.GIB, batch_size=16, precision="fp16")
    assert (plain.micro_batch_size, plain.activation_checkpointing) == (1, False)
    with pytest.raises(M.InsufficientMemoryError, match="shorter context_length"):
        M.suggest_batch_size(MEDIUM, 8 * M.GIB, batch_size=16, precision="fp16")
    with pytest.raises(M.InsufficientMemoryError):
        M.suggest_batch_size(MEDIUM, 9 * M.GIB, 16, precision="fp16", allow_checkpointing=False)


def test_check_memory_counts_activations_and_suggests_a_plan():
    # weights + gradients + AdamW alone fit a T4 ...
    M.check_memory(MEDIUM, "cuda", training=True, available=T4_BYTES)
    # ... a batch of 16 sequences does not, and the message says what does
    with pytest.raises(M.InsufficientMemoryError) as caught:
        M.check_memory(MEDIUM, "cuda", training=True, available=T4_BYTES, name="gpt2-medium",
                       batch_size=16, precision="fp16")
    message = str(caught.value)
    assert "gpt2-medium" in message and "GPU memory" in message
    assert "batch_size=4, gradient_accumulation_steps=4" in message
    needed = M.check_memory(MEDIUM, "cuda", training=True, available=T4_BYTES, batch_size=4,
                            dtype=torch.float16)
    assert needed == int(M.training_memory(MEDIUM, 4, precision="fp16").total * M.SAFETY_FACTOR)


def _saved_bytes(model: GPTModel, ids: torch.Tensor, precision: str) -> int:
    """Bytes of the distinct non-parameter storages autograd saves in one forward pass."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        if precision == "fp32":  # the Trainer's fp32 path: fused head + loss
            model(ids[:, :-1], ids[:, 1:], return_logits=False)
        else:  # under autocast the Trainer takes the logits path
            logits = model(ids[:, :-1])
            torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
    return sum(saved.values())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_estimate_matches_what_autograd_saves(precision):
    # dropout 0: on a CPU, attention with dropout takes the [T, T] math path (CUDA's flash
    # kernel does not), which this GPU-oriented estimate does not count
    config = ModelConfig(vocab_size=1000, context_length=64, embedding_dimension=128,
                         number_of_heads=4, number_of_layers=4, dropout_rate=0.0)
    torch.manual_seed(0)
    model = GPTModel(config).train()
    ids = torch.randint(0, 1000, (8, 65), generator=torch.Generator().manual_seed(0))
    measured = _saved_bytes(model, ids, precision)
    estimate = M.training_memory(config, 8, 64, precision)
    tokens = 8 * 64
    if precision == "fp32":  # saved: the fused loss's gradients (its logit block is transient)
        expected = estimate.activations + 4 * (tokens * 128 + 1000 * 128)
    else:  # saved: the weights' bf16 copies and log_softmax's fp32 output
        expected = estimate.activations + estimate.autocast_weights + 4 * tokens * 1000
    assert 0.85 <= measured / expected <= 1.15, (measured, expected)
