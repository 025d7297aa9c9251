"""Put GPT-2's BPE ranks into tiktoken's cache so `get_tokenizer("gpt2")` works offline.

tiktoken fetches `r50k_base.tiktoken` (GPT-2's exact vocabulary) from an OpenAI blob store on
first use. That host is often unreachable (CI, sandboxes) while PyPI is not, and the same
file ships inside the `openai-whisper` source distribution as `whisper/assets/gpt2.tiktoken`.
This script takes it from there (or, failing that, from tiktoken's own URL), checks the
sha256 that tiktoken pins, and stores it under the name tiktoken's cache looks for
(the sha1 of the URL). Idempotent: a verified file already in place is left alone.

    python scripts/prepare_tokenizer.py [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "tiktoken"

# Pinned by tiktoken_ext/openai_public.py (r50k_base); tiktoken names cache files by sha1(url).
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
WHISPER_SDIST = "openai-whisper==20250625"
WHISPER_MEMBER_SUFFIX = "/whisper/assets/gpt2.tiktoken"


class PrepareError(RuntimeError):
    pass


def cache_file(cache_dir: Path) -> Path:
    return cache_dir / hashlib.sha1(R50K_URL.encode()).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_prepared(cache_dir: Path) -> bool:
    path = cache_file(cache_dir)
    return path.is_file() and sha256(path.read_bytes()) == R50K_SHA256


def fetch_from_pypi() -> bytes:
    """Download the openai-whisper sdist with pip (no install) and read the asset out of it."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--no-binary", ":all:", "--dest", tmp, WHISPER_SDIST]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise PrepareError(f"`{' '.join(command)}` failed:\n{result.stderr.strip()[-2000:]}")
        archives = list(Path(tmp).glob("*.tar.gz"))
        if not archives:
            raise PrepareError(f"pip download produced no .tar.gz in {tmp}")
        with tarfile.open(archives[0]) as archive:
            for member in archive.getmembers():
                if member.name.endswith(WHISPER_MEMBER_SUFFIX):
                    return archive.extractfile(member).read()
        raise PrepareError(f"{archives[0].name} has no *{WHISPER_MEMBER_SUFFIX}")


def fetch_from_openai(timeout: float = 20.0) -> bytes:
    with urllib.request.urlopen(R50K_URL, timeout=timeout) as response:
        return response.read()


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def prepare(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    """Ensure the verified r50k_base ranks are in `cache_dir`; return the file's path."""
    target = cache_file(cache_dir)
    if is_prepared(cache_dir):
        return target
    failures = []
    for source, fetch in (("PyPI (openai-whisper sdist)", fetch_from_pypi),
                          (R50K_URL, fetch_from_openai)):
        try:
            data = fetch()
        except Exception as error:  # any network/pip failure: try the next source
            failures.append(f"- {source}: {type(error).__name__}: {error}")
            continue
        if sha256(data) != R50K_SHA256:
            failures.append(f"- {source}: sha256 {sha256(data)} != expected {R50K_SHA256} "
                            "(file changed or corrupted; not installed)")
            continue
        write_atomically(target, data)
        return target
    raise PrepareError(
        "could not obtain GPT-2's BPE ranks (r50k_base.tiktoken):\n" + "\n".join(failures)
        + "\nFix: check network access to PyPI, or copy a verified r50k_base.tiktoken to "
        f"{target}, or use the byte-level tokenizer (get_tokenizer('byte'))."
    )


def check_encoding(cache_dir: Path) -> list[int]:
    """Load r50k_base through tiktoken from this cache and encode a known string."""
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    try:
        import tiktoken
    except ImportError as error:
        raise PrepareError("tiktoken is not installed: run `make install` "
                           "(or `pip install -r requirements.txt`)") from error

    ids = tiktoken.get_encoding("r50k_base").encode("Hello world")
    if ids != [15496, 995]:
        raise PrepareError(f"tiktoken r50k_base encoded 'Hello world' as {ids}, "
                           "expected GPT-2's [15496, 995]")
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                        help=f"tiktoken cache folder (default: {DEFAULT_CACHE_DIR})")
    args = parser.parse_args(argv)
    already = is_prepared(args.cache_dir)
    try:
        path = prepare(args.cache_dir)
        check_encoding(args.cache_dir)
    except PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"tokenizer cache {'already ' if already else ''}ready: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
