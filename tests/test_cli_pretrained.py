"""`python -m utils convert | generate | export` on local weights (in-process, offline)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from utils.__main__ import main
from utils.config import ModelConfig
from utils.generation import generate_from_prompt
from utils.pretrained.binary import read_binary
from utils.pretrained.huggingface import load_openai_gpt2
from utils.pretrained.llmc import read_llmc_header
from utils.pretrained.verify import random_hf_gpt2
from utils.tokenizer import get_tokenizer
from utils.training.engine.loading import load_pretrained_model

CONFIG = ModelConfig(vocab_size=300, context_length=32, embedding_dimension=32,
                     number_of_heads=4, number_of_layers=2, dropout_rate=0.0)
TF_FIXTURE = Path(__file__).parent / "fixtures" / "openai_tf_tiny"
IDS = torch.tensor([[1, 2, 3, 250, 299]])


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    hf_model = random_hf_gpt2(CONFIG, seed=3)
    folder = tmp_path_factory.mktemp("hf")
    hf_model.save_pretrained(folder)
    return hf_model, folder


def test_convert_hf_folder_to_a_checkpoint(hf_pair, tmp_path, capsys):
    hf_model, folder = hf_pair
    output = tmp_path / "gpt2_converted.pt"
    assert main(["convert", str(folder), "--output", str(output)]) == 0
    assert "wrote" in capsys.readouterr().out
    raw = torch.load(output, weights_only=True)  # safe format
    assert raw["config"] == CONFIG.to_dict() and raw["global_step"] == 0
    model, checkpoint = load_pretrained_model(output, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), hf_model(IDS).logits, rtol=0, atol=1e-5)
    assert output.with_name(output.name + ".json").exists()  # the writer's sidecar
    assert main(["convert", str(folder), "--output", str(output)]) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err


def test_convert_openai_tf_folder(tmp_path):
    output = tmp_path / "tf.pt"
    assert main(["convert", str(TF_FIXTURE), "-o", str(output)]) == 0
    model, _ = load_pretrained_model(output, device="cpu")
    assert model.config.vocab_size == 263 and model.config.number_of_layers == 2


def test_generate_from_pretrained_folder_and_checkpoint_agree(hf_pair, tmp_path, capsys):
    _, folder = hf_pair
    common = ["--prompt", "Hi", "--length", "6", "--temperature", "0", "--tokenizer", "byte",
              "--device", "cpu"]
    assert main(["generate", "--pretrained", str(folder), *common]) == 0
    from_folder = capsys.readouterr().out
    model, _ = load_openai_gpt2(folder)
    expected = generate_from_prompt(model, get_tokenizer("byte"), "Hi", maximum_new_tokens=6,
                                    temperature=0)
    assert from_folder.rstrip("\n") == expected
    checkpoint = tmp_path / "c.pt"
    main(["convert", str(folder), "-o", str(checkpoint)])
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(checkpoint), *common]) == 0
    assert capsys.readouterr().out == from_folder


def test_generate_with_openai_tf_tokenizer_and_sampling(capsys):
    args = ["generate", "--pretrained", str(TF_FIXTURE), "--prompt", "hello world",
            "--length", "5", "--temperature", "0.9", "--top-k", "20", "--top-p", "0.9",
            "--seed", "7", "--device", "cpu"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("hello world")
    assert main(args) == 0
    assert capsys.readouterr().out == first  # same seed, same sample


def test_export_all_formats(hf_pair, tmp_path, capsys):
    _, folder = hf_pair
    source = ["--pretrained", str(folder)]
    assert main(["export", *source, "--format", "hf", "-o", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").exists()
    assert main(["export", *source, "--format", "binary", "-o", str(tmp_path / "bin")]) == 0
    tensors = read_binary(tmp_path / "bin" / "gpt2_weights.bin")
    assert tensors["transformer.wte.weight"].shape == (300, 32)
    assert main(["export", *source, "--format", "llmc", "-o", str(tmp_path / "m.bin")]) == 0
    assert read_llmc_header(tmp_path / "m.bin")["padded_vocab_size"] == 384
    capsys.readouterr()
    assert main(["export", *source, "--format", "llmc", "-o", str(tmp_path / "hf")]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_bad_sources_are_one_line_errors(tmp_path, capsys):
    assert main(["generate", "--pretrained", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "does not exist" in err and len(err.splitlines()) == 1
    assert main(["convert", str(tmp_path), "-o", str(tmp_path / "x.pt")]) == 2
    assert "no model.safetensors" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--format", "hf", "-o", str(tmp_path)])  # no source: argparse exits
