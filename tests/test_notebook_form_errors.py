"""A wrong form value stops "Run all" at the first cell that uses it, with guidance that
names the field and no traceback, so no later cell runs on missing variables.

Each case is a real papermill run of training.ipynb. To keep them cheap, every run reuses
one kernel (papermill's `km=`): a first cell added to the copy of the notebook clears the
kernel's variables (`%reset -f`), so each run starts from an empty namespace as a fresh
kernel would, and a NameError from a variable left over by a failed cell would still show.
"""

from __future__ import annotations

import contextlib
import subprocess

import nbformat
import pytest

from tests.notebook_helpers import NOTEBOOK_PATH, REPO_ROOT, executed_cells

# Valid, cheap settings (byte tokenizer, tiny model, no quick mode replacing what a case sets).
BASE = {"QUICK_MODE": False, "MODEL_PRESET": "tiny", "TOKENIZER": "byte", "CONTEXT_LENGTH": 32,
        "BATCH_SIZE": 2, "MAX_STEPS": 4, "EVAL_BATCHES": 1}

# (case, parameters, the cell that must stop, what its guidance must say)
CASES = [
    ("MODEL_PRESET", {"MODEL_PRESET": "huge"}, 4, ["MODEL_PRESET = 'huge'", "tiny"]),
    ("CONTEXT_LENGTH", {"CONTEXT_LENGTH": 0}, 4, ["CONTEXT_LENGTH = 0"]),
    ("BATCH_SIZE", {"BATCH_SIZE": -2}, 4, ["BATCH_SIZE = -2"]),
    ("CHECKPOINT_DIR is a file", {"CHECKPOINT_DIR": "@FILE@"}, 5,
     ["CHECKPOINT_DIR", "is a file, not a folder"]),
    ("TOKENIZER", {"TOKENIZER": "gpt3"}, 6, ["TOKENIZER = 'gpt3'", "byte"]),
    ("DATA_PATH", {"DATA_PATH": "/bin/ls"}, 7, ["DATA_PATH", "not UTF-8 text"]),
    ("CONTEXT_LENGTH longer than the data", {"CONTEXT_LENGTH": 10**7}, 10, ["CONTEXT_LENGTH"]),
    ("INIT_FROM, in quick mode", {"INIT_FROM": "gpt7", "QUICK_MODE": True, "MODEL_PRESET": "small"},
     12, ["INIT_FROM = 'gpt7'", "gpt2-medium"]),
    ("LEARNING_RATE, INIT_FROM Scratch", {"LEARNING_RATE": -1, "INIT_FROM": "Scratch"}, 15,
     ["LEARNING_RATE = -1"]),
    ("CHECKPOINT_INTERVAL", {"CHECKPOINT_INTERVAL": 0}, 15, ["CHECKPOINT_INTERVAL = 0"]),
    ("VAL_FRACTION", {"VAL_FRACTION": 1.5}, 7, ["VAL_FRACTION = 1.5", "between 0 and 1"]),
    ("LOG_TO", {"LOG_TO": "tensorbord"}, 15, ["LOG_TO = 'tensorbord'", "tensorboard, csv"]),
    # a path or disk the user gave (an OSError): the field, the cause and the fix
    ("CHECKPOINT_DIR name too long", {"CHECKPOINT_DIR": "@TMP@/" + "a" * 300}, 5,
     ["CHECKPOINT_DIR", "longer than the file system allows", "shorter names"]),
    ("CHECKPOINT_DIR on a read-only file system", {"CHECKPOINT_DIR": "@READ_ONLY@/checkpoints"},
     5, ["CHECKPOINT_DIR", "read-only file system", "writable disk"]),
    ("DATA_PATH a symbolic link loop", {"DATA_PATH": "@LOOP@"}, 7,
     ["DATA_PATH", "Too many levels of symbolic links"]),
    ("RUN_ID names no run", {"RUN_ID": "20990101-000000-abcdef"}, 33,
     ["RUN_ID", "run '20990101-000000-abcdef' is not in", "the runs there are"]),
    ("KEEP_FULL", {"KEEP_FULL": 0}, 15, ["KEEP_FULL = 0", "whole number >= 1"]),
]


