"""Reading checkpoint files safely: what kind of file is it, and what does it hold?

The bottom layer, beside `fileio` (it imports only `checkpoint_errors`): the checkpoint
engine, the token files and the weights formats all read through it. Everything here
answers from the bytes, never from the file name, and never runs code from a file:

- `sniff_file(path)`: a torch zip archive, a legacy torch pickle, a safetensors file, or
  something else (an image, text, JSON, a truncated copy), which raises an error naming
  the kind and the fix before anything is unpickled.
- `read_checkpoint(path)`: the object the file holds, loaded with `weights_only=True`
  (a pickle that would run code raises `UnsafeCheckpointError`), tensors memory-mapped,
  and bounded (`check_bounded`: a few KB of pickle cannot stand for 10^9 elements).
- `read_small_file` / `read_json_file`: sidecars and config files are read only when they
  are regular files below a size cap, so a FIFO or a link to /dev/zero cannot hang or
  exhaust memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import stat
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from utils.checkpoint_errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    EmptyCheckpointError,
    NotACheckpointError,
    TruncatedCheckpointError,
    UnsafeCheckpointError,
)

# torch.save's legacy (pre-1.6) format starts with this pickled magic number.
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")

# Leading bytes of file kinds people pass by mistake, with the fix for each.
FOREIGN_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"\x89PNG", "a PNG image", "pass the checkpoint (.pt) file, not a picture"),
    (b"\xff\xd8\xff", "a JPEG image", "pass the checkpoint (.pt) file, not a picture"),
    (b"GIF8", "a GIF image", "pass the checkpoint (.pt) file, not a picture"),
    (b"%PDF", "a PDF document", "pass the checkpoint (.pt) file"),
    (b"\x1f\x8b", "gzip-compressed data",
     "decompress it first (`gunzip FILE` or `tar xzf FILE`) and pass the .pt inside"),
    (b"BZh", "bzip2-compressed data", "decompress it first (`bunzip2 FILE`)"),
    (b"\xfd7zXZ", "xz-compressed data", "decompress it first (`unxz FILE`)"),
    (b"7z\xbc\xaf", "a 7-Zip archive", "extract it first and pass the .pt inside"),
    (b"\x93NUMPY", "a NumPy .npy array", "save the model with torch.save(...) instead"),
    (b"\x89HDF", "an HDF5 file (Keras/TensorFlow?)",
     "convert it to a PyTorch checkpoint; for OpenAI's TF release use load_tf_checkpoint"),
    (b"\x7fELF", "a program (ELF executable)", "pass the checkpoint (.pt) file"),
)


# Sidecars and config files are a few KB; anything far larger is not one of ours.
SMALL_FILE_LIMIT = 1 << 20


# ---------------------------------------------------------------------------------------
# Small files: sidecars and config.json
# ---------------------------------------------------------------------------------------

def read_regular_file(path: str | Path, limit: int | None = None, fix: str = "") -> bytes:
    """The bytes of `path` when it is a regular file (of at most `limit` bytes); otherwise
    `NotACheckpointError` (with `fix` appended), so that a FIFO or a link to /dev/zero put
    where a small file belongs is refused, never waited on or read forever.

    Opened with O_NONBLOCK so that a FIFO cannot block, and checked with fstat on the open
    descriptor (no race with a swap after a stat). A missing file raises its OSError.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        fits = limit is None or info.st_size <= limit
        if stat.S_ISREG(info.st_mode) and fits:
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read() if limit is None else handle.read(limit + 1)
            if limit is None or len(data) <= limit:  # it did not grow after the fstat
                return data
    finally:
        os.close(fd)
    size_rule = "" if limit is None else f" of at most {limit:,} bytes"
    raise NotACheckpointError(
        f"{path} is not a regular file{size_rule} (a FIFO, device or something else put "
        f"there); it was not read.{' Fix: ' + fix if fix else ''}")


def read_small_file(path: str | Path, limit: int = SMALL_FILE_LIMIT) -> bytes | None:
    """`read_regular_file`'s bytes, or None for a missing, odd or too large file (sidecars
    and config files are optional: their absence is not an error)."""
    try:
        return read_regular_file(path, limit)
    except (OSError, NotACheckpointError):
        return None


