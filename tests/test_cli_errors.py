"""Bad input to `python -m utils`, run as a real process: one line `error: ...`, exit code 2.

In-process `main()` calls cannot see what a user sees: under `python -m utils` the package's
`__main__` runs as a second module, so an exception class defined there existed twice and
user errors escaped as tracebacks. Every case here starts `sys.executable -m utils ...`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from tests._cli_helpers import LAUNCHERS, assert_one_error_line, run_cli
from utils.cli.convert import pretrained_checkpoint
from utils.config import ModelConfig
from utils.model import GPTModel
from utils.training.engine.checkpoint import save_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
TF_FIXTURE = Path(__file__).parent / "fixtures" / "openai_tf_tiny"
TINY = ModelConfig(vocab_size=257, context_length=16, embedding_dimension=16,
                   number_of_heads=2, number_of_layers=1, dropout_rate=0.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The inputs the cases refer to as {name}: a corpus, weights without training state
    (what `convert` writes), a bare state dict, a non-empty folder, a plain file."""
    root = tmp_path_factory.mktemp("cli_errors")
    torch.manual_seed(0)
    model = GPTModel(TINY)
    (root / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 50)
    save_checkpoint(pretrained_checkpoint(model, "gpt2", "byte"), root / "converted.pt")
    torch.save(model.state_dict(), root / "state_dict.pt")
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("someone's file")
    (root / "model.bin").write_bytes(b"an earlier export")
    (root / "empty").mkdir()
    found = {path.name.split(".")[0]: path for path in root.iterdir()}
    (root / "loop_a").symlink_to(root / "loop_b")  # a symbolic link loop
    (root / "loop_b").symlink_to(root / "loop_a")
    os.mkfifo(root / "fifo")  # opening it to write would wait for a reader forever
    # A twin of /dev/full (the same device): the real one is shared with every process here
    os.mknod(root / "dev-full", stat.S_IFCHR | 0o666, os.makedev(1, 7))
    from utils.__main__ import main

    trained = tmp_path_factory.mktemp("trained")  # a folder with one run, for recover
    assert main([arg.format(corpus=root / "corpus.txt", root=root) for arg in TRAIN[:-1]]
                + [str(trained)]) == 0
    return found | {"root": root, "keep": root / "full" / "keep.txt", "loop": root / "loop_a",
                    "fifo": root / "fifo", "long": root / ("a" * 300), "trained": trained,
                    "devfull": root / "dev-full"}




TOO_LONG = "longer than the file system allows"
TRAIN = ["train", "--data", "{corpus}", "--tokenizer", "byte", "--layers", "1", "--heads", "2",
         "--dim", "16", "--context", "16", "--max-steps", "1", "--no-progress",
         "--checkpoint-dir", "{root}/ck"]

