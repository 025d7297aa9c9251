"""Foreign checkpoint formats load with the right numbers: Hugging Face GPT-2 (.bin and
safetensors) and nanoGPT's ckpt.pt, recognised from the contents, not the file name."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from utils.checkpoint_errors import ArchitectureMismatchError
from utils.config import ModelConfig
from utils.model import GPTModel
from utils.pretrained.foreign import detect_naming, strip_wrapper_prefixes
from utils.training.engine.loading import load_model_weights, load_pretrained_model

TINY = ModelConfig(vocab_size=64, context_length=16, embedding_dimension=16,
                   number_of_heads=2, number_of_layers=2, dropout_rate=0.0)
IDS = torch.tensor([[1, 5, 9, 33, 2, 63, 0, 7, 12, 40]])


@pytest.fixture(scope="module")
def hf_model():
    from utils.pretrained.verify import random_hf_gpt2

    return random_hf_gpt2(TINY, seed=3)  # random biases and LayerNorms too


def hf_logits(hf_model) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(IDS).logits


def our_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS)


def test_hf_state_dict_file_loads_with_hf_logits(tmp_path, hf_model):
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf_model.state_dict(), path)
    model, checkpoint = load_pretrained_model(path, device="cpu", config=TINY)
    assert checkpoint["format"] == "Hugging Face GPT-2 state dict"
    assert torch.allclose(our_logits(model), hf_logits(hf_model), atol=1e-5, rtol=0)


def test_hf_save_pretrained_folder_file_uses_its_config_json(tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    model, _ = load_pretrained_model(path, device="cpu")  # heads come from config.json
    assert model.config.number_of_heads == TINY.number_of_heads
    assert torch.allclose(our_logits(model), hf_logits(hf_model), atol=1e-5, rtol=0)
    # into an existing model too
    existing = GPTModel(TINY)
    load_model_weights(existing, path, device="cpu")
    assert torch.allclose(our_logits(existing), hf_logits(hf_model), atol=1e-5, rtol=0)


def test_format_comes_from_contents_not_the_name(tmp_path, hf_model):
    # a safetensors file called ckpt.pt, and a torch checkpoint called model.safetensors
    hf_model.save_pretrained(tmp_path / "hf")
    misnamed = tmp_path / "ckpt.pt"
    shutil.copy(tmp_path / "hf" / "model.safetensors", misnamed)
    model, _ = load_pretrained_model(misnamed, device="cpu", config=TINY)
    assert torch.allclose(our_logits(model), hf_logits(hf_model), atol=1e-5, rtol=0)
    torch.manual_seed(0)
    ours = GPTModel(TINY).eval()
    torch.save({"model_state_dict": ours.state_dict(), "config": TINY.to_dict()},
               tmp_path / "model.safetensors")
    model, checkpoint = load_pretrained_model(tmp_path / "model.safetensors", device="cpu")
    assert checkpoint["format"] == "training checkpoint"
    assert torch.equal(our_logits(model), our_logits(ours))


# ---------------------------------------------------------------------------------------
# nanoGPT
# ---------------------------------------------------------------------------------------

def nanogpt_state_dict(args: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with nanoGPT's names and torch Linear layout ([out, in])."""
    generator = torch.Generator().manual_seed(seed)
    d, bias = args["n_embd"], args["bias"]

    def rand(*shape):
        return torch.randn(*shape, generator=generator) * 0.2

    sd = {"transformer.wte.weight": rand(args["vocab_size"], d),
          "transformer.wpe.weight": rand(args["block_size"], d)}
    for i in range(args["n_layer"]):
        p = f"transformer.h.{i}."
        sd[p + "ln_1.weight"] = 1 + rand(d)
        sd[p + "attn.c_attn.weight"] = rand(3 * d, d)
        sd[p + "attn.c_proj.weight"] = rand(d, d)
        sd[p + "ln_2.weight"] = 1 + rand(d)
        sd[p + "mlp.c_fc.weight"] = rand(4 * d, d)
        sd[p + "mlp.c_proj.weight"] = rand(d, 4 * d)
        if bias:
            for name, size in (("ln_1", d), ("attn.c_attn", 3 * d), ("attn.c_proj", d),
                               ("ln_2", d), ("mlp.c_fc", 4 * d), ("mlp.c_proj", d)):
                sd[p + name + ".bias"] = rand(size)
        sd[p + "attn.bias"] = torch.tril(torch.ones(args["block_size"], args["block_size"])
                                         ).view(1, 1, args["block_size"], args["block_size"])
    sd["transformer.ln_f.weight"] = 1 + rand(d)
    if bias:
        sd["transformer.ln_f.bias"] = rand(d)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]  # nanoGPT ties them too
    return sd


