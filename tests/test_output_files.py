"""Output paths a user gives the command line (issue 20, item 1): `recover --metrics-csv`,
`export --output`, `convert --output`. An existing file is replaced only with the overwrite
flag, and then atomically (a hard link to the old file keeps the old bytes, so writing over
`best_model.pt` cannot reach a checkpoint); a FIFO, a device or a folder is refused with
one line, never waited on. Each test makes the hostile path itself and runs the real CLI.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from tests._ckpt_helpers import make_state
from tests._cli_helpers import assert_one_error_line, run_cli
from utils.training.engine.checkpoint import save_checkpoint

RUN = "20250101-000000-aaaaaa"
TF_FIXTURE = Path(__file__).parent / "fixtures" / "openai_tf_tiny"
TIMEOUT = 240  # a FIFO that is opened for writing blocks forever: far above a normal run


def cli(*args: object) -> subprocess.CompletedProcess:
    return run_cli(*args, timeout=TIMEOUT)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A checkpoint folder with three checkpoints of one run (no training: quick)."""
    root = tmp_path_factory.mktemp("outputs") / "ck"
    for step in (1, 2, 3):
        save_checkpoint(make_state(step, 4.0 - step, run_id=RUN), root)
    return root


def hostile_target(kind: str, where: Path) -> Path:
    """An output path that is not a regular file or a new name."""
    if kind == "fifo":
        path = where / "metrics.fifo"
        os.mkfifo(path)
        return path
    if kind == "folder":
        path = where / "a-folder"
        path.mkdir()
        return path
    if kind == "link-to-dev-full":
        path = where / "full.csv"
        path.symlink_to("/dev/full")
        return path
    return Path("/dev/full")  # the device itself


HOSTILE = ["fifo", "folder", "link-to-dev-full", "dev-full"]


# --------------------------------------------------------------------------------------
# recover --metrics-csv
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", HOSTILE)
def test_metrics_csv_onto_a_fifo_device_or_folder_is_one_line(tmp_path, folder, kind):
    target = hostile_target(kind, tmp_path)
    before = os.lstat(target)
    for extra in ([], ["--overwrite"]):
        line = assert_one_error_line(cli("recover", "--checkpoint-dir", folder,
                                         "--metrics-csv", target, *extra))
        assert "--metrics-csv" in line
        assert ("folder" if kind == "folder" else "not a regular file") in line
    after = os.lstat(target)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode)  # still what it was


def test_metrics_csv_never_replaces_a_file_without_overwrite(tmp_path, folder):
    notes = tmp_path / "notes.csv"
    notes.write_text("someone's table\n")
    line = assert_one_error_line(cli("recover", "--checkpoint-dir", folder,
                                     "--metrics-csv", notes))
    assert "exists" in line and "--overwrite" in line
    assert notes.read_text() == "someone's table\n"


