"""`pip install .` gives the `utils` package and the `colab-gpt2` command, and nothing else.

The install goes into a fresh virtual environment whose only view of the outside is this
environment's site-packages (a .pth file), so torch and the rest are found, not downloaded:
`--no-index` makes any dependency that is not already there an error instead of a download.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from utils import DISTRIBUTION, __version__
from utils.cli import COMMANDS

REPO_ROOT = Path(__file__).resolve().parent.parent

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def project_table() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def test_dependencies_are_requirements_txt():
    project = project_table()
    assert project["name"] == DISTRIBUTION and project["scripts"] == {
        DISTRIBUTION: "utils.__main__:main"}
    assert project["dependencies"] == requirement_lines(REPO_ROOT / "requirements.txt")
    assert set(project["optional-dependencies"]) == {"notebook", "hf", "data", "logging"}
    assert not any(dependency.startswith("torch==") for dependency in project["dependencies"])


def repository_copy(target: Path) -> Path:
    """The files git would commit from this working tree (tracked or new, not ignored), so
    the build sees the real layout (bench/, checkpoints/, tests/ ... beside utils/)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO_ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def fresh_venv(folder: Path) -> Path:
    """A new environment that sees this one's packages (not its `utils`: that is the
    repository's, found through the working directory, which the installed runs avoid)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    Path(site.stdout.strip(), "outer_environment.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.mark.slow
def test_pip_install_then_the_command_trains(tmp_path):
    source = repository_copy(tmp_path / "source")
    python = fresh_venv(tmp_path / "venv")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
         "--no-build-isolation", "--no-cache-dir", "--quiet", str(source)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    site = Path(subprocess.run([str(python), "-c", "import utils; print(utils.__file__)"],
                               cwd=tmp_path, env=env, capture_output=True, text=True,
                               check=True).stdout.strip()).parent.parent
    assert site.is_relative_to(tmp_path / "venv")  # the installed copy, not the repository
    ours = {path.name for path in site.iterdir()} - {"outer_environment.pth"}
    assert ours == {"utils", f"{DISTRIBUTION.replace('-', '_')}-{__version__}.dist-info"}

    command = python.parent / DISTRIBUTION
    shown = subprocess.run([str(command), "--help"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and shown.stdout.startswith(f"usage: {DISTRIBUTION} ")
    for name in COMMANDS:
        assert re.search(rf"^\s+{name}\s", shown.stdout, re.MULTILINE), name
    version = subprocess.run([str(command), "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert version.stdout.strip() == f"{DISTRIBUTION} {__version__}"

    trained = subprocess.run(
        [str(command), "train", "--layers", "1", "--heads", "2", "--dim", "32", "--context",
         "32", "--max-steps", "2", "--batch-size", "2", "--eval-interval", "2",
         "--eval-batches", "1", "--tokenizer", "byte", "--device", "cpu", "--no-progress",
         "--checkpoint-dir", str(tmp_path / "checkpoints")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr
    assert "done: step 2" in trained.stdout
    assert len(list((tmp_path / "checkpoints").glob("checkpoint_*_step000002_*.pt"))) == 1
