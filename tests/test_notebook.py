"""training.ipynb: its structure, the whole notebook headless in quick mode, the error
scenarios of Cell 34 in a live kernel, and the helpers the cells call (utils.notebook)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

from tests.notebook_helpers import NOTEBOOK_PATH, REPO_ROOT, TITLE, NotebookKernel, notebook_cells
from utils import notebook as nb
from utils.config import ConfigError, ModelConfig
from utils.training.engine.errors import ModelNotInitializedError, NoCheckpointsError

REQUIRED_PARAMETERS = ("QUICK_MODE", "MODEL_PRESET", "DATA_PATH", "MAX_STEPS", "BATCH_SIZE",
                       "CHECKPOINT_INTERVAL", "CHECKPOINT_DIR", "CHECKPOINT_OVERRIDE", "INIT_FROM")
FIXED_CELLS = {13: "Initialize Model", 32: "Run Training", 33: "Checkpoint Recovery",
               34: "Load Model Weights from Checkpoint", 35: "Extract Session Variables"}


# ---------------------------------------------------------------- structure


def test_notebook_is_generated_from_its_source():
    spec = importlib.util.spec_from_file_location("build_notebook",
                                                  REPO_ROOT / "scripts" / "build_notebook.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    assert NOTEBOOK_PATH.read_text() == builder.render(), \
        "training.ipynb is out of date: run python scripts/build_notebook.py"


def test_cells_are_numbered_colab_forms_with_seed_003_numbers():
    notebook = nbformat.read(NOTEBOOK_PATH, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    numbers = []
    for cell in code_cells:
        first_line = cell.source.splitlines()[0]
        assert TITLE.match(first_line), f"untitled code cell: {first_line!r}"
        assert first_line.endswith('{ display-mode: "form" }'), first_line
        numbers.append(int(TITLE.match(first_line).group(1)))
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert numbers[0] == 1
    titles = {n: src.splitlines()[0] for n, src in notebook_cells().items()}
    for number, name in FIXED_CELLS.items():
        assert titles[number] == f'# @title Cell {number} · {name} {{ display-mode: "form" }}'
    assert any(cell.cell_type == "markdown" and cell.source.startswith("## ")
               for cell in notebook.cells)


def test_one_parameters_cell_with_the_design_fields_as_form_fields():
    notebook = nbformat.read(NOTEBOOK_PATH, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    source = tagged[0].source
    for name in REQUIRED_PARAMETERS:
        assert re.search(rf"^{name} = .+# @param", source, re.MULTILINE), name
    namespace: dict = {}
    exec(source, namespace)  # plain assignments: papermill can override each one
    assert namespace["QUICK_MODE"] is False and namespace["CHECKPOINT_OVERRIDE"] == ""


# ---------------------------------------------------------------- the whole notebook


def test_whole_notebook_runs_headless_in_quick_mode(tmp_path):
    import papermill

    checkpoint_dir, output_dir = tmp_path / "checkpoints", tmp_path / "outputs"
    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK_PATH), str(executed), cwd=str(REPO_ROOT), kernel_name="python3",
        # GPT-2's BPE as in a real run; 10 steps (+5 resumed) keep the test short
        parameters={"QUICK_MODE": True, "QUICK_MODE_STEPS": 10,
                    "CHECKPOINT_DIR": str(checkpoint_dir), "OUTPUT_DIR": str(output_dir)},
        progress_bar=False,
    )
    outputs = {}
    for cell in nbformat.read(executed, as_version=4).cells:
        match = TITLE.match(cell.source) if cell.cell_type == "code" else None
        if match:
            outputs[int(match.group(1))] = "".join(
                o.get("text", "") + o.get("data", {}).get("text/plain", "")
                for o in cell.outputs)
            assert not any(o.output_type == "error" for o in cell.outputs)
    assert all("Traceback" not in text and "❌" not in text for text in outputs.values()), outputs
    # training wrote checkpoints, recovery and loading found them, the summary is complete
    assert sorted(checkpoint_dir.glob("checkpoint_epoch*_step*.pt"))
    assert "✅ model" in outputs[35] and "✅ results" in outputs[35]
    assert "LOADING MODEL WEIGHTS" in outputs[34]
    assert "resumed from step 10 to step 15" in outputs[37]
    assert "val_loss" in outputs[40] and "sample" in outputs[40]
    assert "Need at least two checkpoints" not in outputs[40]  # steps 10 and 15 compared
    # artefacts: the loss curve, a Hugging Face folder and the binary weights
    assert (output_dir / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (output_dir / "hf_model" / "config.json").is_file()
    assert (output_dir / "binary" / "gpt2_weights.bin").is_file()


# ---------------------------------------------------------------- Cell 34's error scenarios

ERROR_PARAMETERS = {"QUICK_MODE": True, "TOKENIZER": "byte"}  # byte-level: a tiny vocabulary, fast


@pytest.fixture
def kernel():
    k = NotebookKernel()
    yield k
    k.shutdown()


def test_cell_34_error_scenarios_print_guidance_and_keep_the_kernel_usable(kernel, tmp_path):
    empty_dir = tmp_path / "empty"
    parameters = {**ERROR_PARAMETERS, "CHECKPOINT_DIR": str(empty_dir),
                  "OUTPUT_DIR": str(tmp_path / "outputs")}
    kernel.run_cells([1, 3, 4, 5], parameters)

    # Scenario 1: Cell 34 before Cell 13
    text = kernel.run_cell(34)
    assert "Model instance not found" in text and "Cell 13" in text
    assert kernel.value("'model' in globals()") is False

    # Scenario 2: a model, but an empty checkpoint folder
    kernel.run_cells([6, 7, 9, 10, 11, 13])
    text = kernel.run_cell(34)
    assert "No checkpoints found" in text and "Cell 32" in text

    # Scenario 3: train a little, then change the architecture in Cell 11 and rebuild
    kernel.run("MAX_STEPS, CHECKPOINT_INTERVAL, EVAL_INTERVAL = 4, 2, 2")
    kernel.run_cells([15, 16, 32])
    assert list(empty_dir.glob("checkpoint_*.pt"))
    kernel.run("MODEL_PRESET = 'tiny'; CONTEXT_LENGTH = 32")
    kernel.run_cells([11, 13])
    before = kernel.value("[float(p.sum()) for p in model.parameters()]")
    text = kernel.run_cell(34)
    assert "architecture mismatch" in text.lower() and "Cell 13" in text
    # the failed load changed nothing and the session goes on
    assert kernel.value("[float(p.sum()) for p in model.parameters()]") == before
    assert kernel.value("6 * 7") == 42


# ---------------------------------------------------------------- utils.notebook


def test_session_summary_always_prints_every_variable():
    empty = nb.session_summary({})
    assert "SESSION VARIABLES" in empty
    for name, cell in nb.SESSION_VARIABLES.items():
        assert f"{name}" in empty and f"run Cell {cell}" in empty
    # seed 003's bug: with everything already set, the old cell printed nothing
    results = {"checkpoint_path": "a.pt", "latest_checkpoint_path": "b.pt", "metrics": [],
               "best_val_loss": 1.5, "epoch": 0, "global_step": 7}
    namespace = {"results": results, "model": None, **nb.extract_session_variables(
        {"results": results})}
    full = nb.session_summary(namespace)
    assert "✅ checkpoint_path" in full and "a.pt" in full and "✅ global_step" in full
    assert "⚪ model" in full and "run Cell 13" in full


def test_extract_session_variables_takes_only_what_results_has():
    assert nb.extract_session_variables({}) == {}
    assert nb.extract_session_variables({"results": {"global_step": 3, "other": 1}}) == {
        "global_step": 3}


def test_checkpoint_dir_is_local_outside_colab(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert nb.in_colab() is False
    assert nb.choose_checkpoint_dir() == Path("checkpoints")
    assert (tmp_path / "checkpoints").is_dir()
    assert nb.choose_checkpoint_dir(str(tmp_path / "x" / "y")) == tmp_path / "x" / "y"
    assert (tmp_path / "x" / "y").is_dir()


@pytest.mark.parametrize("error", [
    ModelNotInitializedError("no model: run Cell 13"),
    NoCheckpointsError("no checkpoints: run Cell 32"),
    ConfigError("bad preset"),
    FileNotFoundError("missing.txt"),
])
def test_friendly_errors_print_guidance_instead_of_raising(error, capsys):
    with nb.friendly_errors():
        raise error
    out = capsys.readouterr().out
    assert str(error).split(":")[0] in out and "Traceback" not in out


def test_friendly_errors_let_programming_errors_raise():
    with pytest.raises(TypeError), nb.friendly_errors():
        raise TypeError("a bug, not a user error")


def test_environment_report_names_torch_and_device():
    import torch

    report = nb.environment_report()
    assert f"PyTorch {torch.__version__}" in report
    assert f"Device used: {nb.default_device()}" in report


def test_install_requirements_skips_when_everything_is_present(capsys):
    assert nb.missing_modules() == []
    assert nb.install_requirements("does-not-matter.txt") is False
    assert "nothing to do" in capsys.readouterr().out


# ---------------------------------------------------------------- Cell 34's helper, in-process


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A real training run of 2 steps with a checkpoint after each (shared, read-only)."""
    import numpy as np

    from utils.config import TrainingConfig
    from utils.model import GPTModel
    from utils.training.engine.trainer import Trainer

    tmp_path = tmp_path_factory.mktemp("two_checkpoints")
    tiny_config = ModelConfig(vocab_size=257, context_length=32, embedding_dimension=32,
                              number_of_heads=4, number_of_layers=2, dropout_rate=0.0)
    tokens = np.random.default_rng(0).integers(0, 256, 4000).astype(np.uint16)
    config = TrainingConfig(max_steps=2, batch_size=2, warmup_steps=1, eval_interval=1,
                            eval_batches=1, checkpoint_interval=1, checkpoint_dir=str(tmp_path),
                            keep_last=None, keep_best=None, device="cpu")
    Trainer(GPTModel(tiny_config), config, tokens[:3000], tokens[3000:], progress=False).fit()
    return tmp_path