def nanogpt_forward(sd: dict, args: dict, ids: torch.Tensor) -> torch.Tensor:
    """nanoGPT's model.py forward, written out functionally (exact erf GELU)."""
    d, heads = args["n_embd"], args["n_head"]
    batch, length = ids.shape
    x = sd["transformer.wte.weight"][ids] + sd["transformer.wpe.weight"][:length]
    for i in range(args["n_layer"]):
        p = f"transformer.h.{i}."

        def ln(x, name, p=p):
            return F.layer_norm(x, (d,), sd[p + name + ".weight"], sd.get(p + name + ".bias"))

        q, k, v = F.linear(ln(x, "ln_1"), sd[p + "attn.c_attn.weight"],
                           sd.get(p + "attn.c_attn.bias")).split(d, dim=2)
        q, k, v = (t.view(batch, length, heads, d // heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(batch, length, d)
        x = x + F.linear(y, sd[p + "attn.c_proj.weight"], sd.get(p + "attn.c_proj.bias"))
        h = F.gelu(F.linear(ln(x, "ln_2"), sd[p + "mlp.c_fc.weight"], sd.get(p + "mlp.c_fc.bias")))
        x = x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd.get(p + "mlp.c_proj.bias"))
    x = F.layer_norm(x, (d,), sd["transformer.ln_f.weight"], sd.get("transformer.ln_f.bias"))
    return F.linear(x, sd["lm_head.weight"])


@pytest.mark.parametrize("bias", [True, False])
def test_nanogpt_ckpt_loads_with_nanogpts_logits(tmp_path, bias):
    args = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16, "bias": bias,
            "vocab_size": 64, "dropout": 0.0}
    sd = nanogpt_state_dict(args)
    compiled = {"_orig_mod." + k: v for k, v in sd.items()}  # nanoGPT saves compiled models so
    path = tmp_path / "ckpt.pt"
    torch.save({"model": compiled, "optimizer": {"state": {}, "param_groups": []},
                "model_args": args, "iter_num": 5000, "best_val_loss": torch.tensor(1.47),
                "config": {"learning_rate": 6e-4, "dataset": "shakespeare_char"}}, path)
    model, checkpoint = load_pretrained_model(path, device="cpu")
    assert checkpoint["format"] == "nanoGPT ckpt.pt"
    assert checkpoint["global_step"] == 5000 and float(checkpoint["val_loss"]) == pytest.approx(1.47)
    assert checkpoint["learning_rate"] == 6e-4
    assert model.config.use_attention_bias is bias
    expected = nanogpt_forward(sd, args, IDS)
    assert torch.allclose(our_logits(model), expected, atol=1e-5, rtol=0)
    # a bare nanoGPT state dict (no args) with the config supplied by the caller
    torch.save(sd, tmp_path / "bare.pt")
    config = ModelConfig(64, 16, 16, 2, 2, 0.0, bias)
    model, checkpoint = load_pretrained_model(tmp_path / "bare.pt", device="cpu", config=config)
    assert checkpoint["format"] == "nanoGPT state dict"
    assert torch.allclose(our_logits(model), expected, atol=1e-5, rtol=0)


def test_naming_detection_and_prefix_stripping():
    torch.manual_seed(0)
    ours = GPTModel(TINY).state_dict()
    assert detect_naming(ours) == "ours"
    assert detect_naming({"wte.weight": torch.zeros(64, 16), "h.0.attn.c_attn.weight":
                          torch.zeros(16, 48)}) == "huggingface"
    assert detect_naming({"transformer.wte.weight": torch.zeros(64, 16),
                          "transformer.h.0.attn.c_attn.weight": torch.zeros(48, 16)}) == "nanogpt"
    stripped, notes = strip_wrapper_prefixes({"module._orig_mod.a": 1, "_orig_mod.module.b": 2})
    assert stripped == {"a": 1, "b": 2} and len(notes) == 2


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_state_dict_under_other_common_keys(tmp_path, key):
    torch.manual_seed(0)
    source = GPTModel(TINY).eval()
    torch.save({key: {"module." + k: v for k, v in source.state_dict().items()},
                "config": TINY.to_dict(), "optimizer": {}}, tmp_path / "c.pt")
    model, checkpoint = load_pretrained_model(tmp_path / "c.pt", device="cpu")
    assert checkpoint["format"] == f"state dict in {key!r}"
    assert torch.equal(our_logits(model), our_logits(source))


def test_hf_state_dict_with_a_missing_tensor_is_an_architecture_mismatch(tmp_path, hf_model):
    state = dict(hf_model.state_dict())
    del state["transformer.h.1.attn.c_attn.bias"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    model = GPTModel(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ArchitectureMismatchError, match="3 missing") as caught:
        load_model_weights(model, tmp_path / "pytorch_model.bin", device="cpu")
    assert "transformer_blocks.1.attention.W_key.bias" in str(caught.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_nanogpt_into_an_existing_model_switches_to_exact_gelu(tmp_path):
    args = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16, "bias": True,
            "vocab_size": 64, "dropout": 0.0}
    sd = nanogpt_state_dict(args, seed=5)
    torch.save({"model": sd, "model_args": args, "iter_num": 1, "best_val_loss": 2.0,
                "config": {}}, tmp_path / "ckpt.pt")
    model = GPTModel(TINY)
    report = load_model_weights(model, tmp_path / "ckpt.pt", device="cpu")
    assert any("GELU" in note for note in report.notes)
    assert torch.allclose(our_logits(model), nanogpt_forward(sd, args, IDS), atol=1e-5, rtol=0)
