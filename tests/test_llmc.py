"""llm.c's gpt2_124M.bin layout: header fields and tensor order (llm.c train_gpt2.py:write_model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.config import ModelConfig
from utils.model import GPTModel
from utils.pretrained.llmc import export_llmc, padded_vocab_size, read_llmc_header

CONFIG = ModelConfig(vocab_size=200, context_length=16, embedding_dimension=16,
                     number_of_heads=2, number_of_layers=3, dropout_rate=0.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPTModel(CONFIG).eval()


def test_padded_vocab_matches_llmc():
    assert padded_vocab_size(50257) == 50304
    assert padded_vocab_size(200) == 256 and padded_vocab_size(256) == 256


def test_header_and_tensor_order(model, tmp_path):
    path = export_llmc(model, tmp_path / "gpt2_tiny.bin")
    raw = np.fromfile(path, dtype="<i4", count=256)
    assert list(raw[:8]) == [20240326, 3, 16, 200, 3, 2, 16, 256] and not raw[8:].any()
    assert read_llmc_header(path)["padded_vocab_size"] == 256
    # Walk the file with llm.c's own sizes (gpt2_build_from_checkpoint's param_sizes order).
    V, Vp, T, L, C = 200, 256, 16, 3, 16
    sizes = [("wte", (Vp, C)), ("wpe", (T, C)), ("ln1w", (L, C)), ("ln1b", (L, C)),
             ("qkvw", (L, 3 * C, C)), ("qkvb", (L, 3 * C)), ("attprojw", (L, C, C)),
             ("attprojb", (L, C)), ("ln2w", (L, C)), ("ln2b", (L, C)), ("fcw", (L, 4 * C, C)),
             ("fcb", (L, 4 * C)), ("fcprojw", (L, C, 4 * C)), ("fcprojb", (L, C)),
             ("lnfw", (C,)), ("lnfb", (C,))]
    floats = np.fromfile(path, dtype="<f4", offset=256 * 4)
    assert floats.size == sum(int(np.prod(s)) for _, s in sizes)
    tensors, offset = {}, 0
    for name, shape in sizes:
        count = int(np.prod(shape))
        tensors[name] = torch.from_numpy(floats[offset:offset + count].reshape(shape).copy())
        offset += count
    blocks = model.transformer_blocks
    assert torch.equal(tensors["wte"][:V], model.token_embedding.weight)
    assert not tensors["wte"][V:].any()  # padded rows are zero
    assert torch.equal(tensors["wpe"], model.position_embedding.weight)
    for i, block in enumerate(blocks):
        attn = block.attention
        assert torch.equal(tensors["ln1w"][i], block.norm1.scale)
        assert torch.equal(tensors["ln1b"][i], block.norm1.shift)
        assert torch.equal(tensors["qkvw"][i], torch.cat([attn.W_query.weight, attn.W_key.weight,
                                                         attn.W_value.weight]))
        assert torch.equal(tensors["qkvb"][i], torch.cat([attn.W_query.bias, attn.W_key.bias,
                                                         attn.W_value.bias]))
        assert torch.equal(tensors["attprojw"][i], attn.out_proj.weight)  # [out, in], no transpose
        assert torch.equal(tensors["attprojb"][i], attn.out_proj.bias)
        assert torch.equal(tensors["ln2w"][i], block.norm2.scale)
        assert torch.equal(tensors["ln2b"][i], block.norm2.shift)
        assert torch.equal(tensors["fcw"][i], block.feed_forward.net[0].weight)
        assert torch.equal(tensors["fcb"][i], block.feed_forward.net[0].bias)
        assert torch.equal(tensors["fcprojw"][i], block.feed_forward.net[2].weight)
        assert torch.equal(tensors["fcprojb"][i], block.feed_forward.net[2].bias)
    assert torch.equal(tensors["lnfw"], model.final_norm.scale)
    assert torch.equal(tensors["lnfb"], model.final_norm.shift)


def test_llmc_forward_from_file_matches_our_logits(model, tmp_path):
    """llm.c's maths on the file's tensors (fused qkv, [out, in] weights) = our logits."""
    path = export_llmc(model, tmp_path / "m.bin")
    h = read_llmc_header(path)
    V, Vp, T, L, NH, C = (h[k] for k in ("vocab_size", "padded_vocab_size", "max_seq_len",
                                          "num_layers", "num_heads", "channels"))
    f = torch.from_numpy(np.fromfile(path, dtype="<f4", offset=1024).copy())
    shapes = [(Vp, C), (T, C), (L, C), (L, C), (L, 3 * C, C), (L, 3 * C), (L, C, C), (L, C),
              (L, C), (L, C), (L, 4 * C, C), (L, 4 * C), (L, C, 4 * C), (L, C), (C,), (C,)]
    parts = list(torch.split(f, [int(np.prod(s)) for s in shapes]))
    (wte, wpe, ln1w, ln1b, qkvw, qkvb, projw, projb, ln2w, ln2b, fcw, fcb, fcpw, fcpb, lnfw,
     lnfb) = (p.view(s) for p, s in zip(parts, shapes, strict=True))
    ids = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    x = wte[ids] + wpe[: len(ids)]
    ln = torch.nn.functional.layer_norm
    for i in range(L):
        q, k, v = (ln(x, (C,), ln1w[i], ln1b[i]) @ qkvw[i].T + qkvb[i]).split(C, -1)
        q, k, v = (t.view(-1, NH, C // NH).transpose(0, 1) for t in (q, k, v))
        att = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + att.transpose(0, 1).reshape(-1, C) @ projw[i].T + projb[i]
        hidden = torch.nn.functional.gelu(ln(x, (C,), ln2w[i], ln2b[i]) @ fcw[i].T + fcb[i],
                                          approximate="tanh")
        x = x + hidden @ fcpw[i].T + fcpb[i]
    logits = ln(x, (C,), lnfw, lnfb) @ wte[:V].T
    with torch.no_grad():
        torch.testing.assert_close(logits, model(ids[None])[0], rtol=0, atol=1e-5)


def test_rejects_non_llmc_files(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\0" * 2048)
    with pytest.raises(ValueError, match="not an llm.c model file"):
        read_llmc_header(tmp_path / "x.bin")
