"""The output head computes on a vocabulary padded to a multiple of 64 on CUDA (aligned
tensor-core kernels), invisibly: the same logits, loss and gradients as the unpadded head,
the same state dict and files, logits with the tokenizer's vocabulary. On the CPU the padding
is off by default; these tests force it on (`GPTModel.pad_head = True`) to check the maths."""

from __future__ import annotations

import hashlib

import pytest
import torch

from utils.config import GPT2_CONFIGS, ModelConfig, TrainingConfig
from utils.model import GPTModel, meta_skeleton
from utils.model.gpt import HEAD_ALIGNMENT, HEAD_PADDING_MIN_ROWS, padded_vocab_size, pads_head

GPT2_VOCAB = 50257


def _config(vocab_size: int = GPT2_VOCAB) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, context_length=16, embedding_dimension=32,
                       number_of_heads=2, number_of_layers=2, dropout_rate=0.0,
                       use_attention_bias=True)


def _model(vocab_size: int = GPT2_VOCAB) -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(_config(vocab_size))


def _ids(vocab_size: int = GPT2_VOCAB, batch: int = 4, length: int = 17) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(1))


def _run(model: GPTModel, ids: torch.Tensor, pad: bool, autocast: bool, return_logits: bool):
    model.pad_head = pad
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits, loss = model(ids[:, :-1], ids[:, 1:], return_logits=return_logits)
    loss.backward()
    return logits, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_padded_sizes():
    assert padded_vocab_size(GPT2_VOCAB) == 50304  # nanoGPT's padded GPT-2 vocabulary
    assert padded_vocab_size(257) == 320 and padded_vocab_size(64) == 64
    assert HEAD_ALIGNMENT == 64


@pytest.mark.parametrize("vocab_size", [GPT2_VOCAB, 65])  # the fused path, and the plain one
@pytest.mark.parametrize("return_logits", [False, True])
def test_padded_head_gives_the_unpadded_logits_loss_and_gradients_fp32(vocab_size, return_logits):
    model, ids = _model(vocab_size), _ids(vocab_size)
    plain_logits, plain_loss, plain_grads = _run(model, ids, False, False, return_logits)
    logits, loss, grads = _run(model, ids, True, False, return_logits)
    assert (loss - plain_loss).abs() <= 1e-6
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        assert grads[name].shape == plain_grads[name].shape, name
        assert (grads[name] - plain_grads[name]).abs().max() <= 1e-6, name
    if return_logits:
        assert logits.shape == (4, 16, vocab_size)  # never the padded columns
        assert (logits - plain_logits).abs().max() <= 1e-6


def test_padded_head_under_autocast_matches_the_unpadded_one():
    """bf16 autocast (the GPU's path, here on the CPU): the head is one 16-bit product over
    the padded weight and the loss is taken over the real columns only."""
    model, ids = _model(), _ids()
    _, plain_loss, plain_grads = _run(model, ids, False, True, False)
    _, loss, grads = _run(model, ids, True, True, False)
    assert (loss - plain_loss).abs() <= 1e-6
    for name in grads:
        assert (grads[name] - plain_grads[name]).abs().max() <= 1e-6, name


def test_padding_gives_no_probability_to_padded_ids():
    """The padded rows are zero, so their logit would be 0: far above real logits that are
    all negative, as here. They are never part of the softmax: the loss equals the softmax
    over the real vocabulary, and logits (hence sampling) stop at vocab_size."""
    model = _model()
    with torch.no_grad():
        model.final_norm.scale.zero_()
        model.final_norm.shift.fill_(1.0)  # every hidden state is all ones
        spread = torch.rand(GPT2_VOCAB, 1, generator=torch.Generator().manual_seed(2)) + 0.5
        model.token_embedding.weight.copy_(-spread.expand(-1, 32))  # logits in [-48, -16]
        ids = _ids(length=16)
        for pad in (True, False):
            model.pad_head = pad
            logits = model(ids)
            assert logits.shape[-1] == GPT2_VOCAB and logits.max() < -15
            for return_logits in (False, True):
                _, loss = model(ids[:, :-1], ids[:, 1:], return_logits=return_logits)
                reference = torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, GPT2_VOCAB), ids[:, 1:].reshape(-1))
                assert abs(loss.item() - reference.item()) <= 1e-5 * reference.item()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                _, loss = model(ids[:, :-1], ids[:, 1:], return_logits=False)
            assert abs(loss.item() - reference.item()) <= 1e-2 * reference.item()


