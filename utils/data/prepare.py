"""Streaming preparation: text -> token ids in a uint16 cache, on every core, in bounded memory.

    corpus = tokenize_corpus("my_corpus/")   # a .txt file, a folder, hf:NAME, or None
    corpus.tokens                            # np.memmap of uint16, read-only

The text is read in blocks, hashed as it streams, cut into pieces at points BPE cannot
cross, encoded by worker processes (one per core) and written to the cache in order. At most
two pieces per worker are in flight, so memory does not grow with the corpus. The ids are
exactly those of encoding the whole text in one call (`load_text` + `encode`), and the cache
key is the same sha256 of that text as before, so existing caches stay valid.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import json
import os
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.data import sources
from utils.data.sources import BUILTIN_SOURCE
from utils.fileio import PendingFile, on_google_drive, write_bytes_atomically
from utils.tokenizer import ENDOFTEXT, get_tokenizer


def default_cache_dir() -> Path:
    """Where prepared token ids go by default: the user's cache folder on this machine's
    own disk (`$XDG_CACHE_HOME/gpt2-training/data`, else `~/.cache/gpt2-training/data`;
    in Colab `/root/.cache/...`), outside the code and checkpoint folders, so training
    never reads its batches through Google Drive even when the code lives there."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "gpt2-training" / "data"


DEFAULT_CACHE_DIR = default_cache_dir()  # at import; `default_cache_dir()` reads it again
# Where caches were kept before they moved to the local disk: inside the code folder
# (which may be on Drive). A cache found there is still used when it is the only copy.
LEGACY_CACHE_DIR = Path(__file__).resolve().parent.parent.parent / ".cache" / "data"
CACHE_FORMAT_VERSION = 1
UINT16_MAX_TOKEN = np.iinfo(np.uint16).max  # 65535: largest id a uint16 cache can hold

# A piece sent to a worker: ~1 MiB of UTF-8. Small enough that a worker's text, ids and
# tiktoken's working set stay at a few tens of MB; big enough that pickling it is noise.
PIECE_BYTES = 1 << 20
# Without a safe cut point (a huge run with no space or newline), a piece may grow this far
# before it is cut anyway; only such input can encode differently from one whole-text call.
MAX_PIECE_BYTES = 64 * PIECE_BYTES
# Below this many bytes the pool's start-up (new interpreters, tokenizer loads) costs more
# than it saves, so the text is encoded in this process.
POOL_MIN_BYTES = 4 * PIECE_BYTES

# A safe cut: between a printable ASCII character and the space, tab or newline after it.
# GPT-2's pre-tokeniser never joins a non-space character with the whitespace that follows
# it (every whitespace run, or " word", starts a new piece), so encoding the two sides apart
# gives exactly the ids of encoding them together. ASCII on both sides keeps the rule exact
# (no Unicode whitespace questions) and never splits a UTF-8 character or a "\r\n".
_SAFE_CUT = re.compile(rb"[\x21-\x7e](?=[ \t\n\r])")
_EOT = ENDOFTEXT.encode()


@dataclass
class TokenizedCorpus:
    """Token ids of a corpus, memory-mapped from the on-disk cache."""

    tokens: np.ndarray  # np.memmap of uint16, read-only
    source: str  # the path given, hf:NAME..., or BUILTIN_SOURCE
    tokenizer_name: str
    sha256: str  # of the source text (documents joined with <|endoftext|>)
    cache_path: Path
    documents: int | None = None  # joined documents (None: a cache written before this was kept)
    characters: int | None = None

    def __len__(self) -> int:
        return len(self.tokens)


# ---------------------------------------------------------------------------------------------
# The text stream