def read_json_file(path: str | Path, limit: int = SMALL_FILE_LIMIT) -> Any:
    """The JSON value in a small regular file, or None when missing, odd or not JSON."""
    data = read_small_file(path, limit)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def read_hf_config_beside(path: Path) -> dict | None:
    """A Hugging Face GPT-2 config.json in the same folder (save_pretrained writes one)."""
    data = read_json_file(path.parent / "config.json")
    return data if isinstance(data, dict) and data.get("model_type") == "gpt2" else None


# ---------------------------------------------------------------------------------------
# What kind of file is it?
# ---------------------------------------------------------------------------------------

def _nearby_checkpoints(folder: Path, limit: int = 5) -> list[str]:
    if not folder.is_dir():
        return []
    names = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    return names[:limit]


def sniff_file(path: Path) -> str:
    """'zip', 'legacy', 'pickle' or 'safetensors'; anything else raises a `CheckpointError`."""
    if not path.exists():
        nearby = _nearby_checkpoints(path.parent)
        hint = (f"checkpoints in {path.parent}/: {nearby}" if nearby
                else f"{path.parent}/ holds no checkpoint files")
        raise CheckpointNotFoundError(
            f"No checkpoint file at {path}. Fix: check the path and file name ({hint}); "
            "train first to create checkpoints (Trainer.fit or python -m utils train).")
    if path.is_dir():
        inside = _nearby_checkpoints(path)
        raise NotACheckpointError(
            f"{path} is a folder, not a checkpoint file. Fix: pass one file inside it"
            f"{' (for example ' + ', '.join(inside) + ')' if inside else ''}, or use "
            "select_checkpoint(checkpoint_dir=...) to pick the best checkpoint of a folder.")
    status = path.stat()
    if not stat.S_ISREG(status.st_mode):
        raise NotACheckpointError(
            f"{path} is not a regular file (a FIFO, socket or device): reading it could "
            "block or never end. Fix: pass the checkpoint file itself.")
    size = status.st_size
    if size == 0:
        raise EmptyCheckpointError(
            f"{path} is empty (0 bytes): the save or copy that made it never wrote any data. "
            "Fix: delete it and use another checkpoint, or copy the file again.")
    with open(path, "rb") as handle:
        head = handle.read(4096)

    if head.startswith(b"PK\x03\x04"):
        return _sniff_zip(path, size)
    if head.startswith(LEGACY_TORCH_MAGIC):
        return "legacy"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        safetensors_header(path)
        return "safetensors"
    for magic, kind, fix in FOREIGN_MAGIC:
        if head.startswith(magic):
            raise NotACheckpointError(f"{path} is {kind}, not a checkpoint. Fix: {fix}.")
    raise NotACheckpointError(_describe_foreign_file(path, head, size))


# A safetensors header is a flat JSON object of small entries; far larger is not one.
SAFETENSORS_HEADER_LIMIT = 100 << 20


def safetensors_header(path: str | Path) -> tuple[int, dict[str, Any]]:
    """`(data start, {name: {"dtype", "shape", "data_offsets"}})` of a safetensors file,
    checked before anything is mapped: the header must fit in the file and be flat JSON
    (a deeply nested one is refused, not a RecursionError), and its tensors' byte ranges
    sorted, non-overlapping, inside the file and as long as their shapes say."""
    path = Path(path)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        header_length = int.from_bytes(handle.read(8), "little")
        if size < 9 or header_length > SAFETENSORS_HEADER_LIMIT:
            raise NotACheckpointError(
                f"{path} is not a safetensors file: its first 8 bytes give no plausible "
                f"header length ({header_length:,}). Fix: pass the model's .safetensors, "
                ".bin or .pt file, or download it again.")
        if header_length > size - 8:
            raise TruncatedCheckpointError(
                f"{path} is a truncated safetensors file: its header claims {header_length:,} "
                f"bytes, the file has {size:,}. Fix: copy or download it again completely.")
        raw = handle.read(header_length)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise CorruptCheckpointError(
            f"{path} looks like a safetensors file but its header cannot be read (not valid JSON, "
            f"{type(error).__name__}). Fix: copy or download it again.") from None
    _check_ranges(path, _tensor_ranges(path, header), size - 8 - header_length)
    return 8 + header_length, {k: v for k, v in header.items() if k != "__metadata__"}


