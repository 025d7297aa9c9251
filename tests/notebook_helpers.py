"""Run `training.ipynb`'s cells in a real Jupyter kernel, one cell at a time, by number.

The notebook tests drive a kernel the way a person does in Colab: run some cells, let the
kernel die, start a fresh one, run only the cells needed after reconnecting. Values are read
back from the kernel as JSON printed after a marker line.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client import KernelManager

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_PATH = REPO_ROOT / "training.ipynb"
COLAB_STUB = REPO_ROOT / "tests" / "colab_stub"
TITLE = re.compile(r"^# @title Cell (\d+) · ")
MARKER = "@@JSON@@"


def colab_environment(tmp_path: Path) -> dict[str, str]:
    """Environment variables that make a kernel look like Colab: the `google.colab`
    stand-in on its path, Drive mounted at `tmp_path/content/drive`, and `MyDrive` being
    `tmp_path/mydrive` (returned as COLAB_STUB_MYDRIVE)."""
    path = os.pathsep.join(filter(None, [str(COLAB_STUB), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path,
            "GPT2_DRIVE_MOUNT_POINT": str(tmp_path / "content" / "drive"),
            "COLAB_STUB_MYDRIVE": str(tmp_path / "mydrive")}


def executed_cells(path: Path) -> dict[int, dict[str, Any]]:
    """{cell number: {"ran", "text", "error"}} of an executed notebook: whether the cell
    ran, everything it showed (streams, results, error renderings) and its error's name."""
    cells = {}
    for cell in nbformat.read(path, as_version=4).cells:
        match = TITLE.match(cell.source) if cell.cell_type == "code" else None
        if not match:
            continue
        text, error = [], None
        for output in cell.outputs:
            text.append(output.get("text", "") + output.get("data", {}).get("text/plain", ""))
            if output.output_type == "error":
                error = output.ename
                text.append("\n".join(output.traceback))
        cells[int(match.group(1))] = {"ran": cell.get("execution_count") is not None,
                                      "text": "".join(text), "error": error}
    return cells


def notebook_cells(path: Path = NOTEBOOK_PATH) -> dict[int, str]:
    """{cell number: source} for the numbered code cells."""
    cells = {}
    for cell in nbformat.read(path, as_version=4).cells:
        match = TITLE.match(cell.source) if cell.cell_type == "code" else None
        if match:
            cells[int(match.group(1))] = cell.source
    return cells


def parameters_code(parameters: dict[str, Any]) -> str:
    """Assignments that override the parameters cell, as papermill injects them."""
    return "\n".join(f"{name} = {value!r}" for name, value in parameters.items())


class NotebookKernel:
    """One ipykernel process running in the repository root."""

    def __init__(self, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None) -> None:
        self.cells = notebook_cells()
        self.manager = KernelManager(kernel_name="python3")
        env = dict(os.environ, MPLBACKEND="agg", PYDEVD_DISABLE_FILE_VALIDATION="1",
                   **(env or {}))
        self.manager.start_kernel(cwd=str(cwd), env=env)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=120)

    def run(self, code: str, timeout: float = 300) -> tuple[str, str]:
        """Execute `code`; returns (status, text printed), status "ok" or "error".

        On an error the text includes the traceback, so an assertion shows what happened.
        """
        chunks: list[str] = []

        def collect(message: dict) -> None:
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                chunks.append(content["text"])
            elif kind in ("execute_result", "display_data") and "text/plain" in content["data"]:
                chunks.append(content["data"]["text/plain"] + "\n")
            elif kind == "error":
                chunks.append("\n".join(content["traceback"]) + "\n")

        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=collect,
                                                stop_on_error=False)
        return reply["content"]["status"], "".join(chunks)

    def run_cell(self, number: int, timeout: float = 300) -> str:
        """Run notebook Cell `number`; fail with its output unless it succeeded."""
        status, text = self.run(self.cells[number], timeout=timeout)
        assert status == "ok", f"Cell {number} failed:\n{text}"
        assert "Traceback" not in text, f"Cell {number} printed a traceback:\n{text}"
        return text

    def run_cell_expecting_stop(self, number: int, timeout: float = 300) -> str:
        """Run Cell `number`, which must stop with guidance (a user error): an error status
        whose rendering holds no traceback. Returns what it showed."""
        status, text = self.run(self.cells[number], timeout=timeout)
        assert status == "error", f"Cell {number} did not stop:\n{text}"
        assert "Traceback" not in text and "Stopped here" in text, text
        return text

    def run_cells(self, numbers: list[int], parameters: dict[str, Any] | None = None) -> str:
        """Run the cells in order; `parameters` are applied right after the parameters cell."""
        outputs = []
        for number in numbers:
            outputs.append(self.run_cell(number))
            if parameters and "parameters" in self._tags(number):
                status, text = self.run(parameters_code(parameters))
                assert status == "ok", text
        return "".join(outputs)

    def _tags(self, number: int) -> list[str]:
        for cell in nbformat.read(NOTEBOOK_PATH, as_version=4).cells:
            if cell.cell_type == "code" and cell.source == self.cells[number]:
                return list(cell.metadata.get("tags", []))
        return []

    def value(self, expression: str) -> Any:
        """Evaluate a JSON-able expression in the kernel and return it."""
        status, text = self.run(f"import json as _json\nprint({MARKER!r} + _json.dumps({expression}))")
        assert status == "ok", text
        # only a line that starts with the marker: a warning may echo the source line
        (line,) = [line for line in text.splitlines() if line.startswith(MARKER)]
        return json.loads(line[len(MARKER):])

    def start(self, code: str) -> str:
        """Start executing `code` without waiting (e.g. a long training cell)."""
        return self.client.execute(code)

    @property
    def pid(self) -> int:
        return self.manager.provisioner.process.pid

    def kill(self) -> None:
        """SIGKILL the kernel process, as a crashed Colab runtime dies: no clean-up runs."""
        os.kill(self.pid, signal.SIGKILL)
        self.manager.provisioner.process.wait(timeout=30)

    def shutdown(self) -> None:
        self.client.stop_channels()
        if self.manager.is_alive():
            self.manager.shutdown_kernel(now=True)
        else:
            self.manager.cleanup_resources()
