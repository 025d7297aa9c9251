"""A complete Hugging Face folder: tokenizer files AutoTokenizer loads, pipeline() generation,
the model card, and `export --push-to-hub` (the Hub client patched; offline).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests._cli_helpers import assert_one_error_line, run_cli
from utils.__main__ import main
from utils.config import GPT2_VOCAB_SIZE, ModelConfig, TrainingConfig
from utils.data.token_files import CharTokenizer
from utils.generation import generate_text
from utils.model import GPTModel
from utils.pretrained.huggingface import export_to_hf
from utils.reading import safetensors_header
from utils.tokenizer import get_tokenizer

SMALL_GPT2 = ModelConfig(vocab_size=GPT2_VOCAB_SIZE, context_length=64, embedding_dimension=32,
                         number_of_heads=2, number_of_layers=2, dropout_rate=0.0)
# Strings where a tokenizer port usually slips: leading/double spaces, newlines and \r\n,
# contractions, digits, accents, CJK, emoji (4-byte UTF-8), a zero-width space, tabs.
HARD_STRINGS = ["Hello world", " Hello  world", "line one\nline two\n\n\nend\n",
                "It's, you'll; they've!? 1234567 3.14", "naïve café, Zürich — déjà vu",
                "日本語のテキスト and 中文", "emoji 🤗🚀 mixed\u200bzero-width", "\r\n\ttabs\t and   spaces   ",
                "a , b . c ' s  !", ""]


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> tuple[GPTModel, Path]:
    torch.manual_seed(0)
    model = GPTModel(SMALL_GPT2).eval()
    return model, export_to_hf(model, tmp_path_factory.mktemp("export") / "gpt2-small-test")


def auto_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_gpt2_tokenizer_encodes_and_decodes_like_tiktoken(gpt2_folder):
    _, folder = gpt2_folder
    ours, theirs = get_tokenizer("gpt2"), auto_tokenizer(folder)
    assert theirs("Hello world")["input_ids"] == [15496, 995]
    assert len(theirs) == GPT2_VOCAB_SIZE and theirs.eos_token_id == 50256
    for text in HARD_STRINGS:
        ids = ours.encode(text)
        assert theirs(text)["input_ids"] == ids, text
        assert theirs.decode(ids) == text
    assert theirs("a<|endoftext|>b")["input_ids"] == ours.encode(
        "a<|endoftext|>b", allowed_special="all")


def test_vocab_and_merges_alone_make_the_same_tokenizer(gpt2_folder, tmp_path):
    """vocab.json + merges.txt (what older tools and GGUF converters read) encode exactly as
    tokenizer.json does: the merges rebuilt from tiktoken's ranks are GPT-2's."""
    _, folder = gpt2_folder
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(folder / name, tmp_path / name)
    merges = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 50000
    assert merges[1] == "Ġ t"  # GPT-2's first merge: " t"
    classic, ours = auto_tokenizer(tmp_path), get_tokenizer("gpt2")
    for text in HARD_STRINGS:
        assert classic(text)["input_ids"] == ours.encode(text), text


def test_pipeline_generates_the_same_greedy_ids_as_generate_text(gpt2_folder):
    from transformers import pipeline

    model, folder = gpt2_folder
    prompt = "The quick brown fox"
    generator = pipeline("text-generation", model=str(folder), device="cpu")
    result = generator(prompt, max_new_tokens=12, do_sample=False, return_tensors=True)
    ids = get_tokenizer("gpt2").encode(prompt)
    expected = generate_text(model, ids, 12, temperature=0, eos_token_id=50256)
    assert result[0]["generated_token_ids"] == expected
    assert len(expected) == len(ids) + 12  # nothing stopped early: 12 compared ids


def test_folder_has_generation_config_and_a_card(gpt2_folder):
    _, folder = gpt2_folder
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md",
            "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"} <= {
        path.name for path in folder.iterdir()}
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == generation["bos_token_id"] == 50256
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_size"] == GPT2_VOCAB_SIZE  # GPT-2's rows, never a padded vocabulary
    _, header = safetensors_header(folder / "model.safetensors")
    assert header["transformer.wte.weight"]["shape"] == [GPT2_VOCAB_SIZE, 32]
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation")
    assert "pipeline(\"text-generation\", model=\"gpt2-small-test\")" in card
    assert "without the checkpoint" in card  # no checkpoint given: no invented training facts


def test_byte_tokenizer_round_trips_through_auto_tokenizer(tiny_config, tmp_path):
    folder = export_to_hf(GPTModel(tiny_config), tmp_path / "bytes")  # 257 rows: bytes
    ours, theirs = get_tokenizer("byte"), auto_tokenizer(folder)
    assert len(theirs) == 257 and theirs.eos_token_id == 256
    for text in HARD_STRINGS:
        assert theirs(text)["input_ids"] == ours.encode(text), text
        assert theirs.decode(ours.encode(text)) == text
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == 256


def test_character_vocabulary_is_written_when_given_and_explained_when_not(tmp_path):
    itos = dict(enumerate(sorted(set("hello world\nthe quick brown fox!"))))
    chars = CharTokenizer(itos)
    config = ModelConfig(vocab_size=len(itos), context_length=16, embedding_dimension=16,
                         number_of_heads=2, number_of_layers=1, dropout_rate=0.0)
    folder = export_to_hf(GPTModel(config), tmp_path / "chars", tokenizer=chars)
    theirs = auto_tokenizer(folder)
    for text in ("hello world", "the quick\nbrown fox!", "  "):
        assert theirs(text)["input_ids"] == chars.encode(text)
        assert theirs.decode(chars.encode(text)) == text
    # A checkpoint records only the name "char"; the vocabulary stayed in meta.pkl.
    bare = export_to_hf(GPTModel(config), tmp_path / "bare", checkpoint={"tokenizer": "char"})
    assert not (bare / "tokenizer.json").exists()
    assert "meta.pkl" in (bare / "README.md").read_text()


def test_a_vocabulary_no_tokenizer_fits_gets_a_note_not_wrong_files(tmp_path):
    config = ModelConfig(vocab_size=64, context_length=16, embedding_dimension=16,
                         number_of_heads=2, number_of_layers=1, dropout_rate=0.0)
    folder = export_to_hf(GPTModel(config), tmp_path / "odd")
    assert not list(folder.glob("tokenizer*")) and not (folder / "vocab.json").exists()
    assert "no tokenizer files" in (folder / "README.md").read_text()
    forced = export_to_hf(GPTModel(config), tmp_path / "forced", tokenizer="gpt2")
    assert "50,257 ids but the model only 64 rows" in (forced / "README.md").read_text()


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A real 4-step run of a byte-level model on the built-in corpus' first characters."""
    import numpy as np

    from utils.data import load_text
    from utils.training.engine.trainer import Trainer

    folder = tmp_path_factory.mktemp("run")
    text = load_text(None)[:20000]
    ids = np.frombuffer(text.encode(), dtype=np.uint8).astype(np.uint16)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=257, context_length=16, embedding_dimension=16,
                         number_of_heads=2, number_of_layers=1, dropout_rate=0.0)
    settings = TrainingConfig(max_steps=4, eval_interval=2, eval_batches=1, batch_size=2,
                              warmup_steps=1, checkpoint_dir=str(folder), device="cpu")
    Trainer(GPTModel(config), settings, ids[:18000], ids[18000:], tokenizer_name="byte",
            progress=False).fit(resume_from=None)
    return folder / "best_model.pt"