def _check_ranges(path: Path, ranges: list[tuple[str, int, int]], data_size: int) -> None:
    end = 0
    for name, start, stop in sorted(ranges, key=lambda item: item[1]):
        if start < end:
            raise CorruptCheckpointError(
                f"{path}: tensor {name!r} overlaps the previous tensor's bytes in the "
                "safetensors data. Fix: the file was not written by safetensors; get it again.")
        end = stop
    if end > data_size:
        raise TruncatedCheckpointError(
            f"{path} is a truncated safetensors file: it needs {end:,} bytes of tensor data, "
            f"the file has {data_size:,}. Fix: copy or download it again completely.")


_SAFETENSORS_ITEM_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4,
                           "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
                           "U16": 2, "U32": 4, "U64": 8}


def _tensor_ranges(path: Path, header: Any) -> list[tuple[str, int, int]]:
    """(name, start, stop) per tensor; each entry checked for types and length."""
    def bad(name: str, why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{path}: safetensors entry {name!r} {why}. Fix: the file is damaged or was not "
            "written by safetensors; get it again.")

    if not isinstance(header, dict):
        raise bad("(header)", "is not a JSON object")
    ranges = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise bad(name, "is not an object")
        offsets, shape, dtype = entry.get("data_offsets"), entry.get("shape"), entry.get("dtype")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(v) is int and v >= 0 for v in offsets) and offsets[0] <= offsets[1]):
            raise bad(name, f"has data_offsets {offsets!r}, not [start, stop] with 0 <= start <= stop")
        if not (isinstance(shape, list) and all(type(v) is int and v >= 0 for v in shape)):
            raise bad(name, f"has shape {shape!r}")
        item = _SAFETENSORS_ITEM_SIZES.get(dtype)
        if item is not None:
            count = 1
            for dim in shape:
                count *= dim
            if count * item != offsets[1] - offsets[0]:
                raise bad(name, f"holds {offsets[1] - offsets[0]:,} bytes but its shape "
                                f"{shape} of {dtype} needs {count * item:,}")
        ranges.append((name, offsets[0], offsets[1]))
    return ranges


def _sniff_zip(path: Path, size: int) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as error:
        raise TruncatedCheckpointError(
            f"{path} starts like a PyTorch checkpoint (a zip archive) but its end is "
            f"missing ({size:,} bytes; {error}). The copy, download or save was "
            "interrupted. Fix: copy it again, or choose another checkpoint "
            "(list_checkpoints skips such files).") from error
    names = [entry.filename for entry in entries]
    compressed = [entry.filename for entry in entries if entry.compress_type != zipfile.ZIP_STORED]
    if compressed:
        # torch.save stores entries uncompressed, which is what lets them be memory-mapped;
        # inflating a compressed one could turn a few MB into gigabytes (a zip bomb).
        raise NotACheckpointError(
            f"{path} is a zip archive with compressed entries ({compressed[0]}, ...), which "
            "torch.save never writes; it was not opened. Fix: if you zipped a checkpoint, "
            "unzip it and pass the .pt file inside.")
    if not any(name.endswith("data.pkl") for name in names):
        raise NotACheckpointError(
            f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl inside; "
            f"it holds {names[:3]}{'...' if len(names) > 3 else ''}). Fix: if it is a "
            "zipped folder or a NumPy .npz, extract it and pass the .pt file inside.")
    return "zip"