def test_state_dict_and_parameters_are_unchanged():
    model = _model()
    before = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.pad_head = True
    model(_ids(length=16))  # a padded forward pass changes no parameter or buffer
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == before
    assert before["token_embedding.weight"] == (GPT2_VOCAB, 32)
    assert model.lm_head.weight is model.token_embedding.weight
    small = meta_skeleton(GPT2_CONFIGS["small"])
    assert sum(p.numel() for p in small.parameters()) == 124_439_808
    assert small.token_embedding.weight.shape[0] == GPT2_VOCAB


def test_padding_is_on_for_cuda_training_shapes_only():
    rows = 16 * 1024
    assert pads_head(rows, "cuda", GPT2_VOCAB)
    assert not pads_head(rows, "cpu", GPT2_VOCAB)  # CPU kernels gain nothing from it
    assert not pads_head(rows, "mps", GPT2_VOCAB)
    assert not pads_head(1, "cuda", GPT2_VOCAB)  # decoding a token: a matrix-vector product
    assert pads_head(HEAD_PADDING_MIN_ROWS, "cuda", GPT2_VOCAB)
    assert not pads_head(rows, "cuda", 50304)  # already aligned
    assert pads_head(rows, "cpu", GPT2_VOCAB, forced=True)
    assert not pads_head(rows, "cuda", GPT2_VOCAB, forced=False)
    assert pads_head(rows, "cuda", 257)  # the byte tokenizer's 257 ids: 320 on the GPU too


def test_a_checkpoint_trained_unpadded_resumes_bitwise_with_the_padded_head(tmp_path, monkeypatch):
    """A checkpoint written before the padding existed (the unpadded head) resumes with
    it on, exactly like an uninterrupted padded run from that checkpoint: the state dict,
    optimizer and data state are the same objects as before."""
    from utils.training.engine.trainer import Trainer

    tokens = _ids(batch=1, length=4000).flatten().numpy().astype("uint16")

    def trainer(folder, steps, pad):
        monkeypatch.setattr(GPTModel, "pad_head", pad)
        config = TrainingConfig(max_steps=steps, batch_size=2, eval_interval=4, eval_batches=1,
                                checkpoint_interval=4, checkpoint_dir=str(folder),
                                device="cpu", background_checkpointing=False, log_interval=2,
                                keep_full=None)  # step 4 stays resumable after step 8
        return Trainer(_model(), config, tokens[:3500], tokens[3500:], progress=False)

    old = trainer(tmp_path / "a", 8, False)
    old.fit(stop_at_step=4)  # written "before": unpadded
    resumed = trainer(tmp_path / "a", 8, True)
    resumed.fit()
    assert resumed.global_step == 8
    uninterrupted_from_4 = trainer(tmp_path / "b", 8, True)
    checkpoint = sorted((tmp_path / "a").glob("checkpoint_*step000004_*.pt"))[0]
    uninterrupted_from_4.fit(resume_from=checkpoint)
    for (name, a), (_, b) in zip(resumed.model.state_dict().items(),
                                 uninterrupted_from_4.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_export_is_byte_identical_with_or_without_padding(tmp_path):
    from utils.pretrained.huggingface import export_to_hf

    digests = []
    for pad, folder in ((False, tmp_path / "plain"), (True, tmp_path / "padded")):
        model = _model()
        model.pad_head = pad
        model(_ids(length=16))
        export_to_hf(model, folder)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted(folder.iterdir()) if p.suffix == ".safetensors"})
    assert digests[0] and digests[0] == digests[1]
