"""utils.data: text loading, streaming preparation and its cache, splitting, the BatchLoader.

The reference for every id test is the path before streaming: the whole text in one string
(`load_text`) encoded in one call.
"""

from __future__ import annotations

import hashlib
import json
import os
import random

import numpy as np
import pytest
import torch

from utils.data import (
    BUILTIN_SOURCE,
    BatchLoader,
    TokenView,
    load_text,
    prepare,
    sources,
    split_into_chunks,
    tokenize_corpus,
    train_val_split,
)
from utils.tokenizer import get_tokenizer

EOT = "<|endoftext|>"


def reference_ids(source, tokenizer="gpt2"):
    """Today's path before streaming: one string, one encode call."""
    return get_tokenizer(tokenizer).encode(load_text(source), allowed_special={EOT})


@pytest.fixture
def count_prepares(monkeypatch):
    """Count the calls that read and tokenise a source into the cache."""
    calls = []
    real = prepare.prepare_stream

    def counting(stream, tokenizer, *args, **kwargs):
        calls.append(tokenizer.name)
        return real(stream, tokenizer, *args, **kwargs)

    monkeypatch.setattr(prepare, "prepare_stream", counting)
    return calls


@pytest.fixture
def small_pieces(monkeypatch):
    """Pieces of 2 KiB and the worker pool even for small inputs, so tests cross many cuts."""
    monkeypatch.setattr(prepare, "PIECE_BYTES", 2048)
    monkeypatch.setattr(prepare, "POOL_MIN_BYTES", 0)