def _describe_foreign_file(path: Path, head: bytes, size: int) -> str:
    """The message for a file that is not binary checkpoint data at all."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        return (f"{path} is not a checkpoint: its first bytes {head[:8]!r} match no format "
                "torch.save or safetensors writes (random or damaged data). Fix: use "
                "another checkpoint, or copy this one again.")
    stripped = text.lstrip()
    if stripped.startswith("version https://git-lfs"):
        return (f"{path} is a Git LFS pointer (a small text file), not the checkpoint "
                "itself. Fix: run `git lfs pull` to fetch the real file.")
    if stripped[:15].lower().startswith(("<!doctype html", "<html")):
        return (f"{path} is an HTML page (a failed download or a login/virus-scan page), "
                "not a checkpoint. Fix: download the file again from its real link.")
    if stripped[:1] in "{[" and size < 10_000_000:
        try:
            data = json.loads(path.read_text())
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            data = None
        if data is not None:
            if isinstance(data, dict) and {"epoch", "val_loss"} & set(data):
                real = path.with_suffix("") if path.suffix == ".json" else None
                return (f"{path} is a checkpoint's JSON sidecar (metadata only, no weights). "
                        f"Fix: pass the checkpoint itself{f' ({real.name})' if real else ''}.")
            return (f"{path} is a JSON file, not a checkpoint. Fix: pass the .pt checkpoint "
                    "file; a Hugging Face config.json belongs next to model.safetensors.")
    return (f"{path} is a text file ({size:,} bytes, starting {stripped[:40]!r}), not a "
            "checkpoint. Fix: pass the .pt file that training wrote.")



# ---------------------------------------------------------------------------------------
# What does it hold? Bytes -> Python objects, without running code
# ---------------------------------------------------------------------------------------

def read_checkpoint(path: str | Path, trust_checkpoint: bool = False,
                    mmap: bool = True) -> Any:
    """The object a checkpoint file holds, read safely onto the CPU.

    The file's kind comes from its first bytes (`sniff_file`); torch zip archives are
    memory-mapped (unless `mmap=False`), so tensors that are never used are never read
    from disk.
    """
    path = Path(path)
    kind = sniff_file(path)
    if kind == "safetensors":
        return _read_safetensors(path)  # a flat name -> tensor map by construction
    if trust_checkpoint:
        warnings.warn(
            f"trust_checkpoint=True: loading {path} with weights_only=False, which runs any "
            "code its pickle contains. Only do this for files you made or fully trust.",
            stacklevel=3)
    if kind == "pickle":
        if not trust_checkpoint:
            raise UnsafeCheckpointError(
                f"{path} is a plain Python pickle (written by pickle.dump, not torch.save); "
                "a pickle can run arbitrary code when loaded, so it was not opened. Fix: if "
                "you made this file or trust its source, pass trust_checkpoint=True "
                "(--trust-checkpoint on the command line), then re-save it with torch.save.")
        with open(path, "rb") as handle:
            return check_bounded(path, _translate_errors(path, lambda: pickle.load(handle)))

    def load(readable: Path, mmap: bool) -> Any:
        return torch.load(readable, map_location="cpu", weights_only=not trust_checkpoint,
                          mmap=mmap)

    with _name_torch_will_not_redirect(path) as readable:
        mmap = mmap and kind == "zip"  # torch's legacy format cannot be memory-mapped
        try:
            loaded = _translate_errors(path, lambda: load(readable, mmap))
        except CorruptCheckpointError:
            if not mmap:
                raise
            # Some network file systems (FUSE mounts) cannot mmap: read once more normally;
            # a really damaged file fails again, with the error of the plain read.
            loaded = _translate_errors(path, lambda: load(readable, False))
    return check_bounded(path, loaded)


# What a checkpoint's plain-data part may hold: our largest (a long run's metrics history,
# a few hundred tensors' optimizer state) is far below both.
MAX_ELEMENTS = 5_000_000
MAX_DEPTH = 32
_CONTAINERS = (list, tuple, dict, set, frozenset)
_MUTABLE = (list, dict, set)


def check_bounded(path: str | Path, value: Any, max_elements: int = MAX_ELEMENTS,
                  max_depth: int = MAX_DEPTH, what: str = "a training checkpoint",
                  fix: str = "use another checkpoint") -> Any:
    """`value` itself when its lists, dicts and tuples form a plain bounded tree; otherwise
    `CorruptCheckpointError`, before anything walks it.

    A pickle's memo lets a few KB hold one list referenced from many places, nested, which
    expands to 10^9 elements as soon as anything copies, prints or converts it. Refused: a
    list, dict or set referenced twice (torch.save of real training state never does that),
    a container inside itself, nesting deeper than `max_depth`, more than `max_elements`
    elements counted with repeats (shared tuples). Tensors are leaves, never read.
    `what` and `fix` word the message for other files (nanoGPT's meta.pkl).
    """
    expanded: dict[int, int] = {}  # id -> elements counted with repeats, once finished
    seen: set[int] = set()
    # (container, depth, its container children once visited, how many children it has)
    stack: list[tuple[Any, int, list | None, int]] = [(value, 1, None, 0)]

    def refuse(why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"{path} holds plain data that {why}; {what} never does, so it was refused "
            f"before anything expanded it (a crafted or damaged file). Fix: {fix}.")

    while stack:
        node, depth, inner, count = stack.pop()
        if inner is not None:  # its container children are counted: count it
            total = 1 + count - len(inner) + sum(expanded[id(child)] for child in inner)
            if total > max_elements:
                raise refuse(f"expands to more than {max_elements:,} elements through shared "
                             "references")
            expanded[id(node)] = total
            continue
        if not isinstance(node, _CONTAINERS):
            continue
        key = id(node)
        if key in seen:
            if key not in expanded:
                raise refuse("contains itself (a reference cycle)")
            if isinstance(node, _MUTABLE):
                raise refuse(f"uses one {type(node).__name__} in several places (shared "
                             "references)")
            continue  # a shared tuple: counted once per use by its parents
        seen.add(key)
        if depth > max_depth:
            raise refuse(f"nests deeper than {max_depth} levels")
        children = _children(node)
        containers = [child for child in children if isinstance(child, _CONTAINERS)]
        stack.append((node, depth, containers, len(children)))
        stack.extend((child, depth + 1, None, 0) for child in containers)
    return value


def _children(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [*node.keys(), *node.values()]
    if isinstance(node, _CONTAINERS):
        return list(node)
    return []


@contextlib.contextmanager
def _name_torch_will_not_redirect(path: Path) -> Iterator[Path]:
    """`torch.load` hands any `*.safetensors` path to safetensors, by name. A torch file
    misnamed so is read through a temporary `.pt` symlink (the memory map outlives it)."""
    if not path.name.endswith(".safetensors"):
        yield path
        return
    with tempfile.TemporaryDirectory() as folder:
        link = Path(folder) / "checkpoint.pt"
        link.symlink_to(path.resolve())
        yield link


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CorruptCheckpointError(
            f"{path} looks like a safetensors file but cannot be read ({error}). Fix: copy "
            "or download it again.") from error


_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _translate_errors(path: Path, load: Any) -> Any:
    """Run `load()`, turning torch's and pickle's exceptions into our errors."""
    try:
        return load()
    except pickle.UnpicklingError as error:
        text = str(error)
        found = _UNSAFE_GLOBAL.search(text)
        if found or "Weights only load failed" in text:
            what = f"a Python object of type {found.group(1)}" if found else "pickle instructions"
            raise UnsafeCheckpointError(
                f"{path} contains {what} that could run code when loaded, so it was refused "
                "(weights_only=True) and nothing in it ran. Fix: if you made this file or "
                "trust its source, pass trust_checkpoint=True (--trust-checkpoint), then "
                "re-save it with plain dicts and tensors (ModelConfig.to_dict(), not the "
                "dataclass), which loads safely.") from None
        raise CorruptCheckpointError(
            f"{path} is damaged: its pickle cannot be read ({text[:200]}). Fix: use another "
            "checkpoint or copy this one again.") from error
    except (EOFError, RuntimeError, ValueError, OSError) as error:
        text = str(error)
        if isinstance(error, EOFError) or "central directory" in text or "truncated" in text:
            raise TruncatedCheckpointError(
                f"{path} ends early: it was cut off while being written, copied or "
                f"downloaded ({text[:160] or type(error).__name__}). Fix: copy it again or "
                "choose another checkpoint.") from error
        raise CorruptCheckpointError(
            f"{path} could not be read ({type(error).__name__}: {text[:200]}). Fix: use "
            "another checkpoint or copy this one again.") from error
    except Exception as error:  # a damaged pickle can raise nearly anything
        raise CorruptCheckpointError(
            f"{path} is damaged ({type(error).__name__}: {str(error)[:200]}). Fix: use "
            "another checkpoint or copy this one again.") from error
