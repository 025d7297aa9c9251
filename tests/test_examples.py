"""The example scripts, run offline on local weights through their `main(argv)`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from utils.config import GPT2_CONFIGS, ModelConfig
from utils.pretrained.binary import load_binary_model, read_binary
from utils.pretrained.verify import random_hf_gpt2

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TF_FIXTURE = Path(__file__).parent / "fixtures" / "openai_tf_tiny"
CONFIG = ModelConfig(vocab_size=300, context_length=32, embedding_dimension=32,
                     number_of_heads=4, number_of_layers=2, dropout_rate=0.0)


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    hf_model = random_hf_gpt2(CONFIG, seed=4)
    folder = tmp_path_factory.mktemp("hf")
    hf_model.save_pretrained(folder)
    return hf_model, folder


def test_download_example_writes_seed002_files_from_a_local_folder(hf_pair, tmp_path, capsys):
    hf_model, folder = hf_pair
    download = load_example("download_gpt2_weights")
    assert download.main([str(folder), "--output-root", str(tmp_path)]) == 0
    out = tmp_path / "custom_L2_C32"
    assert sorted(p.name for p in out.iterdir()) == ["gpt2_config.txt", "gpt2_weight_mapping.txt",
                                                     "gpt2_weights.bin"]
    tensors = read_binary(out / "gpt2_weights.bin")
    for name, tensor in hf_model.state_dict().items():  # HF's own tensors, bit for bit
        if name in tensors:
            assert torch.equal(tensors[name], tensor), name
    assert len(tensors) == 4 + 12 * CONFIG.number_of_layers
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    with torch.no_grad():
        torch.testing.assert_close(load_binary_model(out)(ids), hf_model(ids).logits,
                                   rtol=0, atol=1e-5)
    assert str(out / "gpt2_weights.bin") in capsys.readouterr().out


def test_download_example_names_folders_like_openai(tmp_path):
    download = load_example("download_gpt2_weights")
    assert [download.size_folder(GPT2_CONFIGS[s]) for s in ("small", "medium", "large", "xl")] \
        == ["124M", "355M", "774M", "1558M"]
    assert download.main([str(TF_FIXTURE), "--output-root", str(tmp_path)]) == 0
    assert (tmp_path / "custom_L2_C8" / "gpt2_weights.bin").exists()


def test_load_example_verifies_against_hf_and_generates(hf_pair, capsys):
    _, folder = hf_pair
    example = load_example("load_openai_weights")
    argv = ["--model-size", str(folder), "--prompt", "Hi there", "--length", "5",
            "--tokenizer", "byte", "--device", "cpu", "--temperature", "0"]
    assert example.main(argv) == 0
    out = capsys.readouterr().out
    assert "matches Hugging Face: True" in out
    assert out.rstrip().splitlines()[-1].startswith("Hi there")


def test_load_example_reports_the_diverging_layer(hf_pair, capsys, monkeypatch):
    _, folder = hf_pair
    example = load_example("load_openai_weights")
    from utils.pretrained import huggingface

    real = huggingface.load_openai_gpt2

    def broken(*args, **kwargs):  # the seed-002 mistake: one Conv1D weight not transposed
        model, config = real(*args, **kwargs)
        with torch.no_grad():
            w = model.transformer_blocks[1].attention.out_proj.weight
            w.copy_(w.t().clone())
        return model, config

    monkeypatch.setattr(huggingface, "load_openai_gpt2", broken)
    argv = ["--model-size", str(folder), "--prompt", "Hi", "--tokenizer", "byte",
            "--device", "cpu"]
    assert example.main(argv) == 1
    out = capsys.readouterr().out
    assert "matches Hugging Face: False" in out
    block_rows = {line.split()[1] + " " + line.split()[2]: line.split()[-1]
                  for line in out.splitlines() if " block " in line}
    assert block_rows == {"block 0": "True", "block 1": "False"}