def test_metrics_csv_with_overwrite_replaces_the_name_not_the_linked_bytes(tmp_path, folder):
    """With --overwrite the name gets a new file; another name of the old file (a hard link,
    as best_model.pt was of a checkpoint) keeps its bytes."""
    target = tmp_path / "metrics.csv"
    target.write_text("old\n")
    witness = tmp_path / "witness.csv"
    os.link(target, witness)
    result = cli("recover", "--checkpoint-dir", folder, "--metrics-csv", target, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert target.read_text().startswith("step,") and witness.read_text() == "old\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_metrics_csv_over_best_model_cannot_reach_the_checkpoint(tmp_path, folder):
    """`recover --metrics-csv checkpoints/best_model.pt --overwrite` (a slip of the user's)
    replaces best_model.pt only; the checkpoint it copied or linked stays intact."""
    ck = Path(shutil.copytree(folder, tmp_path / "ck"))
    best = ck / "best_model.pt"
    source = min(ck.glob("checkpoint_*.pt"))
    os.link(source, best)  # what best_model.pt was before the storage change: a hard link
    digests = {path.name: sha(path) for path in ck.glob("checkpoint_*.pt")}
    assert_one_error_line(cli("recover", "--checkpoint-dir", ck, "--metrics-csv", best),
                          "exists")
    result = cli("recover", "--checkpoint-dir", ck, "--metrics-csv", best, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert {path.name: sha(path) for path in ck.glob("checkpoint_*.pt")} == digests
    assert torch.load(source, weights_only=True)["global_step"] == 1


def test_metrics_csv_in_a_missing_folder_is_one_line(tmp_path, folder):
    assert_one_error_line(cli("recover", "--checkpoint-dir", folder, "--metrics-csv",
                              tmp_path / "nowhere" / "m.csv"), "does not exist")


# --------------------------------------------------------------------------------------
# export and convert
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def source(folder) -> Path:
    return min(folder.glob("checkpoint_*.pt"))


@pytest.mark.parametrize("kind", ["fifo", "link-to-dev-full", "dev-full"])
def test_export_llmc_onto_a_fifo_or_device_is_refused_even_with_overwrite(tmp_path, source,
                                                                          kind):
    target = hostile_target(kind, tmp_path)
    before = os.lstat(target)
    assert_one_error_line(cli("export", "--checkpoint", source, "--format", "llmc",
                              "-o", target, "--overwrite"), "not a regular file")
    after = os.lstat(target)
    assert (stat.S_IFMT(after.st_mode), after.st_ino) == (stat.S_IFMT(before.st_mode),
                                                          before.st_ino)


def test_export_llmc_with_overwrite_is_atomic(tmp_path, source):
    target = tmp_path / "model.bin"
    target.write_bytes(b"an earlier export")
    witness = tmp_path / "witness.bin"
    os.link(target, witness)
    assert_one_error_line(cli("export", "--checkpoint", source, "--format", "llmc",
                              "-o", target), "exists")
    result = cli("export", "--checkpoint", source, "--format", "llmc", "-o", target,
                 "--overwrite")
    assert result.returncode == 0, result.stderr
    assert witness.read_bytes() == b"an earlier export" != target.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "witness.bin"]


def test_export_binary_with_overwrite_replaces_files_atomically(tmp_path, source):
    """Its text files used to be written in place: through a hard link they changed the
    linked file too."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "gpt2_config.txt").write_text("someone's notes\n")
    witness = tmp_path / "witness.txt"
    os.link(out / "gpt2_config.txt", witness)
    result = cli("export", "--checkpoint", source, "--format", "binary", "-o", out,
                 "--overwrite")
    assert result.returncode == 0, result.stderr
    assert witness.read_text() == "someone's notes\n"
    assert (out / "gpt2_config.txt").read_text().startswith("vocab_size=")


@pytest.mark.parametrize("fmt, name", [("binary", "gpt2_config.txt"), ("hf", "config.json")])
def test_export_into_a_folder_whose_file_is_a_fifo_is_refused(tmp_path, source, fmt, name):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / name)
    assert_one_error_line(cli("export", "--checkpoint", source, "--format", fmt, "-o", out,
                              "--overwrite"), "not a regular file", name)
    assert stat.S_ISFIFO(os.lstat(out / name).st_mode)
    assert sorted(p.name for p in out.iterdir()) == [name]


def test_convert_with_force_into_a_folder_named_pt_is_refused(tmp_path):
    out = tmp_path / "model.pt"
    out.mkdir()
    assert_one_error_line(cli("convert", TF_FIXTURE, "-o", out, "--force"), "is a folder")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("kind", ["fifo", "link-to-dev-full"])
def test_convert_onto_a_fifo_or_device_is_refused_even_with_force(tmp_path, kind):
    target = hostile_target(kind, tmp_path)
    named = target.with_name(target.stem + ".pt")
    target.rename(named)
    assert_one_error_line(cli("convert", TF_FIXTURE, "-o", named, "--force"),
                          "not a regular file")
    assert not stat.S_ISREG(os.lstat(named).st_mode)


# --------------------------------------------------------------------------------------
# Nothing we write shares its bytes with another of our files
# --------------------------------------------------------------------------------------

TRAIN = ["train", "--tokenizer", "byte", "--layers", "1", "--heads", "2", "--dim", "16",
         "--context", "16", "--checkpoint-interval", "1", "--eval-interval", "1",
         "--keep-last", "5", "--no-progress", "--device", "cpu", "--max-steps", "4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    (root / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 50)
    result = cli(*TRAIN, "--checkpoint-dir", root / "ck", "--data", root / "corpus.txt")
    assert result.returncode == 0, result.stderr
    return root / "ck"


def test_no_two_files_of_a_training_share_an_inode(trained):
    files = [path for path in trained.iterdir() if path.is_file()]
    assert any(path.name == "best_model.pt" for path in files)
    inodes = {}
    for path in files:
        info = path.stat()
        inodes.setdefault((info.st_dev, info.st_ino), []).append(path.name)
        assert info.st_nlink == 1, f"{path.name} has {info.st_nlink} names"
    assert all(len(names) == 1 for names in inodes.values()), inodes


def test_a_users_torch_save_over_best_model_changes_no_checkpoint(tmp_path, trained):
    ck = tmp_path / "ck"
    subprocess.run(["cp", "-a", str(trained), str(ck)], check=True)  # keeps hard links
    digests = {path.name: sha(path) for path in ck.glob("checkpoint_*.pt")}
    torch.save({"weights": torch.zeros(3)}, ck / "best_model.pt")  # in place, as users do
    assert {path.name: sha(path) for path in ck.glob("checkpoint_*.pt")} == digests


def test_the_notebooks_loss_curve_is_written_atomically(tmp_path):
    """Cell 36 saves `OUTPUT_DIR/loss_curve.png` on every run: a replaced image keeps its
    other names (hard links) and leaves no temporary file."""
    from utils import plots

    target = tmp_path / "loss_curve.png"
    target.write_bytes(b"an earlier image")
    witness = tmp_path / "kept.png"
    os.link(target, witness)
    plots.save_figure(plots.plot_training_curves([]), target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert witness.read_bytes() == b"an earlier image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.png", "loss_curve.png"]
