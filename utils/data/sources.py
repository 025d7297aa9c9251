"""Where corpus text comes from: the built-in corpus, a UTF-8 file, or a folder of .txt files.

Every data path is checked first (`check_data_path`): it must be a regular file or a folder.
A named pipe would block the first read forever and /dev/zero never ends, so both are
refused with a one-line reason before anything is opened.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from utils.tokenizer import ENDOFTEXT

BUILTIN_SOURCE = "builtin:pydoc_data.topics"
ACCEPTED = ("a UTF-8 .txt file, a folder of .txt files, a nanoGPT folder (train.bin/val.bin), "
            "an llm.c .bin shard or folder of shards, a Hugging Face dataset (hf:NAME or a "
            "save_to_disk folder), or nothing (None) for the built-in corpus")
READ_BYTES = 1 << 22  # one read() of a text file: 4 MiB

_FILE_KINDS = ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def check_data_path(path: Path) -> os.stat_result:
    """`path`'s stat if it is a regular file or a folder; otherwise a one-line error."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"data path {str(path)!r} does not exist; pass {ACCEPTED}"
                                ) from None
    except OSError as error:  # permission denied, a symlink loop, a name too long
        raise OSError(error.errno, f"cannot read data path {str(path)!r} "
                      f"({error.strerror or error}); pass {ACCEPTED}") from None
    if stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode):
        return info
    kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "special file")
    raise ValueError(f"data path {str(path)!r} is a {kind}, not a regular file or folder; "
                     f"pass {ACCEPTED}")


def builtin_documents() -> list[str]:
    """Python's own help topics (`pydoc_data.topics`, ~465 KB): ships with Python, no download."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def text_files(path: Path) -> list[Path]:
    """The .txt files of a folder in the order they are joined, or `[path]` for a file.

    Sorted as `Path` objects (by path components). Hidden files and folders are skipped:
    Jupyter keeps `.ipynb_checkpoints/*-checkpoint.txt` copies of edited files, which would
    otherwise be trained on twice. Symlinked folders are followed once (a loop ends there),
    and only regular files count: a FIFO named `x.txt` would block the read forever.
    """
    if check_data_path(path) and not path.is_dir():
        return [path]
    files, seen = [], set()
    for folder, subfolders, names in os.walk(path, followlinks=True):
        identity = os.stat(folder)
        if (identity.st_dev, identity.st_ino) in seen:
            subfolders[:] = []
            continue
        seen.add((identity.st_dev, identity.st_ino))
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in names:
            file = Path(folder) / name
            if name.endswith(".txt") and not name.startswith(".") and _is_regular(file):
                files.append(file)
    if not files:
        raise FileNotFoundError(f"folder {str(path)!r} has no .txt files; put UTF-8 .txt files "
                                "in it or pass a single file")
    return sorted(files)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:  # a dangling symlink
        return False


def file_stats(files: list[Path]) -> list[list]:
    """(path, size, mtime_ns) of each file: what says "unchanged" without reading the bytes."""
    stats = []
    for file in files:
        info = file.stat()
        stats.append([str(file), info.st_size, info.st_mtime_ns])
    return stats


def read_blocks(path: Path, block_bytes: int = READ_BYTES) -> Iterator[bytes]:
    """The raw bytes of a file, `block_bytes` at a time."""
    with open(path, "rb") as handle:
        while block := handle.read(block_bytes):
            yield block


def load_text(source: str | Path | None = None) -> str:
    """The corpus as one string: a UTF-8 file, a folder of `.txt` files, or the built-in corpus.

    A folder's `.txt` files (see `text_files`) are joined with `<|endoftext|>`, skipping
    empty ones. `None` gives the built-in corpus (`builtin_documents`). This holds the whole
    text in memory; `tokenize_corpus` streams instead, with the same result.
    """
    if source is None:
        return ENDOFTEXT.join(builtin_documents())
    path = Path(source).expanduser()
    files = text_files(path)
    documents = [_read_utf8(file) for file in files]
    if path.is_dir():
        if not any(doc.strip() for doc in documents):
            raise ValueError(empty_folder_message(path, len(files)))
        return ENDOFTEXT.join(doc for doc in documents if doc.strip())
    if not documents[0].strip():
        raise ValueError(empty_file_message(path))
    return documents[0]


def empty_file_message(path: Path) -> str:
    return (f"data file {str(path)!r} is empty ({path.stat().st_size} bytes); "
            "add some text to train on")


def empty_folder_message(path: Path, count: int) -> str:
    return f"all {count} .txt files in {str(path)!r} are empty; add some text to train on"


def not_utf8_message(name: str, reason: str, position: int) -> str:
    return (f"{name!r} is not UTF-8 text ({reason} at byte {position}); convert it to UTF-8 "
            "(e.g. `iconv -t UTF-8`) or remove it from the data folder")


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(not_utf8_message(str(path), error.reason, error.start)) from error