def mixed_text(documents=40, seed=0):
    """Documents with multi-byte UTF-8, CRLF / lone CR / LF line ends, tabs and contractions."""
    rng = random.Random(seed)
    words = ["hello", "wörld", "naïve", "中文字符", "emoji 🎉", "it's", "we'll", "x", "123",
             "4.5", "!!", "--", "\t", "  ", "ça", "Ωμέγα", "\u3000", "\xa0", "a\x1cb"]
    docs = []
    for d in range(documents):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 25)))
                 for _ in range(rng.randint(1, 40))]
        docs.append(("\r\n", "\n", "\r")[d % 3].join(lines) + rng.choice(["", "\r\n", "\n"]))
    return docs


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
    (tmp_path / "a.txt.d").mkdir()  # sorted as a path: a.txt < a.txt.d/ < b.txt
    (tmp_path / "a.txt.d" / "z.txt").write_text("inner", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    (tmp_path / ".ipynb_checkpoints").mkdir()  # Jupyter's copies of edited files
    (tmp_path / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("copy", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("hidden", encoding="utf-8")
    os.mkfifo(tmp_path / "pipe.txt")  # not a regular file: reading it would block forever
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    assert load_text(tmp_path) == f"first{EOT}inner{EOT}second{EOT}third"
    corpus = tokenize_corpus(tmp_path, "byte", cache_dir=tmp_path / ".cache")
    assert corpus.tokens.tolist() == reference_ids(tmp_path, "byte")
    assert corpus.documents == 4


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
    with pytest.raises(FileNotFoundError, match=r"nope\.txt.*does not exist"):
        tokenize_corpus(missing, "byte", cache_dir=tmp_path / "cache")


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty\.txt.*is empty \(3 bytes\)"):
        load_text(path)
    with pytest.raises(ValueError, match=r"empty\.txt.*is empty \(3 bytes\)"):
        tokenize_corpus(path, "byte", cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*.bin"))


def test_folder_without_txt_files_is_an_error(tmp_path):
    (tmp_path / "x.md").write_text("hi", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="has no .txt files"):
        load_text(tmp_path)


def test_folder_of_empty_files_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("", encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n\u3000", encoding="utf-8")
    with pytest.raises(ValueError, match=r"all 2 \.txt files .* are empty"):
        load_text(tmp_path)
    with pytest.raises(ValueError, match=r"all 2 \.txt files .* are empty"):
        tokenize_corpus(tmp_path, "byte", cache_dir=tmp_path / "cache")


def test_non_utf8_file_names_the_file_and_the_byte(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"ok " * 10 + "café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt.*not UTF-8.*convert it"):
        load_text(path)
    with pytest.raises(ValueError, match=r"latin1\.txt.*not UTF-8.*at byte 33.*convert it"):
        tokenize_corpus(path, "byte", cache_dir=tmp_path / "cache")
    truncated = tmp_path / "cut.txt"
    truncated.write_bytes("abc €".encode()[:-1])  # a file ending inside a 3-byte character
    with pytest.raises(ValueError, match=r"cut\.txt.*not UTF-8"):
        tokenize_corpus(truncated, "byte", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "/dev/null"])
def test_special_files_are_refused_before_reading(tmp_path, special):
    """A FIFO would block the first read forever, /dev/zero would never end."""
    path = tmp_path / "pipe" if special == "fifo" else special
    if special == "fifo":
        os.mkfifo(path)
    kind = "named pipe" if special == "fifo" else "character device"
    with pytest.raises(ValueError, match=rf"{path}'? is a {kind}.*not a regular file or folder"):
        tokenize_corpus(path, "byte", cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------- streaming = one call


def test_streamed_ids_equal_one_call_on_the_builtin_corpus(tmp_path, small_pieces):
    corpus = tokenize_corpus(None, "gpt2", cache_dir=tmp_path, workers=2)
    assert corpus.tokens.tolist() == reference_ids(None)
    assert corpus.sha256 == hashlib.sha256(load_text().encode()).hexdigest()  # same cache key
    assert corpus.characters == len(load_text())


@pytest.mark.parametrize("tokenizer", ["gpt2", "byte"])
def test_streamed_ids_equal_one_call_on_crlf_multibyte_and_end_of_text(tmp_path, small_pieces,
                                                                         tokenizer):
    path = tmp_path / "mixed.txt"
    docs = mixed_text()
    path.write_bytes(EOT.join(docs).encode("utf-8"))
    assert b"\r\n" in path.read_bytes() and len(path.read_bytes()) > 20 * 2048
    corpus = tokenize_corpus(path, tokenizer, cache_dir=tmp_path / "cache", workers=2)
    expected = reference_ids(path, tokenizer)
    assert corpus.tokens.tolist() == expected
    assert corpus.sha256 == hashlib.sha256(load_text(path).encode()).hexdigest()
    assert corpus.documents == len(docs)  # the <|endoftext|> in the file separate documents
    assert expected.count(get_tokenizer(tokenizer).eot_token) == len(docs) - 1


def test_streamed_folder_equals_one_call(tmp_path, small_pieces):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, doc in enumerate(mixed_text(documents=30, seed=1)):
        (folder / f"{i:03d}.txt").write_bytes(doc.encode("utf-8"))
    (folder / "blank.txt").write_bytes(b" \r\n\t")  # skipped, as load_text skips it
    corpus = tokenize_corpus(folder, "gpt2", cache_dir=tmp_path / "cache", workers=2)
    assert corpus.tokens.tolist() == reference_ids(folder)
    assert corpus.documents == 30


def test_cut_points_never_change_the_ids():
    """Cutting at the safe points never changes GPT-2's BPE, on the real corpus and on
    adversarial whitespace/punctuation soup (Unicode spaces and separators included)."""
    enc = get_tokenizer("gpt2")
    text = load_text()
    chunks = split_into_chunks(text, 4000)
    assert len(chunks) > 50 and "".join(chunks) == text
    ids = [i for chunk in chunks for i in enc.encode(chunk, allowed_special={EOT})]
    assert ids == enc.encode(text, allowed_special={EOT})
    alphabet = [*"ab Z9\n\t\r.,'!é中\x1c\x85\xa0\u2028\u3000\v\f", "\n\n", "\r\n", "  \n",
                " \n ", "'s", "'ll", "123", EOT]
    rng = random.Random(0)
    for _ in range(40):
        soup = "".join(rng.choice(alphabet) for _ in range(1500))
        for size in (1, 13, 200):
            pieces = split_into_chunks(soup, size)
            assert "".join(pieces) == soup and len(pieces) > 1
            assert ([i for p in pieces for i in enc.encode(p, allowed_special={EOT})]
                    == enc.encode(soup, allowed_special={EOT}))


def test_text_without_any_safe_cut_is_still_cut_in_bounded_pieces():
    """A huge run with no space or newline: cut anyway at the limit, but never inside a
    UTF-8 character or an <|endoftext|>."""
    text = ("é" * 50 + EOT + "中" * 31) * 40
    data = text.encode()
    pieces = list(prepare.split_pieces([data[i:i + 100] for i in range(0, len(data), 100)],
                                       piece_bytes=64, max_piece_bytes=256))
    assert b"".join(pieces) == data
    assert max(map(len, pieces)) <= 256 + 100
    decoded = [piece.decode("utf-8") for piece in pieces]  # no character split
    assert all(EOT in d or "<|" not in d for d in decoded)  # no special token split
    enc = get_tokenizer("byte")
    assert [i for d in decoded for i in enc.encode(d, allowed_special={EOT})] == enc.encode(
        text, allowed_special={EOT})


# --------------------------------------------------------------------------- the cache


def test_cache_is_reused_without_retokenising(tmp_path, count_prepares):
    cache = tmp_path / "cache"
    first = tokenize_corpus(None, "gpt2", cache_dir=cache)
    second = tokenize_corpus(None, "gpt2", cache_dir=cache)
    assert count_prepares == ["r50k_base"]  # the second call only mapped the file
    assert isinstance(second.tokens, np.memmap) and second.tokens.dtype == np.uint16
    np.testing.assert_array_equal(first.tokens, second.tokens)
    assert second.tokens.tolist() == reference_ids(None)
    assert (second.source, second.tokenizer_name) == (BUILTIN_SOURCE, "gpt2")
    meta = json.loads(second.cache_path.with_suffix(".json").read_text())
    assert meta["num_tokens"] == len(second) and meta["sha256"] == second.sha256
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [second.cache_path.name, second.cache_path.with_suffix(".json").name])  # no temp files


def test_second_call_on_unchanged_files_does_not_read_them(tmp_path, monkeypatch,
                                                           count_prepares):
    folder, cache = tmp_path / "docs", tmp_path / "cache"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha beta", encoding="utf-8")
    (folder / "b.txt").write_text("gamma", encoding="utf-8")
    first = tokenize_corpus(folder, "byte", cache_dir=cache)

    def no_reading(*args, **kwargs):
        raise AssertionError("the text was read again")

    with monkeypatch.context() as patch:
        patch.setattr(sources, "read_blocks", no_reading)
        second = tokenize_corpus(folder, "byte", cache_dir=cache)
    assert second.tokens.tolist() == first.tokens.tolist() and second.sha256 == first.sha256
    os.utime(folder / "b.txt", ns=(1, 1))  # touched: read and hashed again, same cache file
    third = tokenize_corpus(folder, "byte", cache_dir=cache)
    assert third.cache_path == first.cache_path and count_prepares == ["byte", "byte"]
    (folder / "b.txt").write_text("delta", encoding="utf-8")  # edited: new ids
    fourth = tokenize_corpus(folder, "byte", cache_dir=cache)
    assert bytes(fourth.tokens.tolist()[-5:]) == b"delta" and fourth.sha256 != first.sha256


def test_cache_key_follows_text_and_tokenizer(tmp_path, count_prepares):
    path, cache = tmp_path / "t.txt", tmp_path / "cache"
    path.write_text("hello there", encoding="utf-8")
    a = tokenize_corpus(path, "byte", cache_dir=cache)
    tokenize_corpus(path, "gpt2", cache_dir=cache)
    path.write_text("hello world", encoding="utf-8")
    b = tokenize_corpus(path, "byte", cache_dir=cache)
    assert count_prepares == ["byte", "r50k_base", "byte"]
    assert a.sha256 != b.sha256 and bytes(b.tokens.tolist()) == b"hello world"


def test_incomplete_cache_is_rebuilt(tmp_path, count_prepares):
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
    assert len(count_prepares) == 3


def test_interrupted_preparation_leaves_nothing_and_restarts(tmp_path, monkeypatch,
                                                             small_pieces):
    """Ctrl-C in the middle (workers running): no cache, no partial file, no pool left; the
    next call starts over. A partial file of a killed process is removed by the next call."""
    path, cache = tmp_path / "t.txt", tmp_path / "cache"
    path.write_bytes(EOT.join(mixed_text()).encode())
    written = []
    real = np.ndarray.tofile

    def interrupt_after_three(ids, out):
        written.append(len(ids))
        if len(written) == 3:
            raise KeyboardInterrupt
        real(ids, out)

    monkeypatch.setattr(prepare, "_write_ids", interrupt_after_three)
    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus(path, "gpt2", cache_dir=cache, workers=2)
    assert sorted(p.name for p in cache.iterdir()) == []
    monkeypatch.undo()
    stale = cache / ".prep-999999999-deadbeef.tmp"  # a pid no system hands out
    stale.write_bytes(b"half")
    corpus = tokenize_corpus(path, "gpt2", cache_dir=cache, workers=1)
    assert corpus.tokens.tolist() == reference_ids(path)
    assert not stale.exists() and not list(cache.glob("*.tmp"))


def test_failed_tokenising_leaves_no_cache_file(tmp_path, monkeypatch):
    path, cache = tmp_path / "t.txt", tmp_path / "cache"
    path.write_text("x" * 100, encoding="utf-8")

    class Exploding:
        name, max_token_value, eot_token = "boom", 10, 0

        def encode(self, text, allowed_special=()):
            raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "get_tokenizer", lambda name: Exploding())
    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus(path, "boom", cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_unwritable_cache_dir_names_it(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder", encoding="utf-8")
    with pytest.raises(OSError, match=r"cannot write the token cache in '.*a_file'.*\(cache_dir\)"):
        tokenize_corpus(None, "byte", cache_dir=blocker)
    assert blocker.read_text(encoding="utf-8") == "not a folder"


def test_vocabulary_too_big_for_uint16(tmp_path, monkeypatch):
    class Huge:
        name, max_token_value = "cl100k_base", 100_276

    monkeypatch.setattr(prepare, "get_tokenizer", lambda name: Huge())
    with pytest.raises(ValueError, match=r"ids up to 100276.*uint16.*65535"):
        tokenize_corpus(None, "cl100k_base", cache_dir=tmp_path)


def test_progress_bar_counts_bytes_and_tokens(tmp_path, small_pieces, capsys):
    path = tmp_path / "t.txt"
    path.write_bytes(("some words here\n" * 2000).encode())
    tokenize_corpus(path, "gpt2", cache_dir=tmp_path / "cache", workers=1)
    err = capsys.readouterr().err
    assert "preparing (r50k_base, 1 worker)" in err and "32.0k/32.0k" in err
    assert f"{len(reference_ids(path)):,} tokens" in err and "M tokens/s" in err


# --------------------------------------------------------------------------- split


def test_train_val_split_puts_val_at_the_end():
    tokens = np.arange(100, dtype=np.uint16)
    train, val = train_val_split(tokens, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    assert np.shares_memory(train, tokens) and np.shares_memory(val, tokens)  # views


def test_split_by_block_spreads_val_without_copying(tmp_path):
    path = tmp_path / "ids.bin"
    np.arange(20_000, dtype=np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    train, val = train_val_split(tokens, 0.25, by="block", block_tokens=100)
    # a block goes to val when that brings val closer to 25% of what was seen: 1, 5, 9, ...
    assert val.tolist() == [i for i in range(20_000) if (i // 100) % 4 == 1]
    assert isinstance(val, TokenView) and len(train) + len(val) == 20_000
    assert all(isinstance(part, np.memmap) for part in train.parts + val.parts)  # no copy
    assert np.asarray(train).tolist() == [i for i in range(20_000) if (i // 100) % 4 != 1]
    small_train, small_val = train_val_split(tokens[:1000], 0.25, by="block", block_tokens=100)
    assert len(small_val) == 250 and len(small_val.parts) == 25  # blocks of 10: < 100 blocks


def test_split_by_document_keeps_documents_whole():
    eot = 9
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 1], [2], [3, 4, 5, 6, 7], [8, 8]]
    tokens = np.array([t for d in docs for t in d + [eot]], dtype=np.uint16)
    train, val = train_val_split(tokens, 0.3, by="document", eot_token=eot)
    chosen = [d + [eot] for i, d in enumerate(docs) if i in (1, 3, 5)]
    assert np.asarray(val).tolist() == [t for d in chosen for t in d]
    assert len(train) + len(val) == len(tokens)
    with pytest.raises(ValueError, match="eot_token="):
        train_val_split(tokens, 0.3, by="document")


def test_token_view_indexes_like_the_joined_array():
    parts = [np.arange(0, 5), np.arange(5, 6), np.arange(6, 20)]
    view, joined = TokenView(parts), np.arange(20)
    index = np.array([[0, 4, 5, 6], [19, 7, 5, 0]])
    assert view[index].tolist() == joined[index].tolist()
    assert view[3:9].tolist() == list(range(3, 9)) and view[-1] == 19 and len(view) == 20
    with pytest.raises(IndexError):
        view[np.array([20])]
    loader = BatchLoader(view, batch_size=3, context_length=4, seed=1)
    reference = BatchLoader(joined, batch_size=3, context_length=4, seed=1)
    for step in range(3):
        assert all(torch.equal(a, b) for a, b in zip(loader.get_batch(step),
                                                      reference.get_batch(step), strict=True))


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


def test_a_one_process_loader_is_resliced_for_each_rank_where_it_stands(tokens):
    loader = BatchLoader(tokens, 4, 16, seed=1)
    loader.step = 5
    assert loader.for_rank(0, 1) is loader
    ranks = [loader.for_rank(rank, 2) for rank in range(2)]
    assert [(r.rank, r.world_size, r.step, r.seed) for r in ranks] == [(0, 2, 5, 1), (1, 2, 5, 1)]
    doubled = BatchLoader(tokens, 8, 16, seed=1)  # two ranks of 4 draw one process's 8 rows
    assert torch.equal(torch.cat([r.get_batch(5)[0] for r in ranks]), doubled.get_batch(5)[0])
    with pytest.raises(ValueError, match="built for world_size=2 but this run has 4 processes"):
        ranks[0].for_rank(0, 4, "training data")


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