def test_load_weights_cell_loads_the_selected_checkpoint_and_reports(two_checkpoints,
                                                                    tiny_config, capsys):
    import torch

    from utils.model import GPTModel
    from utils.training.engine.recovery import list_checkpoints

    with pytest.raises(ModelNotInitializedError):
        nb.load_weights_cell({"model": None}, two_checkpoints)
    model = GPTModel(tiny_config)
    path, checkpoint = nb.load_weights_cell({"model": model}, two_checkpoints, override="1")
    listed = list_checkpoints(two_checkpoints)
    assert path == listed[1].path and checkpoint["global_step"] == listed[1].global_step
    out = capsys.readouterr().out
    for title in ("AVAILABLE CHECKPOINTS", "LOADING MODEL WEIGHTS", "CHECKPOINT INFO",
                  "MODEL INFO", "ARCHITECTURE PREVIEW", "NEXT STEPS"):
        assert title in out
    assert "manual override" in out.lower() and "→ [1]" in out
    saved = torch.load(path, weights_only=True)["model_state_dict"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert not model.training


def test_widget_picker_falls_back_to_the_table_outside_jupyter(two_checkpoints, tiny_config,
                                                               capsys):
    import torch

    from utils.model import GPTModel

    model = GPTModel(tiny_config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert nb.load_weights_cell({"model": model}, two_checkpoints, use_widget=True) == (None, None)
    out = capsys.readouterr().out
    assert "AVAILABLE CHECKPOINTS" in out and "CHECKPOINT_OVERRIDE" in out
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded


def test_cell_13_initialises_from_a_local_gpt2_folder(kernel, tmp_path):
    """INIT_FROM = a `save_pretrained` folder: Cell 13's model gives the HF model's logits."""
    import torch

    from utils.pretrained.verify import random_hf_gpt2

    hf_config = ModelConfig(vocab_size=257, context_length=64, embedding_dimension=32,
                            number_of_heads=4, number_of_layers=2, dropout_rate=0.0)
    hf_model = random_hf_gpt2(hf_config, seed=5)
    hf_model.save_pretrained(tmp_path / "gpt2-local")
    ids = [[72, 101, 108, 108, 111, 32, 256, 7]]
    with torch.no_grad():
        expected = hf_model(torch.tensor(ids)).logits

    kernel.run_cells([1, 3, 4, 5, 6, 11, 13], {
        "QUICK_MODE": True, "TOKENIZER": "byte", "INIT_FROM": str(tmp_path / "gpt2-local"),
        "CHECKPOINT_DIR": str(tmp_path / "checkpoints")})
    logits = kernel.value(f"model(torch.tensor({ids})).tolist()")
    assert torch.allclose(torch.tensor(logits), expected, atol=1e-5, rtol=0)
    assert kernel.value("model_config.embedding_dimension") == 32  # the folder's, not Cell 11's
