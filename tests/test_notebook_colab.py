"""Colab first contact: Cell 1 run in an empty folder that holds only the notebook, as a
notebook opened in Colab without the repository, with the `google.colab` stand-in
(tests/colab_stub) and a stand-in Drive folder. And the stand-in itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.notebook_helpers import (
    COLAB_STUB,
    NOTEBOOK_PATH,
    REPO_ROOT,
    NotebookKernel,
    colab_environment,
)


def copy_code(target: Path) -> None:
    """What Cell 1 needs of the repository: the utils package and requirements.txt."""
    shutil.copytree(REPO_ROOT / "utils", target / "utils",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "requirements.txt", target)


def zip_code(archive: Path, top: str) -> None:
    """A zip of the repository as GitHub's "Download ZIP" makes it (one top folder)."""
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted((REPO_ROOT / "utils").rglob("*.py")):
            zipped.write(path, f"{top}/{path.relative_to(REPO_ROOT)}")
        zipped.write(REPO_ROOT / "requirements.txt", f"{top}/requirements.txt")


def test_cell_1_finds_the_code_on_drive_or_in_an_uploaded_zip(tmp_path):
    content = tmp_path / "content"  # Colab's working folder: only the notebook
    content.mkdir()
    shutil.copy(NOTEBOOK_PATH, content)
    with zipfile.ZipFile(content / "my-data.zip", "w") as unrelated:  # another upload
        unrelated.writestr("corpus.txt", "not the code")
    environment = colab_environment(tmp_path)
    my_drive = Path(environment["COLAB_STUB_MYDRIVE"])
    kernel = NotebookKernel(cwd=content, env=environment)
    try:
        # 1. No code anywhere: Cell 1 mounts Drive, looks there, then lists the ways.
        status, text = kernel.run(kernel.cells[1])
        assert status == "error" and "Traceback" not in text, text
        assert "MyDrive" in text and "REPO_DIR" in text and "zip" in text and "REPO_URL" in text
        assert Path(environment["GPT2_DRIVE_MOUNT_POINT"], "MyDrive").resolve() == my_drive
        assert kernel.value("'utils' in sys.modules") is False

        # 2. The repository folder copied into MyDrive (REPO_DIR's default name).
        copy_code(my_drive / "gpt2-training")
        text = kernel.run_cell(1)
        on_drive = (my_drive / "gpt2-training").resolve()
        assert f"Code: {on_drive}" in text and "ENVIRONMENT" in text and "Colab: yes" in text
        assert kernel.value("os.getcwd()") == str(on_drive)
        assert kernel.value("sys.modules['utils'].__file__") == str(on_drive / "utils" / "__init__.py")

        # 3. Nothing on Drive, a zip of the repository uploaded into the working folder.
        shutil.rmtree(my_drive / "gpt2-training")
        zip_code(content / "gpt2-training-main.zip", "gpt2-training-main")
        kernel.run(f"os.chdir({str(content)!r})")
        text = kernel.run_cell(1)
        unzipped = (content / "gpt2-training-zip" / "gpt2-training-main").resolve()
        assert f"Code: {unzipped}" in text
        assert kernel.value("os.getcwd()") == str(unzipped)
        assert (unzipped / "utils" / "notebook.py").read_bytes() == \
            (REPO_ROOT / "utils" / "notebook.py").read_bytes()
        assert not (content / "gpt2-training-zip" / "corpus.txt").exists()  # left zipped
    finally:
        kernel.shutdown()


def test_the_colab_stand_in_mounts_and_unmounts_a_folder(tmp_path):
    """drive.mount makes <mount>/MyDrive the stand-in folder; flush_and_unmount takes it
    away and leaves the files. Run in a subprocess, as the kernel imports it."""
    script = (
        "import sys\nfrom pathlib import Path\nfrom google.colab import drive\n"
        "from utils import runtime\n"
        "assert runtime.in_colab()\n"
        "mount = Path(sys.argv[1])\n"
        "drive.mount(str(mount))\n"
        "(mount / 'MyDrive' / 'file.txt').write_text('on drive')\n"
        "drive.flush_and_unmount()\n"
        "assert not (mount / 'MyDrive').exists()\n"
        "print(runtime.drive_project_dir())\n"
    )
    environment = {**os.environ, **colab_environment(tmp_path)}
    environment["PYTHONPATH"] += os.pathsep + str(REPO_ROOT)
    mount = tmp_path / "content" / "drive"
    result = subprocess.run([sys.executable, "-c", script, str(mount)], env=environment,
                            capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "mydrive" / "file.txt").read_text() == "on drive"
    assert result.stdout.strip().splitlines()[-1] == str(mount / "MyDrive" / "gpt2-training")
    assert COLAB_STUB.is_dir() and not (COLAB_STUB / "google" / "__init__.py").exists()