class TextStream:
    """The corpus text as UTF-8 blocks: documents joined with `<|endoftext|>`, hashed as it goes.

    `documents` yields (name, raw byte blocks) per document. With `translate_newlines`,
    "\\r\\n" and "\\r" become "\\n" as Python's text mode reads files (so the ids match
    `load_text`); with `skip_blank`, whitespace-only documents are left out. Every block is
    checked as UTF-8, so a bad file is named before any worker sees it.
    """

    def __init__(self, documents: Iterable[tuple[str, Iterable[bytes]]], *,
                 translate_newlines: bool = True, skip_blank: bool = True,
                 total_bytes: int | None = None) -> None:
        self._documents = documents
        self.translate_newlines = translate_newlines
        self.skip_blank = skip_blank
        self.total_bytes = total_bytes
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0  # raw source bytes consumed (the progress bar's unit)
        self.documents = 0  # documents emitted
        self.characters = 0  # characters emitted (separators included)
        self.seen = 0  # documents read, blank ones included

    def __iter__(self) -> Iterator[bytes]:
        for name, blocks in self._documents:
            self.seen += 1
            yield from self._document(name, blocks)

    def _document(self, name: str, blocks: Iterable[bytes]) -> Iterator[bytes]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        held: list[tuple[bytes, int]] = []  # blocks of a document not yet known to be non-blank
        started = not self.skip_blank
        if started:
            yield from self._start()
        position, carry = 0, b""
        for raw in _then_none(blocks):
            final = raw is None
            if final:
                block, carry = (b"\n" if carry else b""), b""
            else:
                self.bytes_read += len(raw)
                block, carry = self._translate(carry + raw)
            text = _decode(decoder, block, final, name, position)
            position += len(block)
            if not started:
                held.append((block, len(text)))
                if not text.strip():
                    continue
                started = True
                yield from self._start()
                for data, characters in held:
                    yield self._emit(data, characters)
                held = []
            elif block:
                yield self._emit(block, len(text))

    def _translate(self, data: bytes) -> tuple[bytes, bytes]:
        """(translated data, a trailing "\\r" held back in case "\\n" starts the next block)."""
        if not self.translate_newlines or b"\r" not in data:
            return data, b""
        carry = b"\r" if data.endswith(b"\r") else b""
        if carry:
            data = data[:-1]
        return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n"), carry

    def _start(self) -> Iterator[bytes]:
        if self.documents:
            yield self._emit(_EOT, len(ENDOFTEXT))
        self.documents += 1

    def _emit(self, data: bytes, characters: int) -> bytes:
        self.sha256.update(data)
        self.characters += characters
        return data


def _then_none(blocks: Iterable[bytes]) -> Iterator[bytes | None]:
    yield from blocks
    yield None


def _decode(decoder: Any, block: bytes, final: bool, name: str, position: int) -> str:
    """`block` as text, continuing a character split across blocks; a bad byte is named by
    its offset in the (newline-translated) file."""
    held = len(decoder.getstate()[0])  # bytes of a character begun in the previous block
    try:
        return decoder.decode(block, final)
    except UnicodeDecodeError as error:
        raise ValueError(sources.not_utf8_message(name, error.reason,
                                                  position - held + error.start)) from error


def safe_cut(data: bytes | bytearray, target: int) -> int | None:
    """The first safe cut at or after `target` (see `_SAFE_CUT`), or None."""
    match = _SAFE_CUT.search(data, max(target - 1, 0))
    return None if match is None else match.end()


def _forced_cut(data: bytearray, target: int) -> int:
    """A cut near `target` for text with no safe point: never inside a UTF-8 character,
    a "\\r\\n" or an `<|endoftext|>` (those would change the text itself)."""
    cut = target
    while cut > 1 and (data[cut] & 0xC0 == 0x80 or data[cut - 1] == 0x0D):
        cut -= 1
    start = data.find(_EOT, max(cut - len(_EOT) + 1, 0), cut + len(_EOT))
    if 0 <= start < cut:
        cut = start or start + len(_EOT)
    return cut


def split_pieces(blocks: Iterable[bytes], piece_bytes: int = PIECE_BYTES,
                 max_piece_bytes: int | None = None) -> Iterator[bytes]:
    """Cut a stream of UTF-8 blocks into pieces of about `piece_bytes` at safe points."""
    max_piece_bytes = max_piece_bytes or max(MAX_PIECE_BYTES, 64 * piece_bytes)
    buffer = bytearray()
    for block in blocks:
        buffer += block
        while len(buffer) >= piece_bytes:
            cut = safe_cut(buffer, piece_bytes)
            if cut is None:
                if len(buffer) < max_piece_bytes:
                    break  # wait for more text: the next block may bring a safe point
                cut = _forced_cut(buffer, piece_bytes)
            yield bytes(buffer[:cut])
            del buffer[:cut]
    if buffer:
        yield bytes(buffer)


def split_into_chunks(text: str, chunk_chars: int = PIECE_BYTES) -> list[str]:
    """`text` cut into pieces of about `chunk_chars` UTF-8 bytes where BPE cannot cross."""
    pieces = split_pieces([text.encode("utf-8")], chunk_chars, max_piece_bytes=1 << 62)
    return [piece.decode("utf-8") for piece in pieces]


# ---------------------------------------------------------------------------------------------
# Encoding pieces (in this process or in workers)


