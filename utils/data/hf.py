"""Hugging Face `datasets` as a text source (optional: `datasets` is imported only here).

    hf:roneneldan/TinyStories                          # a hub dataset, split "train"
    hf:wikitext?config=wikitext-2-raw-v1&split=test    # with a configuration and a split
    path/to/saved                                      # a folder written by save_to_disk
    path/to/saved?split=validation&column=story        # its split, its text column

The text column is the one named `column`, else a string column called "text", else the only
string column. Rows are streamed from the dataset's Arrow files in batches (memory-mapped by
`datasets`), joined with `<|endoftext|>` (blank rows skipped) and prepared like any text.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from utils.data import sources

PREFIX = "hf:"
OPTIONS = ("config", "split", "column")
ROWS_PER_BATCH = 1024


def _split_options(source: str) -> tuple[str, dict[str, str]]:
    base, _, query = source.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in {source!r}; a Hugging Face source "
                         f"takes ?config=NAME&split=NAME&column=NAME")
    return base, options


def is_saved_dataset(folder: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return folder.is_dir() and ((folder / "dataset_dict.json").is_file()
                                or (folder / "state.json").is_file())


def is_hf_source(source: str | Path) -> bool:
    text = str(source)
    if text.startswith(PREFIX):
        return True
    if isinstance(source, str) and "?" in text and not Path(text).expanduser().exists():
        return is_saved_dataset(Path(text.partition("?")[0]).expanduser())
    return is_saved_dataset(Path(text).expanduser())


class DatasetsNotInstalledError(ImportError, ValueError):
    """`datasets` is missing: an ImportError, and a ValueError so the CLI and the notebook
    print it as a one-line user error with its fix."""


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as error:
        raise DatasetsNotInstalledError("a Hugging Face dataset as data needs the `datasets` "
                                        "package: pip install datasets") from error
    return datasets


def open_dataset(source: str | Path) -> tuple[Any, dict[str, str]]:
    """(datasets.Dataset, options) for an `hf:` name or a `save_to_disk` folder."""
    base, options = _split_options(str(source))
    datasets = _import_datasets()
    if base.startswith(PREFIX):
        name = base[len(PREFIX):]
        if not name:
            raise ValueError("hf: needs a dataset name, e.g. hf:roneneldan/TinyStories")
        split = options.get("split") or "train"
        try:
            dataset = datasets.load_dataset(name, options.get("config") or None, split=split)
        except Exception as error:  # hub errors, no network, unknown split: all user-fixable
            raise ValueError(f"cannot load Hugging Face dataset {name!r} (split {split!r}): "
                             f"{type(error).__name__}: {str(error).splitlines()[0]}; check the "
                             "name, ?config= and ?split= (or save it with save_to_disk and pass "
                             "the folder)") from error
        return dataset, options
    folder = Path(base).expanduser()
    sources.check_data_path(folder)
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as error:  # a damaged or foreign folder
        raise ValueError(f"{str(folder)!r} is not a readable save_to_disk dataset "
                         f"({type(error).__name__}: {error}); save it again with "
                         "dataset.save_to_disk(folder)") from error
    if isinstance(loaded, datasets.DatasetDict):
        split = options.get("split") or "train"
        if split not in loaded:
            raise ValueError(f"dataset {str(folder)!r} has splits {sorted(loaded)}, not "
                             f"{split!r}; add ?split=NAME to the path")
        loaded = loaded[split]
    return loaded, options


def text_column(dataset: Any, column: str | None) -> str:
    """The column to train on: `column` if given, else "text", else the only string column."""
    strings = [name for name, feature in dataset.features.items()
               if getattr(feature, "dtype", None) in ("string", "large_string")]
    if column is not None:
        if column not in strings:
            raise ValueError(f"column {column!r} is not a text column of this dataset; its "
                             f"text columns are {strings} (all columns: "
                             f"{list(dataset.features)})")
        return column
    if "text" in strings:
        return "text"
    if len(strings) == 1:
        return strings[0]
    raise ValueError(f"cannot tell which column holds the text: string columns {strings} "
                     f"(all columns: {list(dataset.features)}); add ?column=NAME to the data "
                     "path (or pass text_column=)")


def open_text_dataset(source: str | Path, column: str | None = None
                      ) -> tuple[Any, str, str, list]:
    """(dataset, text column, label for reports, identity for the cache index)."""
    dataset, options = open_dataset(source)
    chosen = text_column(dataset, column or options.get("column"))
    base = str(source).partition("?")[0]
    label = f"{base}?split={dataset.split or options.get('split') or 'train'}&column={chosen}"
    # datasets' fingerprint changes with every transform, but a save_to_disk folder keeps
    # the one in its state.json whatever happens to its Arrow files: their names, sizes and
    # modification times are part of the identity too.
    identity = [getattr(dataset, "_fingerprint", None), chosen, dataset.num_rows,
                _data_file_stats(dataset)]
    return dataset, chosen, label, identity if identity[0] and identity[3] else None


def _data_file_stats(dataset: Any) -> list | None:
    """[name, size, mtime_ns] of each Arrow file the dataset reads; None when it has none
    (built in memory) or one cannot be looked at: then only reading can tell."""
    names = [entry.get("filename") for entry in getattr(dataset, "cache_files", None) or []
             if isinstance(entry, dict)]
    if not names or not all(isinstance(name, str) for name in names):
        return None
    try:
        return sources.file_stats([Path(name) for name in names])
    except OSError:
        return None


def _rows(dataset: Any, column: str) -> Iterator[tuple[str, list[bytes]]]:
    for start in range(0, dataset.num_rows, ROWS_PER_BATCH):
        texts = dataset[start:start + ROWS_PER_BATCH][column]
        for offset, text in enumerate(texts):
            yield f"row {start + offset}", [(text or "").encode("utf-8")]


def text_rows(dataset: Any, column: str) -> Iterator[tuple[str, list[bytes]]]:
    """(name, [utf-8 bytes]) per row of `column`, for `prepare.TextStream`."""
    return _rows(dataset.select_columns([column]), column)