@contextlib.contextmanager
def read_only_tmpfs(where):
    """A small tmpfs at `where`, remounted read-only; unmounted afterwards."""
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture(scope="module")
def shared_kernel():
    """One started kernel for every papermill run of this module."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    manager = AsyncKernelManager(kernel_name="python3")
    yield manager
    if manager.has_kernel:
        run_sync(manager.shutdown_kernel)(now=True)


@pytest.fixture(scope="module")
def fresh_namespace_notebook(tmp_path_factory):
    """training.ipynb with a first cell that empties the kernel's namespace."""
    notebook = nbformat.read(NOTEBOOK_PATH, as_version=4)
    reset = nbformat.v4.new_code_cell(f"%reset -f\nimport os\nos.chdir({str(REPO_ROOT)!r})")
    reset.id = "test-reset"
    notebook.cells.insert(0, reset)
    path = tmp_path_factory.mktemp("notebook") / "training.ipynb"
    nbformat.write(notebook, path)
    return path


@pytest.mark.parametrize("case, parameters, stop_cell, expected", CASES,
                         ids=[case[0] for case in CASES])
def test_a_wrong_form_value_stops_run_all_at_its_first_use(case, parameters, stop_cell, expected,
                                                          shared_kernel, fresh_namespace_notebook,
                                                          tmp_path):
    import papermill

    a_file = tmp_path / "not_a_folder.txt"
    a_file.write_text("a file, not a folder")
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    read_only = tmp_path / "read_only"
    places = {"@FILE@": str(a_file), "@TMP@": str(tmp_path), "@LOOP@": str(tmp_path / "loop_a"),
              "@READ_ONLY@": str(read_only)}
    parameters = {**BASE, "CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
                  "OUTPUT_DIR": str(tmp_path / "outputs"), **parameters}
    for name, value in parameters.items():
        for placeholder, path in places.items():
            if isinstance(value, str) and value.startswith(placeholder):
                parameters[name] = path + value[len(placeholder):]
    executed = tmp_path / "executed.ipynb"
    with contextlib.ExitStack() as mounted:
        if str(read_only) in parameters["CHECKPOINT_DIR"]:  # a real read-only file system
            mounted.enter_context(read_only_tmpfs(read_only))
        with pytest.raises(papermill.PapermillExecutionError) as stopped:
            papermill.execute_notebook(str(fresh_namespace_notebook), str(executed),
                                       parameters=parameters, kernel_name="python3",
                                       km=shared_kernel, progress_bar=False)
    assert stopped.value.ename == "StopRun"

    cells = executed_cells(executed)
    failed = [number for number, cell in cells.items() if cell["error"]]
    assert failed == [stop_cell], {n: c["text"] for n, c in cells.items() if c["ran"]}
    assert [n for n, cell in cells.items() if cell["ran"] and n > stop_cell] == []
    assert all(cells[number]["ran"] for number in cells if number <= stop_cell)
    guidance = cells[stop_cell]["text"]
    for words in expected:
        assert words in guidance, guidance
    assert "Cell 3 (Settings)" in guidance and "Stopped here" in guidance
    assert guidance.count("❌") == 1  # shown once
    everything = "".join(cell["text"] for cell in cells.values())
    assert "Traceback" not in everything and "NameError" not in everything, everything
    if "LEARNING_RATE" in case:
        assert "min_learning_rate" not in guidance  # a setting nobody typed
        assert "(init: scratch)" in cells[13]["text"]  # "Scratch" is not a hub name
    if "quick mode" in case:
        assert "Quick mode replaced" in cells[4]["text"]
        assert "MODEL_PRESET 'small' → 'tiny'" in cells[4]["text"]
        assert "BATCH_SIZE 2 → 4" in cells[4]["text"]
        assert "TOKENIZER" not in cells[4]["text"]  # only what quick mode changes is listed
