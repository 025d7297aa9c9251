"""One durable write: only `utils/fileio.py` renames files into place or fsyncs them.

Every file the project writes goes through fileio's temp file + fsync + rename
(`write_atomically`, `PendingFile`, `write_folder_atomically`, ...). A module that calls
`os.replace`, `os.rename`, `Path.replace`, `Path.rename` or `shutil.move` is writing its own
copy of that sequence; this test names it so the write moves into fileio instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from utils.fileio import PendingFile, write_atomically, write_folder_atomically

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "utils"
FILEIO = PACKAGE / "fileio.py"

# fsync outside fileio, each for a reason that is not "write a finished file atomically".
FSYNC_ALLOWED = {
    "utils/training/engine/runs.py": "the metrics log is append-only: it fsyncs its own "
                                     "open handle every few seconds",
    "utils/training/engine/loggers.py": "the CSV log is append-only: it fsyncs its own handle",
    "utils/training/engine/writer.py": "on Google Drive a checkpoint is truncated and fsynced "
                                       "before it is deleted, so Drive's trash keeps no bytes",
}


def renames_and_fsyncs(source: str) -> list[tuple[int, str]]:
    """(line, call) for each call that renames a file into place or fsyncs one."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in ("os", "shutil"):
            found += [(node.lineno, f"from {node.module} import {alias.name}")
                      for alias in node.names
                      if alias.name in ("replace", "rename", "renames", "move", "fsync")]
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
        name = node.func.attr
        if owner in ("os", "shutil") and name in ("replace", "rename", "renames", "move",
                                                  "fsync"):
            found.append((node.lineno, f"{owner}.{name}"))
        # Path.replace(target) / Path.rename(target): one argument, no keywords (str.replace
        # takes two; dataclasses.replace and datetime.replace take keywords).
        elif (name in ("replace", "rename") and owner not in ("os", "dataclasses")
              and len(node.args) == 1 and not node.keywords):
            found.append((node.lineno, f"Path.{name}"))
    return found


def test_the_scan_finds_every_form_of_rename():
    source = ("import os, shutil, dataclasses\nfrom os import replace\n"
              "os.replace(a, b)\nos.rename(a, b)\nshutil.move(a, b)\nos.fsync(fd)\n"
              "path.replace(target)\nPath(a).rename(b)\n"
              "'x'.replace('a', 'b')\ndataclasses.replace(config)\nwhen.replace(tzinfo=utc)\n")
    assert renames_and_fsyncs(source) == [
        (2, "from os import replace"), (3, "os.replace"), (4, "os.rename"),
        (5, "shutil.move"), (6, "os.fsync"), (7, "Path.replace"), (8, "Path.rename")]


def test_only_fileio_renames_files_into_place():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == FILEIO:
            continue
        relative = path.relative_to(REPO).as_posix()
        for line, call in renames_and_fsyncs(path.read_text()):
            if call == "os.fsync" and relative in FSYNC_ALLOWED:
                continue
            offenders.append(f"{relative}:{line}: {call}")
    assert not offenders, (
        "durable writes go through utils/fileio.py (write_atomically, PendingFile, "
        "write_folder_atomically, ...), not a private temp file + fsync + rename:\n  "
        + "\n  ".join(offenders))


def test_every_allowed_fsync_is_still_there():
    """The list of exceptions may only shrink: drop an entry once its fsync is gone."""
    for relative in FSYNC_ALLOWED:
        calls = [call for _, call in renames_and_fsyncs((REPO / relative).read_text())]
        assert "os.fsync" in calls, f"{relative} no longer fsyncs: remove it from FSYNC_ALLOWED"


def test_a_pending_file_is_published_under_the_name_chosen_at_the_end(tmp_path):
    with PendingFile(tmp_path / ".prep-1-ab.tmp") as pending:
        pending.handle.write(b"ids")
        assert pending.publish(tmp_path / "named-by-hash.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["named-by-hash.bin"]
    assert (tmp_path / "named-by-hash.bin").read_bytes() == b"ids"


def test_a_pending_file_left_unpublished_leaves_nothing(tmp_path):
    (tmp_path / "taken").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), PendingFile(tmp_path / "t.tmp") as pending:
        pending.handle.write(b"half")
        raise KeyboardInterrupt
    with PendingFile(tmp_path / "t.tmp") as pending:
        pending.handle.write(b"new")
        assert not pending.publish(tmp_path / "taken", replace=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert (tmp_path / "taken").read_bytes() == b"old"


def test_a_fixed_temporary_name_is_used_and_removed(tmp_path):
    part = tmp_path / "f.part"
    part.write_bytes(b"an interrupted try")
    seen = []
    write_atomically(tmp_path / "f", lambda out: (seen.append(part.read_bytes()), out.write(b"ok")),
                     temporary=part)
    assert seen == [b""]  # the earlier try was overwritten, not appended to
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_folder_appears_complete_or_keeps_its_old_files(tmp_path):
    folder = tmp_path / "export"

    def write(staging: Path) -> None:
        (staging / "b.json").write_text("{}")
        (staging / "a.bin").write_bytes(b"weights")

    assert write_folder_atomically(folder, write) == ["a.bin", "b.json"]

    def fail_halfway(staging: Path) -> None:
        (staging / "a.bin").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_folder_atomically(folder, fail_halfway)
    assert (folder / "a.bin").read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging folder left
