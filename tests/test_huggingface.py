"""Hugging Face GPT-2 in (streamed, strict, memory-checked) and out (export_to_hf), offline.

Every model here is a randomly initialised GPT2LMHeadModel saved locally; nothing downloads.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from utils.checkpoint_errors import ArchitectureMismatchError
from utils.config import GPT2_CONFIGS, ModelConfig
from utils.model import GPTModel, memory
from utils.pretrained import huggingface as hf_loader
from utils.pretrained.huggingface import export_to_hf, load_gpt2_weights, load_openai_gpt2
from utils.pretrained.layers_diff import compare_layers, first_mismatch
from utils.pretrained.verify import compare_outputs, random_hf_gpt2
from utils.tokenizer import get_tokenizer

SMALL = ModelConfig(vocab_size=300, context_length=32, embedding_dimension=32, number_of_heads=4,
                    number_of_layers=3, dropout_rate=0.0)
IDS = torch.tensor([[5, 17, 255, 3, 299, 0, 42, 7]])


@pytest.fixture(scope="module")
def hf_model():
    return random_hf_gpt2(SMALL, seed=1)


@pytest.fixture(scope="module")
def hf_folder(hf_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_gpt2")
    hf_model.save_pretrained(folder)
    return folder


def hf_logits(hf_model, ids=IDS):
    with torch.no_grad():
        return hf_model(ids).logits


def our_logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids)


def test_load_from_save_pretrained_folder_matches_hf_logits(hf_model, hf_folder):
    model, config = load_openai_gpt2(hf_folder)
    assert dataclasses.replace(config, dropout_rate=0.0) == SMALL  # config.json read, not guessed
    assert not model.training
    assert model.lm_head.weight is model.token_embedding.weight
    assert not any(p.is_meta for p in model.parameters())
    torch.testing.assert_close(our_logits(model), hf_logits(hf_model), rtol=0, atol=1e-5)


def test_single_safetensors_and_transformers4_bin_files(hf_model, hf_folder, tmp_path):
    # A transformers 4.x style .bin: attention mask buffers included, bare GPT2Model keys.
    state = {k.removeprefix("transformer."): v.clone() for k, v in hf_model.state_dict().items()
             if k != "lm_head.weight"}
    for i in range(SMALL.number_of_layers):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    bin_file = tmp_path / "pytorch_model.bin"
    torch.save(state, bin_file)
    (tmp_path / "config.json").write_text((hf_folder / "config.json").read_text())
    for source in (hf_folder / "model.safetensors", bin_file):
        model, _ = load_openai_gpt2(source)
        torch.testing.assert_close(our_logits(model), hf_logits(hf_model), rtol=0, atol=1e-5)


def test_sharded_checkpoint_loads(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    model, _ = load_openai_gpt2(tmp_path)
    torch.testing.assert_close(our_logits(model), hf_logits(hf_model), rtol=0, atol=1e-5)


def test_no_weight_is_initialised_before_being_overwritten(hf_folder, monkeypatch):
    touched = []
    real_normal = torch.nn.init.normal_

    def spy(tensor, *args, **kwargs):
        touched.append(tensor.device.type)
        return real_normal(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "normal_", spy)
    model, _ = load_openai_gpt2(hf_folder)
    assert touched == []  # the skeleton lives on meta and skips init; weights are assigned
    assert not any(p.is_meta for p in model.parameters())


def test_load_into_existing_model_and_failed_load_leaves_it_unchanged(hf_model, hf_folder):
    model = GPTModel(SMALL).eval()
    load_gpt2_weights(model, hf_folder)
    torch.testing.assert_close(our_logits(model), hf_logits(hf_model), rtol=0, atol=1e-5)

    wider = GPTModel(dataclasses.replace(SMALL, embedding_dimension=64))
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(ArchitectureMismatchError, match="wrong shape"):
        load_gpt2_weights(wider, hf_folder)
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())

    deeper = GPTModel(dataclasses.replace(SMALL, number_of_layers=4))
    with pytest.raises(ArchitectureMismatchError, match="missing"):
        load_gpt2_weights(deeper, hf_folder)


def test_seed000_mistake_no_attention_bias_is_refused(hf_folder):
    model = GPTModel(dataclasses.replace(SMALL, use_attention_bias=False))
    with pytest.raises(ArchitectureMismatchError, match="use_attention_bias=True"):
        load_gpt2_weights(model, hf_folder)


def test_missing_path_is_a_clear_error_not_a_download(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_loader, "download_from_hub", lambda name: pytest.fail("downloaded"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_openai_gpt2(tmp_path / "nowhere" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_openai_gpt2(tmp_path)


def test_memory_check_refuses_before_downloading(monkeypatch):
    monkeypatch.setattr(hf_loader, "download_from_hub", lambda name: pytest.fail("downloaded"))
    monkeypatch.setattr(memory, "available_ram_bytes", lambda: 12 * memory.GIB)  # Colab free
    with pytest.raises(memory.InsufficientMemoryError, match="smaller size fits: small, medium"):
        load_openai_gpt2("gpt2-xl", training=True)
    monkeypatch.setattr(memory, "available_ram_bytes", lambda: 5 * memory.GIB)
    with pytest.raises(MemoryError, match="bfloat16"):
        load_openai_gpt2("xl")


def test_memory_estimates():
    xl = GPT2_CONFIGS["xl"]
    weights = memory.estimate_memory_bytes(xl)
    assert weights == 1_557_611_200 * 4
    assert memory.estimate_memory_bytes(xl, torch.bfloat16) == weights // 2
    assert memory.estimate_memory_bytes(xl, training=True) == 4 * weights  # + grads + AdamW 2x
    assert memory.available_ram_bytes() > 0
    needed = memory.check_memory(GPT2_CONFIGS["small"], available=64 * memory.GIB)
    assert needed > memory.estimate_memory_bytes(GPT2_CONFIGS["small"])


def test_memory_check_uses_gpu_memory_for_cuda(monkeypatch):
    monkeypatch.setattr(memory, "available_device_bytes", lambda device: 4 * memory.GIB)
    monkeypatch.setattr(memory, "available_ram_bytes", lambda: 100 * memory.GIB)
    with pytest.raises(memory.InsufficientMemoryError, match="of GPU memory is free"):
        memory.check_memory(GPT2_CONFIGS["xl"], "cuda", name="gpt2-xl")
    memory.check_memory(GPT2_CONFIGS["xl"], "cpu")  # plenty of RAM


def test_compare_layers_locates_a_wrong_transpose(hf_model):
    model = converted(hf_model)
    report = compare_layers(model, hf_model, IDS)
    assert list(report["stage"]) == ["embeddings", "block 0", "block 1", "block 2",
                                     "final norm", "logits"]
    assert report["matches"].all() and first_mismatch(report) is None
    with torch.no_grad():  # the classic bug: a Conv1D weight copied without its transpose
        proj = model.transformer_blocks[1].attention.out_proj.weight
        proj.copy_(proj.t().clone())
    report = compare_layers(model, hf_model, IDS)
    assert first_mismatch(report) == "block 1"
    assert report.set_index("stage").loc["block 0", "max_abs_diff"] <= 1e-5


def converted(hf_model) -> GPTModel:
    return hf_loader.model_from_hf_tensors(hf_model.state_dict().items(), SMALL)


def test_export_to_hf_loads_cleanly_matches_and_generates(tmp_path):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPTModel(SMALL).eval()
    with torch.no_grad():  # non-zero biases so a dropped or misplaced bias would show
        for name, p in model.named_parameters():
            if name.endswith((".bias", ".shift")):
                p.normal_(0, 0.1)
    out = export_to_hf(model, tmp_path / "exported")
    hf, info = GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    torch.testing.assert_close(hf_logits(hf.eval()), our_logits(model), rtol=0, atol=1e-5)
    generated = hf.generate(IDS, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, IDS.shape[1] + 4)
    assert not list(tmp_path.glob(".exported.*"))  # temporary folder cleaned up


def test_round_trip_hf_ours_hf_is_exact(hf_model, tmp_path):
    model = converted(hf_model)
    from transformers import GPT2LMHeadModel

    back = GPT2LMHeadModel.from_pretrained(export_to_hf(model, tmp_path))
    original = hf_model.state_dict()
    for key, tensor in back.state_dict().items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        assert torch.equal(tensor, original[key]), key


def test_bias_free_model_exports_zero_biases(tmp_path):
    from transformers import GPT2LMHeadModel

    model = GPTModel(dataclasses.replace(SMALL, use_attention_bias=False)).eval()
    hf = GPT2LMHeadModel.from_pretrained(export_to_hf(model, tmp_path)).eval()
    assert torch.count_nonzero(hf.transformer.h[0].attn.c_attn.bias) == 0
    torch.testing.assert_close(hf_logits(hf), our_logits(model), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_gpt2_small_shapes_stream_load_and_compare_outputs(tmp_path):
    config = GPT2_CONFIGS["small"]
    hf_model = random_hf_gpt2(config, seed=2)
    hf_model.save_pretrained(tmp_path)
    model, loaded_config = load_openai_gpt2(tmp_path)
    assert loaded_config.number_of_layers == 12 and loaded_config.embedding_dimension == 768
    match, max_diff = compare_outputs(model, hf_model, get_tokenizer("byte"), "Hello, my name is")
    assert match, max_diff
    report = compare_layers(model, hf_model, torch.arange(0, 300, 7))
    assert report["matches"].all()


def test_truncated_or_garbage_safetensors_is_a_clear_error(hf_folder, tmp_path):
    from utils.checkpoint_errors import CorruptCheckpointError

    data = (hf_folder / "model.safetensors").read_bytes()
    bad = tmp_path / "model.safetensors"
    (tmp_path / "config.json").write_text((hf_folder / "config.json").read_text())
    bad.write_bytes(data[:-100])
    with pytest.raises(CorruptCheckpointError, match="truncated safetensors file"):
        load_openai_gpt2(tmp_path)
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CorruptCheckpointError, match="not a safetensors file"):
        load_openai_gpt2(tmp_path)


def test_loaded_parameters_own_their_memory(hf_folder):
    # Read, not memory-mapped: rewriting the file afterwards cannot change the model.
    model, _ = load_openai_gpt2(hf_folder)
    before = model.token_embedding.weight.clone()
    original = (hf_folder / "model.safetensors").read_bytes()
    try:
        (hf_folder / "model.safetensors").write_bytes(original[:8] + original[8:].replace(
            b"\x00", b"\x01"))
        assert torch.equal(model.token_embedding.weight, before)
    finally:
        (hf_folder / "model.safetensors").write_bytes(original)


class _NotATensor:
    pass


def test_bin_with_code_is_refused_as_unsafe(tmp_path):
    from utils.checkpoint_errors import UnsafeCheckpointError

    torch.save({"transformer.wte.weight": _NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="could run code"):
        load_openai_gpt2(tmp_path / "pytorch_model.bin")


def test_load_gpt2_weights_fills_a_meta_device_model(hf_model, hf_folder):
    with torch.device("meta"):
        model = GPTModel(SMALL)
    load_gpt2_weights(model, hf_folder)
    assert not any(p.is_meta for p in model.parameters())
    assert model.lm_head.weight is model.token_embedding.weight
    torch.testing.assert_close(our_logits(model.eval()), hf_logits(hf_model), rtol=0, atol=1e-5)


def test_prefetch_thread_stops_when_the_reader_stops_early():
    import threading

    from utils.pretrained.huggingface import _prefetched

    stream = _prefetched(iter(range(1000)))
    assert next(stream) == 0
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "tensor-prefetch"]

    def failing():
        yield 1
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        list(_prefetched(failing()))


def test_hub_failure_is_a_clear_error(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="openai-community/gpt2-medium.*local"):
        load_openai_gpt2("gpt2-medium", memory_check=False)


def test_streamed_export_tensors_equal_convert_custom_to_hf():
    from utils.pretrained.mapping import convert_custom_to_hf

    torch.manual_seed(5)
    model = GPTModel(SMALL)
    streamed = dict(hf_loader.iter_hf_state(model))
    reference = convert_custom_to_hf(model.state_dict(), SMALL.number_of_layers)
    assert list(streamed) == [k for k in reference if k != "lm_head.weight"]
    assert all(torch.equal(streamed[k], reference[k]) for k in streamed)
    assert list(hf_loader.expected_hf_shapes(SMALL)) == list(streamed)
    assert all(hf_loader.expected_hf_shapes(SMALL)[k] == tuple(v.shape) for k, v in streamed.items())


def test_only_tensors_copied_by_conversion_are_read_as_temporaries(hf_model, hf_folder):
    temporary = hf_loader.copied_on_conversion(SMALL.number_of_layers)
    assert temporary("transformer.h.0.attn.c_attn.weight") and temporary("h.2.mlp.c_fc.weight")
    assert not temporary("transformer.h.0.attn.c_attn.bias")  # split into views: kept
    assert not temporary("transformer.wte.weight") and not temporary("lm_head.weight")
    reference = hf_model.state_dict()
    for name, tensor in hf_loader.iter_safetensors(hf_folder / "model.safetensors",
                                                   temporary=lambda name: True):
        assert torch.equal(tensor, reference[name]), name
