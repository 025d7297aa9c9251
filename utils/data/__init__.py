"""Corpus -> token ids -> batches.

    data = load_data("my_corpus/")           # any input kind; see utils/data/load.py
    train, val = data.train, data.val        # uint16 memmaps (or views of them)
    loader = BatchLoader(train, batch_size=8, context_length=256, seed=0)
    x, y = loader.get_batch(step)            # int64 [8, 256]; y is x shifted by one

The pieces, one module each:
- `sources`: text inputs (the built-in corpus, a UTF-8 file, a folder of .txt files) and the
  check that a data path is a regular file or folder.
- `prepare`: `tokenize_corpus`, streaming text through worker processes into the uint16 cache.
- `hf`: Hugging Face datasets as text (`datasets` imported only there).
- `token_files`: nanoGPT `train.bin`/`val.bin` and llm.c shards, mapped without re-tokenising.
- `batches`: `train_val_split` (by end, block or document, never a copy) and `BatchLoader`.

Documents are joined with `<|endoftext|>`, which is tokenised as GPT-2's end-of-text token
(a literal `<|endoftext|>` inside a file counts as a document boundary too, as in GPT-2's
own training data).
"""

from utils.data.batches import (
    SPLITS,
    BatchLoader,
    TokenView,
    document_bounds,
    hash_tokens,
    train_val_split,
)
from utils.data.load import (
    KINDS,
    TOKEN_FILE_KINDS,
    LoadedData,
    detect_kind,
    load_data,
    token_statistics,
)
from utils.data.prepare import (
    CACHE_FORMAT_VERSION,
    DEFAULT_CACHE_DIR,
    PIECE_BYTES,
    UINT16_MAX_TOKEN,
    TokenizedCorpus,
    default_cache_dir,
    split_into_chunks,
    tokenize_corpus,
)
from utils.data.sources import BUILTIN_SOURCE, check_data_path, load_text

__all__ = [
    "BUILTIN_SOURCE", "CACHE_FORMAT_VERSION", "DEFAULT_CACHE_DIR", "KINDS",
    "PIECE_BYTES", "SPLITS", "TOKEN_FILE_KINDS", "UINT16_MAX_TOKEN", "BatchLoader", "LoadedData", "TokenView",
    "TokenizedCorpus", "check_data_path", "default_cache_dir", "detect_kind", "document_bounds",
    "hash_tokens", "load_data",
    "load_text", "split_into_chunks", "token_statistics", "tokenize_corpus", "train_val_split",
]