def test_cli_export_writes_the_card_from_the_checkpoint(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "card"
    assert main(["export", "--checkpoint", str(trained_checkpoint), "--format", "hf", "-o",
                 str(out), "--data-description", "the first 20,000 characters of pydoc"]) == 0
    assert "tokenizer.json" in capsys.readouterr().out
    checkpoint = torch.load(trained_checkpoint, weights_only=True)
    card = (out / "README.md").read_text()
    assert "| steps | 4 (epoch 0) |" in card
    assert f"| validation loss | {checkpoint['val_loss']:.4f}" in card
    assert "the first 20,000 characters of pydoc" in card
    assert "AdamW" in card and "cosine decay" in card and "| precision | fp32 |" in card
    assert "## Evaluations (the last 2 of 2)" in card
    assert auto_tokenizer(out)("hi")["input_ids"] == [104, 105]  # the recorded byte tokenizer


def test_hf_only_flags_with_another_format_are_one_line_errors(trained_checkpoint, tmp_path):
    result = run_cli("export", "--checkpoint", trained_checkpoint, "--format", "binary",
                     "-o", tmp_path / "bin", "--push-to-hub", "me/model")
    assert_one_error_line(result, "--push-to-hub", "--format hf")
    assert not (tmp_path / "bin").exists()


class FakeHub:
    """Stands in for huggingface_hub.HfApi's two calls; records what it was asked."""

    calls: list = []

    def create_repo(self, repo_id, **kwargs):
        FakeHub.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        FakeHub.calls.append(("upload_folder", repo_id, sorted(
            path.name for path in Path(folder_path).iterdir())))


def test_push_to_hub_uploads_the_complete_folder(trained_checkpoint, tmp_path, monkeypatch,
                                                capsys):
    import huggingface_hub

    FakeHub.calls = []
    for name in ("create_repo", "upload_folder"):
        monkeypatch.setattr(huggingface_hub.HfApi, name, getattr(FakeHub, name))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    out = tmp_path / "pushed"
    assert main(["export", "--checkpoint", str(trained_checkpoint), "--format", "hf", "-o",
                 str(out), "--push-to-hub", "me/tiny-model", "--private"]) == 0
    assert "uploaded to https://huggingface.co/me/tiny-model" in capsys.readouterr().out
    (create, repo, options), (upload, repo2, files) = FakeHub.calls
    assert (create, repo, upload, repo2) == ("create_repo", "me/tiny-model", "upload_folder",
                                             "me/tiny-model")
    assert options["private"] is True and options["exist_ok"] is True
    assert files == sorted(path.name for path in out.iterdir())
    assert {"README.md", "model.safetensors", "tokenizer.json"} <= set(files)
    assert 'model="me/tiny-model"' in (out / "README.md").read_text()


def test_push_without_a_token_is_one_line_before_any_work(trained_checkpoint, tmp_path):
    result = run_cli("export", "--checkpoint", trained_checkpoint, "--format", "hf", "-o",
                     tmp_path / "out", "--push-to-hub", "me/model",
                     env={"HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf_home")})
    assert_one_error_line(result, "token", "hf auth login", "HF_TOKEN")
    assert not (tmp_path / "out").exists()


def test_push_without_network_is_one_line_and_keeps_the_folder(trained_checkpoint, tmp_path):
    result = run_cli("export", "--checkpoint", trained_checkpoint, "--format", "hf", "-o",
                     tmp_path / "out", "--push-to-hub", "me/model",
                     env={"HF_TOKEN": "hf_test_token", "HF_HOME": str(tmp_path / "hf_home"),
                          "HF_ENDPOINT": "http://127.0.0.1:9"})  # nothing listens there
    line = assert_one_error_line(result, "could not upload", "me/model", "folder is kept",
                                 "hf upload me/model")
    assert "Connect" in line
    assert (tmp_path / "out" / "model.safetensors").exists()