# (argv with {name} placeholders for `files`, texts the error line must hold)
CASES = {
    "generate-length-0": (["generate", "--checkpoint", "{converted}", "--length", "0"],
                          ["--length must be at least 1, got 0"]),
    "generate-device": (["generate", "--checkpoint", "{converted}", "--device", "foo"],
                        ["--device 'foo' is not a device"]),
    "generate-top-p": (["generate", "--checkpoint", "{converted}", "--top-p", "5"],
                       ["--top-p must be"]),
    "generate-temperature-nan": (["generate", "--checkpoint", "{converted}", "--temperature",
                                  "nan"], ["--temperature must be a finite number"]),
    "generate-missing-checkpoint": (["generate", "--checkpoint", "{root}/nothing.pt"],
                                    ["nothing.pt"]),
    "convert-no-overwrite": (["convert", str(TF_FIXTURE), "-o", "{converted}"],
                             ["exists", "--force"]),
    "convert-not-pt": (["convert", str(TF_FIXTURE), "-o", "{root}/out.bin"], [".pt"]),
    "convert-missing-source": (["convert", "{root}/no_such_folder", "-o", "{root}/new.pt"],
                               ["no_such_folder"]),
    "export-hf-non-empty": (["export", "--checkpoint", "{converted}", "--format", "hf",
                             "-o", "{full}"], ["holds files", "--overwrite"]),
    "export-binary-into-file": (["export", "--checkpoint", "{converted}", "--format",
                                 "binary", "-o", "{model}"], ["is a file"]),
    "export-llmc-into-folder": (["export", "--checkpoint", "{converted}", "--format", "llmc",
                                 "-o", "{full}"], ["is a folder"]),
    "export-llmc-existing-file": (["export", "--checkpoint", "{converted}", "--format",
                                   "llmc", "-o", "{model}"], ["exists", "--overwrite"]),
    "export-missing-checkpoint": (["export", "--checkpoint", "{root}/nothing.pt", "--format",
                                   "hf", "-o", "{root}/hf_new"], ["nothing.pt"]),
    "load-missing": (["load", "--checkpoint", "{root}/nothing.pt"], ["nothing.pt"]),
    "load-not-a-checkpoint": (["load", "--checkpoint", "{keep}"], ["keep.txt"]),
    "load-device": (["load", "--checkpoint", "{converted}", "--device", "foo"],
                    ["--device 'foo'"]),
    "load-empty-folder": (["load", "--checkpoint-dir", "{empty}"], ["no checkpoints"]),
    "recover-missing-folder": (["recover", "--checkpoint-dir", "{root}/none"],
                               ["no checkpoints"]),
    "recover-csv-missing-folder": (["recover", "--checkpoint-dir", "{root}",
                                    "--metrics-csv", "{root}/no/such/dir/m.csv"],
                                   ["--metrics-csv", "does not exist"]),
    "train-lr-negative": ([*TRAIN, "--lr", "-1"], ["--lr must be", "got -1"]),
    "train-lr-inf": ([*TRAIN, "--lr", "inf"], ["--lr must be", "got inf"]),
    "train-grad-clip-nan": ([*TRAIN, "--grad-clip", "nan"], ["--grad-clip must be", "nan"]),
    "train-weight-decay-nan": ([*TRAIN, "--weight-decay", "nan"], ["--weight-decay must be"]),
    "train-batch-size-0": ([*TRAIN, "--batch-size", "0"], ["--batch-size must be >= 1"]),
    "train-device": ([*TRAIN, "--device", "foo"], ["--device 'foo' is not a device"]),
    "train-device-index": ([*TRAIN, "--device", "cuda:99"], ["--device cuda:99"]),
    "train-heads-divide-dim": ([*TRAIN, "--dim", "30", "--heads", "4"],
                               ["--dim (30) must be divisible by --heads (4)"]),
    "train-huge-model": ([*TRAIN, "--dim", "65536", "--layers", "1000"],
                         ["--layers 1000", "--dim 65536", "GiB"]),
    "train-huge-batch": ([*TRAIN, "--batch-size", "1000000000"],
                         ["--batch-size 1000000000", "activations"]),
    "train-checkpoint-dir-is-a-file": ([*TRAIN, "--checkpoint-dir", "{model}"],
                                       ["--checkpoint-dir", "is a file"]),
    "train-resume-converted": ([*TRAIN, "--resume", "{converted}"],
                               ["no training state", "--init-from gpt2"]),
    "train-resume-state-dict": ([*TRAIN, "--resume", "{state_dict}"],
                                ["not a training checkpoint"]),
    "train-resume-latest-empty": ([*TRAIN, "--resume", "--checkpoint-dir", "{empty}"],
                                  ["no checkpoints"]),
    # OSErrors of a user's path: one line naming the flag, the cause and the fix
    "train-checkpoint-dir-name-too-long": ([*TRAIN, "--checkpoint-dir", "{long}"],
                                           ["--checkpoint-dir", TOO_LONG, "shorter names"]),
    "train-data-name-too-long": ([*TRAIN, "--data", "{long}.txt"], ["--data", TOO_LONG]),
    "train-data-symlink-loop": ([*TRAIN, "--data", "{loop}"],
                                ["loop_a", "Too many levels of symbolic links", "pass a UTF-8"]),
    "recover-name-too-long": (["recover", "--checkpoint-dir", "{long}"],
                              ["--checkpoint-dir", TOO_LONG]),
    "recover-csv-name-too-long": (["recover", "--checkpoint-dir", "{root}", "--metrics-csv",
                                   "{long}.csv"], ["--metrics-csv", TOO_LONG]),
    "recover-csv-fifo": (["recover", "--checkpoint-dir", "{trained}", "--metrics-csv", "{fifo}"],
                         ["--metrics-csv", "fifo"]),
    "recover-csv-dev-full": (["recover", "--checkpoint-dir", "{trained}", "--metrics-csv",
                              "{devfull}"], ["--metrics-csv", "dev-full"]),
    "load-name-too-long": (["load", "--checkpoint", "{long}.pt"], ["--checkpoint", TOO_LONG]),
    "load-dir-name-too-long": (["load", "--checkpoint-dir", "{long}"],
                               ["--checkpoint-dir", TOO_LONG]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_error_line_and_exit_2(files, name):
    argv, expected = CASES[name]
    assert_one_error_line(run_cli(*[arg.format(**files) for arg in argv], timeout=120),
                          *expected)


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
@pytest.mark.parametrize("name", ["generate-length-0", "convert-no-overwrite",
                                  "export-hf-non-empty"])
def test_our_own_refusals_are_one_line_however_started(files, launcher, name):
    """These raise `UserError`, which used to exist twice under `python -m utils`."""
    argv, expected = CASES[name]
    command = [arg.format(**files) for arg in argv]
    assert_one_error_line(run_cli(*command, launcher=launcher), *expected)


def test_lr_minus_one_is_reported_as_lr_not_min_lr(files):
    line = assert_one_error_line(run_cli(*[arg.format(**files) for arg in TRAIN],
                                         "--lr", "-1"))
    assert "min" not in line


def test_refusals_leave_the_files_as_they_were(files):
    """What convert, export and train refuse to replace is untouched (train used to write
    its checkpoint over a file given as --checkpoint-dir)."""
    before = {path: path.read_bytes() for path in (files["converted"], files["model"],
                                                   files["keep"])}
    assert_one_error_line(run_cli("convert", TF_FIXTURE, "-o", files["converted"]))
    assert_one_error_line(run_cli("export", "--checkpoint", files["converted"],
                                  "--format", "hf", "-o", files["full"]))
    assert_one_error_line(run_cli(*[arg.format(**files) for arg in TRAIN],
                                  "--checkpoint-dir", files["model"]))
    assert {path: path.read_bytes() for path in before} == before
    assert sorted(p.name for p in files["full"].iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("argv, message", [
    (["train", "--max-stesp", "3"], "python -m utils: error: unrecognized arguments: --max-stesp"),
    (["recover", "--checkpoint-dri", "x"], "unrecognized arguments: --checkpoint-dri x"),
    (["train", "--lr", "fast"], "python -m utils train: error: argument --lr: invalid float"),
    (["export", "--format", "onnx"], "argument --format: invalid choice: 'onnx'"),
])
def test_flag_typos_get_argparse_message_and_exit_2(argv, message):
    result = run_cli(*argv)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert message in error


def test_a_dotted_checkpoint_dir_is_a_folder(files, capsys):
    """`--checkpoint-dir runs/v1.2` is a new folder, not a file name for one checkpoint."""
    from utils.__main__ import main

    folder = files["root"] / "runs" / "v1.2"
    argv = [arg.format(**files) for arg in TRAIN[:-1]] + [str(folder)]
    assert main(argv) == 0
    assert folder.is_dir() and any(folder.glob("checkpoint_*.pt"))


# ---------------------------------------------------------------- disks that refuse writes

def mounted_tmpfs(where: Path, size: str) -> Path:
    """A real small file system (tmpfs) mounted at `where`."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                   check=True, capture_output=True)
    return where


def unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def run_cli_with_token_cache(cache: Path, *args: object):
    """`train ...` as a real process, with its token cache in `cache` (`--cache-dir`)."""
    return run_cli(*args, "--cache-dir", cache)


def fresh_corpus(path: Path) -> Path:
    """A corpus no token cache has seen (its own text), big enough to fill a tiny disk."""
    path.write_text(" ".join(f"{path.name}-{i}" for i in range(40_000)), encoding="utf-8")
    return path


def test_a_read_only_file_system_is_one_line_naming_the_flag(files, tmp_path):
    """A checkpoint folder, an export, a metrics CSV and the token cache on a file system
    mounted read-only: each command says which flag names the read-only place."""
    disk = mounted_tmpfs(tmp_path / "ro", "1m")
    try:
        (disk / "ck").mkdir()
        (disk / "cache").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True,
                       capture_output=True)
        train = [arg.format(**files) for arg in TRAIN[:-2]]
        ro = "read-only file system"
        cases = [
            ([*train, "--checkpoint-dir", disk / "ck"], ["--checkpoint-dir", ro]),  # exists
            ([*train, "--checkpoint-dir", disk / "new" / "ck"], ["--checkpoint-dir", ro]),
            (["export", "--checkpoint", files["converted"], "--format", "hf", "-o",
              disk / "hf"], ["--output", ro, "writable disk"]),
            (["export", "--checkpoint", files["converted"], "--format", "llmc", "-o",
              disk / "model.bin"], ["--output", ro]),
            (["recover", "--checkpoint-dir", files["trained"], "--metrics-csv", disk / "m.csv"],
             ["--metrics-csv", ro]),
        ]
        for argv, expected in cases:
            assert_one_error_line(run_cli(*argv), *expected)
        corpus = fresh_corpus(tmp_path / "ro-corpus.txt")
        result = run_cli_with_token_cache(disk / "cache", *train[:2], corpus, *train[3:],
                                          "--checkpoint-dir", tmp_path / "ck")
        assert_one_error_line(result, "token cache", ro, "--cache-dir")
        assert sorted(p.name for p in disk.iterdir()) == ["cache", "ck"]
    finally:
        unmount(disk)


def test_a_full_disk_is_one_line_naming_the_flag(files, tmp_path):
    disk = mounted_tmpfs(tmp_path / "full", "64k")
    try:
        (disk / "cache").mkdir()
        with open(disk / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:  # fill it up
                filler.write(b"x" * 4096)
        assert_one_error_line(run_cli("recover", "--checkpoint-dir", files["trained"],
                                      "--metrics-csv", disk / "m.csv"),
                              "--metrics-csv", "disk is full", "free some space")
        train = [arg.format(**files) for arg in TRAIN[:-2]]
        corpus = fresh_corpus(tmp_path / "full-corpus.txt")
        result = run_cli_with_token_cache(disk / "cache", *train[:2], corpus, *train[3:],
                                          "--checkpoint-dir", tmp_path / "ck")
        assert_one_error_line(result, "token cache", "disk is full", "--cache-dir")
        assert list((disk / "cache").iterdir()) == []  # no partial cache file left behind
    finally:
        unmount(disk)
