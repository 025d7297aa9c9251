"""utils.data: loading, the token cache, splitting, and the deterministic BatchLoader."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from utils import data
from utils.data import (
    BUILTIN_SOURCE,
    BatchLoader,
    load_text,
    split_into_chunks,
    tokenize_corpus,
    train_val_split,
)
from utils.tokenizer import get_tokenizer

EOT = "<|endoftext|>"


@pytest.fixture
def count_encodes(monkeypatch):
    """Count calls of the function that tokenises text into the cache."""
    calls = []
    real = data._encode_to_file

    def counting(text, tokenizer, path):
        calls.append(tokenizer.name)
        return real(text, tokenizer, path)

    monkeypatch.setattr(data, "_encode_to_file", counting)
    return calls


# --------------------------------------------------------------------------- load_text


def test_builtin_corpus_is_pydoc_topics_in_key_order():
    from pydoc_data.topics import topics

    text = load_text()
    assert text == EOT.join(topics[key] for key in sorted(topics))
    assert len(text) > 100_000


def test_folder_of_txt_files_sorted_and_joined(tmp_path):
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    (tmp_path / ".ipynb_checkpoints").mkdir()  # Jupyter's copies of edited files
    (tmp_path / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("copy", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("hidden", encoding="utf-8")
    assert load_text(tmp_path) == f"first{EOT}second{EOT}third"


def test_folder_documents_become_end_of_text_ids(tmp_path):
    (tmp_path / "a.txt").write_text("ab", encoding="utf-8")
    (tmp_path / "b.txt").write_text("c", encoding="utf-8")
    corpus = tokenize_corpus(tmp_path, tokenizer_name="byte", cache_dir=tmp_path / "cache")
    assert corpus.tokens.tolist() == [97, 98, 256, 99]
    gpt2 = tokenize_corpus(tmp_path, tokenizer_name="gpt2", cache_dir=tmp_path / "cache")
    enc = get_tokenizer("gpt2")
    assert gpt2.tokens.tolist() == enc.encode_ordinary("ab") + [50256] + enc.encode_ordinary("c")


def test_missing_path_names_it_and_the_fix(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=r"nope\.txt.*does not exist.*built-in corpus"):
        load_text(missing)


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty\.txt.*is empty \(3 bytes\)"):
        load_text(path)


def test_folder_without_txt_files_is_an_error(tmp_path):
    (tmp_path / "x.md").write_text("hi", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="has no .txt files"):
        load_text(tmp_path)


def test_folder_of_empty_files_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("", encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"all 2 \.txt files .* are empty"):
        load_text(tmp_path)


def test_non_utf8_file_names_the_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt.*not UTF-8.*convert it"):
        load_text(path)


# --------------------------------------------------------------------------- the cache


def test_cache_is_reused_without_retokenising(tmp_path, count_encodes):
    cache = tmp_path / "cache"
    first = tokenize_corpus(None, "gpt2", cache_dir=cache)
    second = tokenize_corpus(None, "gpt2", cache_dir=cache)
    assert count_encodes == ["r50k_base"]  # the second call only mapped the file
    assert isinstance(second.tokens, np.memmap) and second.tokens.dtype == np.uint16
    np.testing.assert_array_equal(first.tokens, second.tokens)
    text = load_text()
    assert second.tokens.tolist() == get_tokenizer("gpt2").encode(text, allowed_special={EOT})
    assert (second.source, second.tokenizer_name) == (BUILTIN_SOURCE, "gpt2")
    meta = json.loads(second.cache_path.with_suffix(".json").read_text())
    assert meta["num_tokens"] == len(second) and meta["sha256"] == second.sha256
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [second.cache_path.name, second.cache_path.with_suffix(".json").name])  # no temp files


def test_cache_key_follows_text_and_tokenizer(tmp_path, count_encodes):
    path, cache = tmp_path / "t.txt", tmp_path / "cache"
    path.write_text("hello there", encoding="utf-8")
    a = tokenize_corpus(path, "byte", cache_dir=cache)
    tokenize_corpus(path, "gpt2", cache_dir=cache)
    path.write_text("hello world", encoding="utf-8")
    b = tokenize_corpus(path, "byte", cache_dir=cache)
    assert count_encodes == ["byte", "r50k_base", "byte"]
    assert a.sha256 != b.sha256 and bytes(b.tokens.tolist()) == b"hello world"


def test_incomplete_cache_is_rebuilt(tmp_path, count_encodes):
    """A kill between writing the ids and the JSON (or a truncated .bin) is not trusted."""
    cache = tmp_path / "cache"
    path = tmp_path / "t.txt"
    path.write_text("some text to cache", encoding="utf-8")
    corpus = tokenize_corpus(path, "byte", cache_dir=cache)
    expected = corpus.tokens.tolist()
    bin_path = corpus.cache_path
    del corpus
    bin_path.write_bytes(bin_path.read_bytes()[:-2])  # truncated ids
    assert tokenize_corpus(path, "byte", cache_dir=cache).tokens.tolist() == expected
    bin_path.with_suffix(".json").unlink()  # ids written, metadata never
    assert tokenize_corpus(path, "byte", cache_dir=cache).tokens.tolist() == expected
    assert len(count_encodes) == 3


def test_failed_tokenising_leaves_no_cache_file(tmp_path, monkeypatch):
    path, cache = tmp_path / "t.txt", tmp_path / "cache"
    path.write_text("x" * 100, encoding="utf-8")

    class Exploding:
        name, max_token_value, eot_token = "boom", 10, 0

        def encode(self, text, allowed_special=()):
            raise KeyboardInterrupt

    monkeypatch.setattr(data, "get_tokenizer", lambda name: Exploding())
    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus(path, "boom", cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_unwritable_cache_dir_names_it(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder", encoding="utf-8")
    with pytest.raises(OSError, match=r"cannot write the token cache in '.*a_file'.*cache_dir="):
        tokenize_corpus(None, "byte", cache_dir=blocker)
    assert blocker.read_text(encoding="utf-8") == "not a folder"


def test_vocabulary_too_big_for_uint16(tmp_path, monkeypatch):
    class Huge:
        name, max_token_value = "cl100k_base", 100_276

    monkeypatch.setattr(data, "get_tokenizer", lambda name: Huge())
    with pytest.raises(ValueError, match=r"ids up to 100276.*uint16.*65535"):
        tokenize_corpus(None, "cl100k_base", cache_dir=tmp_path)


def test_chunked_encoding_gives_the_same_ids_as_one_call():
    """Cutting at the chunk points never changes GPT-2's BPE, on the real corpus and on
    adversarial whitespace/punctuation soup."""
    enc = get_tokenizer("gpt2")
    text = load_text()
    chunks = split_into_chunks(text, 4000)
    assert len(chunks) > 50 and "".join(chunks) == text
    ids = [i for chunk in chunks for i in enc.encode(chunk, allowed_special={EOT})]
    assert ids == enc.encode(text, allowed_special={EOT})
    alphabet = [*"ab Z9\n\t.,'!é中", "\n\n", "\r\n", "  \n", " \n ", "'s", "'ll", "123"]
    rng = random.Random(0)
    for _ in range(40):
        soup = "".join(rng.choice(alphabet) for _ in range(1500))
        for size in (1, 13, 200):
            pieces = split_into_chunks(soup, size)
            assert "".join(pieces) == soup
            assert [i for p in pieces for i in enc.encode_ordinary(p)] == enc.encode_ordinary(soup)


def test_big_input_is_written_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CHUNK_CHARS", 64)
    chunk_counts = []

    def spy(text, chunk_chars):
        chunks = split_into_chunks(text, chunk_chars)
        chunk_counts.append(len(chunks))
        return chunks

    monkeypatch.setattr(data, "split_into_chunks", spy)
    path = tmp_path / "big.txt"
    path.write_text("line of text\n" * 200, encoding="utf-8")
    corpus = tokenize_corpus(path, "gpt2", cache_dir=tmp_path / "cache")
    # 13-char lines; the first safe cut at or after 64 chars ends line 6: 200 lines -> 34 chunks
    assert chunk_counts == [34]
    assert corpus.tokens.tolist() == get_tokenizer("gpt2").encode(path.read_text())


# --------------------------------------------------------------------------- split


def test_train_val_split_puts_val_at_the_end():
    tokens = np.arange(100, dtype=np.uint16)
    train, val = train_val_split(tokens, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_train_val_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match=f"val_fraction must be between 0 and 1.*{fraction}"):
        train_val_split(np.arange(100), fraction)


def test_train_val_split_too_few_tokens():
    with pytest.raises(ValueError, match=r"cannot split 3 tokens with val_fraction=0.1.*0 validation"):
        train_val_split(np.arange(3), 0.1)


# --------------------------------------------------------------------------- BatchLoader


@pytest.fixture
def tokens():
    return np.random.default_rng(0).integers(0, 50257, size=5000).astype(np.uint16)


def test_batch_shapes_and_shift(tokens):
    loader = BatchLoader(tokens, batch_size=4, context_length=16, seed=3)
    x, y = loader.get_batch(0)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    as_list = tokens.tolist()
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        start = next(i for i in range(len(as_list)) if as_list[i:i + 16] == row_x)
        assert as_list[start + 1:start + 17] == row_y  # y is really the next token


def test_batches_are_a_pure_function_of_seed_and_step(tokens):
    a = BatchLoader(tokens, 4, 16, seed=7)
    b = BatchLoader(tokens, 4, 16, seed=7)
    torch.manual_seed(123)
    np.random.seed(5)  # global RNG state must not matter
    first = [a.get_batch(s) for s in (5, 0, 3)]
    torch.manual_seed(999)
    second = [b.get_batch(s) for s in (5, 0, 3)]
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(a.get_batch(0)[0], a.get_batch(1)[0])
    assert not torch.equal(a.get_batch(0)[0], BatchLoader(tokens, 4, 16, seed=8).get_batch(0)[0])


def test_two_ranks_see_what_one_process_with_double_batch_sees(tokens):
    single = BatchLoader(tokens, batch_size=8, context_length=16, seed=1)
    ranks = [BatchLoader(tokens, 4, 16, seed=1, rank=r, world_size=2) for r in range(2)]
    for step in range(3):
        x, y = single.get_batch(step)
        parts = [loader.get_batch(step) for loader in ranks]
        assert torch.equal(x, torch.cat([p[0] for p in parts]))
        assert torch.equal(y, torch.cat([p[1] for p in parts]))


def test_iteration_and_state_dict_resume(tokens):
    uninterrupted = BatchLoader(tokens, 4, 16, seed=2)
    assert iter(uninterrupted) is uninterrupted
    expected = [next(uninterrupted) for _ in range(6)]

    first = BatchLoader(tokens, 4, 16, seed=2)
    for _ in range(4):
        next(first)
    state = first.state_dict()
    assert state == {"seed": 2, "step": 4, "batch_size": 4, "context_length": 16,
                     "world_size": 1}
    assert all(type(v) is int for v in state.values())  # safe with weights_only=True

    resumed = BatchLoader(tokens, 4, 16, seed=99)  # the saved seed wins
    resumed.load_state_dict(state)
    for want in expected[4:]:
        got = next(resumed)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert resumed.step == 6


def test_resume_across_world_sizes_with_same_global_batch(tokens):
    two_ranks = BatchLoader(tokens, 4, 16, seed=4, rank=0, world_size=2)
    two_ranks.step = 3
    single = BatchLoader(tokens, 8, 16)
    single.load_state_dict(two_ranks.state_dict())
    assert single.step == 3
    assert torch.equal(single.get_batch(3)[0][:4], two_ranks.get_batch(3)[0])


def test_resume_with_different_shape_is_refused(tokens):
    state = BatchLoader(tokens, 4, 16).state_dict()
    loader = BatchLoader(tokens, 8, 16)
    with pytest.raises(ValueError, match=r"batch_size x world_size = 4 x 1.*8 x 1"):
        loader.load_state_dict(state)
    with pytest.raises(ValueError, match="context_length=16"):
        BatchLoader(tokens, 4, 32).load_state_dict(state)
    assert loader.step == 0 and loader.seed == 0  # a refused state changes nothing


def test_steps_per_epoch(tokens):
    assert BatchLoader(tokens, 4, 16).steps_per_epoch == 5000 // 64
    assert BatchLoader(tokens, 2, 16, world_size=2).steps_per_epoch == 5000 // 64
    assert BatchLoader(tokens[:40], 4, 16).steps_per_epoch == 1


def test_text_shorter_than_one_window(tokens):
    with pytest.raises(ValueError, match=r"validation split has 16 tokens.*context_length \+ 1 = 17"):
        BatchLoader(tokens[:16], 2, 16, name="validation split")
    BatchLoader(tokens[:17], 2, 16)  # exactly one window is enough
    x, y = BatchLoader(tokens[:17], 2, 16).get_batch(0)
    assert x[0].tolist() == tokens[:16].tolist() and y[0].tolist() == tokens[1:17].tolist()


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"context_length": 2.5}, "context_length must be an integer >= 1, got 2.5"),
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ({"rank": 2, "world_size": 2}, r"rank must be in \[0, world_size=2\), got 2"),
])
def test_bad_loader_arguments(tokens, kwargs, message):
    arguments = {"batch_size": 2, "context_length": 8} | kwargs
    with pytest.raises(ValueError, match=message):
        BatchLoader(tokens, **arguments)


def test_loader_on_memmap_and_tensor(tmp_path):
    corpus = tokenize_corpus(None, "byte", cache_dir=tmp_path)
    from_memmap = BatchLoader(corpus.tokens, 2, 8, seed=1).get_batch(0)
    from_tensor = BatchLoader(torch.from_numpy(np.asarray(corpus.tokens, dtype=np.int64)), 2, 8,
                              seed=1).get_batch(0)
    assert torch.equal(from_memmap[0], from_tensor[0])
