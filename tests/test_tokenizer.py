"""GPT-2's exact BPE ids through the offline cache, the byte fallback, and the no-cache error."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry

from utils.tokenizer import (
    REPO_TIKTOKEN_CACHE,
    ByteTokenizer,
    TokenizerUnavailableError,
    get_tokenizer,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def _load_prepare_script():
    spec = importlib.util.spec_from_file_location(
        "prepare_tokenizer", REPO_ROOT / "scripts" / "prepare_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_tokenizer = _load_prepare_script()


@pytest.fixture
def no_network(monkeypatch):
    """Fail any download tiktoken attempts, and forget encodings already loaded."""
    calls = []

    def refuse(blobpath: str) -> bytes:
        calls.append(blobpath)
        raise ConnectionError(f"network disabled in tests: {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", refuse)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    get_tokenizer.cache_clear()
    yield calls
    get_tokenizer.cache_clear()


def test_gpt2_exact_ids_offline(no_network):
    tokenizer = get_tokenizer("gpt2")
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.encode("Hello, my name is") == [15496, 11, 616, 1438, 318]
    assert tokenizer.n_vocab == 50257
    assert tokenizer.eot_token == 50256
    assert tokenizer.decode([15496, 11, 616, 1438, 318]) == "Hello, my name is"
    assert no_network == []  # served from the repository cache, not downloaded


def test_gpt2_and_r50k_base_are_one_cached_encoding():
    assert get_tokenizer("gpt2") is get_tokenizer("gpt2")
    assert get_tokenizer("gpt2").name == get_tokenizer("r50k_base").name == "r50k_base"


def test_repo_cache_holds_the_pinned_file():
    path = prepare_tokenizer.cache_file(REPO_TIKTOKEN_CACHE)
    url = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
    assert path.name == hashlib.sha1(url.encode()).hexdigest()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == prepare_tokenizer.R50K_SHA256
    # the same hash tiktoken itself pins for r50k_base
    from tiktoken_ext import openai_public
    assert prepare_tokenizer.R50K_SHA256 in Path(openai_public.__file__).read_text()


def test_repo_cache_found_without_env(monkeypatch, no_network):
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    assert get_tokenizer("gpt2").encode("Hello world") == [15496, 995]
    assert no_network == []
    assert "TIKTOKEN_CACHE_DIR" not in os.environ  # restored after loading


def test_no_cache_no_network_explains_the_fix(monkeypatch, tmp_path, no_network):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(TokenizerUnavailableError) as excinfo:
        get_tokenizer("gpt2")
    message = str(excinfo.value)
    for fix in ("make install", "scripts/prepare_tokenizer.py", "TIKTOKEN_CACHE_DIR",
                "get_tokenizer('byte')"):
        assert fix in message
    assert len(no_network) == 1 and no_network[0].endswith("r50k_base.tiktoken")
    assert isinstance(excinfo.value, FileNotFoundError)  # the CLI reports it in one line


def test_unknown_tokenizer_name_lists_choices():
    with pytest.raises(ValueError, match=r"unknown tokenizer 'gpt3'.*'byte'.*'gpt2'"):
        get_tokenizer("gpt3")


def test_prepare_is_idempotent_and_rejects_a_bad_hash(tmp_path, monkeypatch):
    good = prepare_tokenizer.cache_file(REPO_TIKTOKEN_CACHE).read_bytes()
    monkeypatch.setattr(prepare_tokenizer, "fetch_from_pypi", lambda: good)
    monkeypatch.setattr(prepare_tokenizer, "fetch_from_openai", lambda: b"tampered")
    path = prepare_tokenizer.prepare(tmp_path / "a")
    assert path.read_bytes() == good

    def must_not_fetch():
        raise AssertionError("prepared cache was fetched again")

    monkeypatch.setattr(prepare_tokenizer, "fetch_from_pypi", must_not_fetch)
    assert prepare_tokenizer.prepare(tmp_path / "a") == path

    monkeypatch.setattr(prepare_tokenizer, "fetch_from_pypi", lambda: b"tampered")
    with pytest.raises(prepare_tokenizer.PrepareError, match="sha256") as excinfo:
        prepare_tokenizer.prepare(tmp_path / "b")
    assert "not installed" in str(excinfo.value)
    assert not prepare_tokenizer.cache_file(tmp_path / "b").exists()


def test_prepare_reports_both_sources_failing(tmp_path, monkeypatch):
    def offline():
        raise OSError("no route to host")

    monkeypatch.setattr(prepare_tokenizer, "fetch_from_pypi", offline)
    monkeypatch.setattr(prepare_tokenizer, "fetch_from_openai", offline)
    with pytest.raises(prepare_tokenizer.PrepareError) as excinfo:
        prepare_tokenizer.prepare(tmp_path)
    message = str(excinfo.value)
    assert "PyPI" in message and "r50k_base.tiktoken" in message and "no route to host" in message
    assert "get_tokenizer('byte')" in message


# --------------------------------------------------------------------------- byte fallback


def test_byte_tokenizer_round_trip():
    tokenizer = get_tokenizer("byte")
    assert isinstance(tokenizer, ByteTokenizer)
    text = "Grüße, 世界! <tab>\t\n"
    ids = tokenizer.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode_ordinary(text) == ids
    assert (tokenizer.n_vocab, tokenizer.eot_token, tokenizer.name) == (257, 256, "byte")


def test_byte_tokenizer_end_of_text_like_tiktoken():
    byte, gpt2 = get_tokenizer("byte"), get_tokenizer("gpt2")
    text = "a<|endoftext|>b"
    for tokenizer in (byte, gpt2):  # same rules: disallowed by default, one id when allowed
        with pytest.raises(ValueError):
            tokenizer.encode(text)
        ids = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
        assert ids.count(tokenizer.eot_token) == 1
        assert tokenizer.decode(ids) == text
        assert tokenizer.eot_token not in tokenizer.encode_ordinary(text)
    assert byte.encode(text, allowed_special="all") == [97, 256, 98]
    assert byte.encode(text, disallowed_special=()) == list(text.encode())


def test_byte_tokenizer_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="257 is outside"):
        get_tokenizer("byte").decode([1, 257])


def test_tokenizer_module_import_is_light():
    # utils.tokenizer imports tiktoken only when a BPE tokenizer is requested
    code = ("import sys, utils.tokenizer as t; t.get_tokenizer('byte'); "
            "print('tiktoken' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "False"