def encode_piece(tokenizer: Any, piece: bytes) -> np.ndarray:
    """uint16 ids of one piece; `<|endoftext|>` in the text is the end-of-text id."""
    text = piece.decode("utf-8")
    if hasattr(tokenizer, "encode_to_numpy"):  # tiktoken >= 0.7: no list of Python ints
        ids = tokenizer.encode_to_numpy(text, allowed_special={ENDOFTEXT})
    else:
        ids = tokenizer.encode(text, allowed_special={ENDOFTEXT})
    return np.asarray(ids, dtype=np.uint16)


def _worker_start() -> None:
    """Workers leave Ctrl-C to the parent, which stops them after the piece in hand."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _encode_in_worker(tokenizer_name: str, piece: bytes) -> np.ndarray:
    return encode_piece(get_tokenizer(tokenizer_name), piece)


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def encode_pieces(pieces: Iterable[bytes], tokenizer: Any, workers: int) -> Iterator[np.ndarray]:
    """Ids of each piece, in order. With `workers` > 1, encoded by that many processes with
    at most two pieces each in flight, so reading never runs ahead of encoding."""
    if workers <= 1:
        for piece in pieces:
            yield encode_piece(tokenizer, piece)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the parent may hold torch's threads, which a fork would copy broken.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_start)
    in_flight: deque = deque()
    try:
        for piece in pieces:
            in_flight.append(pool.submit(_encode_in_worker, tokenizer.name, piece))
            if len(in_flight) >= 2 * workers:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# The cache


def check_tokenizer(tokenizer: Any, name: str) -> None:
    if tokenizer.max_token_value > UINT16_MAX_TOKEN:
        raise ValueError(
            f"tokenizer {name!r} has ids up to {tokenizer.max_token_value}, more than "
            f"a uint16 token cache can hold ({UINT16_MAX_TOKEN}); use 'gpt2' or 'byte'"
        )


def cache_paths(cache_dir: Path, tokenizer_name: str, digest: str) -> tuple[Path, Path]:
    stem = cache_dir / f"{tokenizer_name}-{digest[:32]}"
    return stem.with_suffix(".bin"), stem.with_suffix(".json")


def cache_is_valid(bin_path: Path, meta_path: Path, digest: str, tokenizer: str) -> bool:
    """The JSON is written last, so its presence with matching size means a complete cache."""
    try:
        meta = json.loads(meta_path.read_text())
        return (meta.get("format_version") == CACHE_FORMAT_VERSION
                and meta.get("sha256") == digest and meta.get("tokenizer") == tokenizer
                and bin_path.stat().st_size == 2 * int(meta["num_tokens"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def read_meta(meta_path: Path) -> dict[str, Any]:
    try:
        return json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return {}


def _remove_stale_partials(cache_dir: Path) -> None:
    """Delete `.prep-<pid>-*.tmp` files of preparations whose process is gone (killed)."""
    for partial in cache_dir.glob(".prep-*.tmp"):
        try:
            pid = int(partial.name.split("-")[1])
            os.kill(pid, 0)  # raises if no such process
        except ProcessLookupError:
            partial.unlink(missing_ok=True)
        except (ValueError, IndexError, OSError):
            continue  # not ours, or a process we may not signal (alive)


@contextlib.contextmanager
def _writing_cache(cache_dir: Path) -> Iterator[None]:
    """Turn a failed cache write (read-only folder, a file in the way, disk full) into a
    message that names the folder and the fix; errors reading the source pass through."""
    try:
        yield
    except OSError as error:
        code, reason = error.errno, error.strerror or str(error)
        if code is None:  # numpy's short write ("N requested and M written"): a full disk
            code, reason = errno.ENOSPC, f"{reason}: the disk is full"
        # The fix names the setting (cache_dir): the command line shows it as --cache-dir,
        # the notebook as its CACHE_DIR field.
        raise type(error)(code, f"cannot write the token cache in {str(cache_dir)!r} "
                          f"({reason}); choose a token cache folder that is writable and "
                          "has free space (cache_dir)") from error


def _drive_note(cache_dir: Path, only_copy: bool) -> str:
    why = "it is the only prepared copy, so it is used" if only_copy else "it was asked for"
    return (f"note: the token cache in {cache_dir} is on Google Drive ({why}): every "
            f"training batch is read through Drive's client, which is slow. A cache on the "
            f"local disk ({default_cache_dir()}, the default cache_dir) is read far faster; "
            f"to move it, delete the Drive copy (it is prepared again locally) or copy "
            f"its files there.")


def prepare_stream(stream: TextStream, tokenizer: Any, cache_dir: Path, source: str,
                   workers: int | None = None, progress: bool = True) -> tuple[Path, dict]:
    """Stream `stream` through the tokenizer into the cache; (bin path, metadata written).

    The ids go to a hidden `.prep-<pid>-*.tmp` file, renamed to its final name (the sha256,
    known only at the end) after an fsync, then the JSON is written: a preparation stopped
    at any point leaves no file that a later call would use, and the next call starts over.
    """
    with _writing_cache(cache_dir):
        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(cache_dir)
        pending = PendingFile(cache_dir / f".prep-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    with pending:  # left without a publish (an error, Ctrl-C): the temporary is deleted
        num_tokens, num_documents = _encode_into(pending.handle, stream, tokenizer, cache_dir,
                                                 workers, progress)
        with _writing_cache(cache_dir):
            pending.sync()
        _check_not_empty(stream, source)
        digest = stream.sha256.hexdigest()
        bin_path, meta_path = cache_paths(cache_dir, tokenizer.name, digest)
        with _writing_cache(cache_dir):
            pending.publish(bin_path)
    meta = {"format_version": CACHE_FORMAT_VERSION, "sha256": digest,
            "tokenizer": tokenizer.name, "num_tokens": num_tokens, "dtype": "uint16",
            "source": source, "num_characters": stream.characters,
            "num_documents": num_documents}
    with _writing_cache(cache_dir):
        write_bytes_atomically(meta_path, json.dumps(meta, indent=1).encode())
    return bin_path, meta


def _write_ids(ids: np.ndarray, out: Any) -> None:
    ids.tofile(out)


def _encode_into(out: Any, stream: TextStream, tokenizer: Any, cache_dir: Path,
                 workers: int | None, progress: bool) -> tuple[int, int]:
    """Encode the stream piece by piece, appending the ids to `out`; (ids, documents), where
    documents are what end-of-text ids separate (joined files, and any written in them)."""
    from tqdm.auto import tqdm

    workers = default_workers() if workers is None else workers
    small = stream.total_bytes is not None and stream.total_bytes < POOL_MIN_BYTES
    if small:
        workers = 1
    label = f"preparing ({tokenizer.name}, {workers} worker{'s' if workers > 1 else ''})"
    num_tokens, boundaries, start = 0, 0, time.perf_counter()
    eot = getattr(tokenizer, "eot_token", None)
    pieces = encode_pieces(split_pieces(stream, PIECE_BYTES), tokenizer, workers)
    with contextlib.closing(pieces), tqdm(total=stream.total_bytes, desc=label, unit="B",
                                          unit_scale=True, disable=small or not progress) as bar:
        for ids in pieces:
            with _writing_cache(cache_dir):
                _write_ids(ids, out)
            num_tokens += len(ids)
            boundaries += int(np.count_nonzero(ids == eot))
            bar.update(stream.bytes_read - bar.n)
            rate = num_tokens / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{num_tokens:,} tokens, {rate / 1e6:.2f}M tokens/s",
                                refresh=False)
    return num_tokens, boundaries + 1


def _check_not_empty(stream: TextStream, source: str) -> None:
    if stream.documents:
        return
    path = Path(source)
    if path.is_dir():
        raise ValueError(sources.empty_folder_message(path, stream.seen))
    if path.is_file():
        raise ValueError(sources.empty_file_message(path))
    raise ValueError(f"{source!r} has no text in it (every document is empty or blank); "
                     "choose another text column or dataset")


# ---------------------------------------------------------------------------------------------
# Sources -> streams, and the index that makes a repeated call skip reading


@dataclass
class _Plan:
    """How to read one source: its stream, and what identifies its bytes without reading."""

    source: str
    stream: Callable[[], TextStream]
    # What identifies the bytes without reading them (file names, sizes, modification
    # times; a dataset's fingerprint), or None where only reading can tell.
    identity: Callable[[], list | None] = lambda: None


def _plan(source: str | Path | None, text_column: str | None) -> _Plan:
    if source is None:
        documents = [doc.encode() for doc in sources.builtin_documents()]
        return _Plan(BUILTIN_SOURCE, lambda: TextStream(
            ((f"{BUILTIN_SOURCE}[{i}]", [doc]) for i, doc in enumerate(documents)),
            translate_newlines=False, skip_blank=False, total_bytes=sum(map(len, documents))))
    from utils.data import hf

    if hf.is_hf_source(source):
        dataset, column, label, identity = hf.open_text_dataset(source, text_column)
        # no newline translation: rows are already text
        return _Plan(label, lambda: TextStream(hf.text_rows(dataset, column),
                                               translate_newlines=False, skip_blank=True),
                     lambda: identity)
    path = Path(source).expanduser()
    files = sources.text_files(path)
    stats = sources.file_stats(files)
    total = sum(size for _, size, _ in stats)
    return _Plan(str(source), lambda: TextStream(
        ((str(file), sources.read_blocks(file)) for file in files),
        skip_blank=True, total_bytes=total), lambda: sources.file_stats(files))


def _index_path(cache_dir: Path, plan: _Plan, tokenizer_name: str) -> Path:
    key = json.dumps([CACHE_FORMAT_VERSION, tokenizer_name, plan.source,
                      str(Path(plan.source).expanduser().resolve())])
    return cache_dir / "index" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def _indexed_digest(index: Path, identity: list | None) -> str | None:
    """The sha256 recorded for a source whose identity (see `_Plan`) is unchanged."""
    if identity is None:
        return None
    try:
        recorded = json.loads(index.read_text())
    except (OSError, ValueError):
        return None
    return recorded.get("sha256") if recorded.get("identity") == identity else None


def tokenize_corpus(
    source: str | Path | None = None,
    tokenizer_name: str = "gpt2",
    cache_dir: str | Path | None = None,
    *,
    workers: int | None = None,
    text_column: str | None = None,
    progress: bool = True,
) -> TokenizedCorpus:
    """Token ids of `source`, prepared once (streaming, on every core) and cached as uint16.

    `source`: a UTF-8 file, a folder of .txt files (joined with `<|endoftext|>`), a Hugging
    Face dataset (`hf:NAME`, see `utils.data.hf`, or a `save_to_disk` folder), or None for
    the built-in corpus. The cache is keyed by the sha256 of the text and the tokenizer. A
    second call with unchanged files (same names, sizes and modification times) maps the
    cached ids without reading the text again. `workers`: processes that encode (default:
    one per core; 1 encodes here). `cache_dir`: where the ids are cached (default:
    `default_cache_dir()`, on the local disk; a cache that earlier versions left in the code
    folder's `.cache/data` is still used when it is the only copy). A cache on Google
    Drive is used with a note: training would read every batch through Drive.
    """
    tokenizer = get_tokenizer(tokenizer_name)
    check_tokenizer(tokenizer, tokenizer_name)
    chosen = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    plan = _plan(source, text_column)
    identity = plan.identity()
    builtin = (hashlib.sha256(sources.load_text().encode()).hexdigest() if source is None
               else None)
    found = _find_cached(chosen, plan, tokenizer.name, identity, builtin)
    if found is not None and on_google_drive(chosen):
        print(_drive_note(chosen, only_copy=False))
    if found is None and cache_dir is None and chosen != LEGACY_CACHE_DIR:
        found = _find_cached(LEGACY_CACHE_DIR, plan, tokenizer.name, identity, builtin)
        if found is not None and on_google_drive(LEGACY_CACHE_DIR):
            print(_drive_note(LEGACY_CACHE_DIR, only_copy=True))
    if found is None:
        bin_path, meta = prepare_stream(plan.stream(), tokenizer, chosen, plan.source,
                                        workers, progress)
        digest, meta_path = meta["sha256"], bin_path.with_suffix(".json")
        if identity is not None and _unchanged(plan, identity):
            index = _index_path(chosen, plan, tokenizer.name)
            with _writing_cache(chosen):
                index.parent.mkdir(exist_ok=True)
                write_bytes_atomically(index, json.dumps({"identity": identity,
                                                    "sha256": digest}).encode())
    else:
        bin_path, meta_path, digest = found
    meta = read_meta(meta_path)
    return TokenizedCorpus(tokens=np.memmap(bin_path, dtype=np.uint16, mode="r"),
                           source=plan.source, tokenizer_name=tokenizer_name, sha256=digest,
                           cache_path=bin_path, documents=meta.get("num_documents"),
                           characters=meta.get("num_characters"))


def _find_cached(cache_dir: Path, plan: _Plan, tokenizer_name: str, identity: list | None,
                 digest: str | None) -> tuple[Path, Path, str] | None:
    """(ids, metadata, sha256) of a complete cache of `plan`'s text in `cache_dir`, found
    by the text's sha256 (`digest`, when known) or by the index of unchanged sources."""
    digest = digest or _indexed_digest(_index_path(cache_dir, plan, tokenizer_name), identity)
    if digest is None:
        return None
    bin_path, meta_path = cache_paths(cache_dir, tokenizer_name, digest)
    return ((bin_path, meta_path, digest)
            if cache_is_valid(bin_path, meta_path, digest, tokenizer_name) else None)


def _unchanged(plan: _Plan, identity: list) -> bool:
    """The source's identity again after reading: a file edited meanwhile is not indexed."""
    try:
        return plan.identity() == identity
    except OSError:
        return False
