"""training.ipynb: its structure, the whole notebook headless in quick mode, the error
scenarios of Cell 34 in a live kernel, and the helpers the cells call (utils.runtime,
utils.forms, utils.notebook)."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

from tests.notebook_helpers import (
    NOTEBOOK_PATH,
    REPO_ROOT,
    TITLE,
    NotebookKernel,
    colab_environment,
    executed_cells,
    notebook_cells,
)
from utils import forms, runtime
from utils import notebook as nb
from utils.checkpoint_errors import (
    ModelNotInitializedError,
    NoCheckpointsError,
    TrainingOutOfMemoryError,
)
from utils.config import GPT2_CONFIGS, ConfigError, ModelConfig

REQUIRED_PARAMETERS = ("QUICK_MODE", "MODEL_PRESET", "DATA_PATH", "MAX_STEPS", "BATCH_SIZE",
                       "CHECKPOINT_INTERVAL", "CHECKPOINT_DIR", "CHECKPOINT_OVERRIDE", "INIT_FROM")
FIXED_CELLS = {13: "Initialize Model", 32: "Run Training", 33: "Checkpoint Recovery",
               34: "Load Model Weights from Checkpoint", 35: "Extract Session Variables"}
FORM = '{ display-mode: "form" }'
# Numbered reference designs ("seed 003", "Seed 002") mean nothing to a notebook user.
DESIGN_NUMBERS = re.compile(r"\bseeds? \d{3}\b", re.IGNORECASE)


def load_builder(source: str | None = None):
    """scripts/build_notebook.py as a module (from `source` when given)."""
    path = REPO_ROOT / "scripts" / "build_notebook.py"
    spec = importlib.util.spec_from_file_location("build_notebook", path)
    builder = importlib.util.module_from_spec(spec)
    if source is None:
        spec.loader.exec_module(builder)
    else:
        exec(compile(source, str(path), "exec"), builder.__dict__)
    return builder


# ---------------------------------------------------------------- structure


def test_notebook_is_generated_from_its_source():
    builder = load_builder()
    assert NOTEBOOK_PATH.read_text() == builder.render(), \
        "training.ipynb is out of date: run python scripts/build_notebook.py"
    readme = (REPO_ROOT / "README.md").read_text()
    assert readme == builder.render_readme(readme), "the README's Colab badge is out of date"


def test_publishing_sets_one_constant_for_cell_1_and_the_readme_badge():
    source = (REPO_ROOT / "scripts" / "build_notebook.py").read_text()
    assert source.count('\nREPOSITORY = ""\n') == 1
    builder = load_builder(source.replace('\nREPOSITORY = ""\n', '\nREPOSITORY = "someone/gpt2"\n'))
    cell_1 = next(cell.source for cell in builder.build().cells if "Cell 1 ·" in cell.source)
    assert 'REPO_URL = "https://github.com/someone/gpt2.git"' in cell_1
    badge = builder.render_readme((REPO_ROOT / "README.md").read_text())
    assert "(https://colab.research.google.com/github/someone/gpt2/blob/main/training.ipynb)" in badge
    # unpublished (as committed): no address to clone, and the badge opens Colab to upload
    assert 'REPO_URL = ""' in notebook_cells()[1]


def test_cells_are_numbered_colab_forms_with_the_fixed_numbers():
    notebook = nbformat.read(NOTEBOOK_PATH, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    numbers = []
    for cell in code_cells:
        first_line = cell.source.splitlines()[0]
        assert TITLE.match(first_line), f"untitled code cell: {first_line!r}"
        numbers.append(int(TITLE.match(first_line).group(1)))
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert numbers[0] == 1
    titles = {n: src.splitlines()[0] for n, src in notebook_cells().items()}
    for number, name in FIXED_CELLS.items():
        assert titles[number].removesuffix(" " + FORM) == f"# @title Cell {number} · {name}"
    assert any(cell.cell_type == "markdown" and cell.source.startswith("## ")
               for cell in notebook.cells)


def test_only_cells_with_form_fields_hide_their_code():
    hidden = {}
    for number, source in notebook_cells().items():
        hidden[number] = source.splitlines()[0].endswith(FORM)
        assert hidden[number] == ("# @param" in source), source.splitlines()[0]
    assert hidden[3] and hidden[34] and not hidden[13] and not hidden[32]


def test_no_reference_design_numbers_in_what_users_read():
    readable = {"training.ipynb": NOTEBOOK_PATH.read_text()}
    for name in ("01-quickstart.md", "03-crash-recovery-colab.md", "07-troubleshooting.md"):
        readable[name] = (REPO_ROOT / "docs" / name).read_text()
    from utils import reports

    readable["error reports"] = "".join(reports.error_report(kind("x"))
                                        for kind, *_ in reports.ERROR_GUIDANCE)
    readable["session summary"] = nb.session_summary({})
    for name, text in readable.items():
        assert not DESIGN_NUMBERS.search(text), (name, DESIGN_NUMBERS.search(text))


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


def test_whole_notebook_runs_headless_in_quick_mode_as_in_colab(tmp_path, monkeypatch):
    """The whole notebook under papermill, with the `google.colab` stand-in on the kernel's
    path (tests/colab_stub): Cell 5 mounts the stand-in Drive and, CHECKPOINT_DIR being
    empty, the checkpoints land in the Drive project folder, as in Colab."""
    import papermill

    for name, value in colab_environment(tmp_path).items():
        monkeypatch.setenv(name, value)  # the kernel papermill starts inherits them
    my_drive, output_dir = tmp_path / "mydrive", tmp_path / "outputs"
    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK_PATH), str(executed), cwd=str(REPO_ROOT), kernel_name="python3",
        # GPT-2's BPE as in a real run; 10 steps (+5 resumed) keep the test short
        parameters={"QUICK_MODE": True, "QUICK_MODE_STEPS": 10, "CHECKPOINT_DIR": "",
                    "OUTPUT_DIR": str(output_dir)},
        progress_bar=False,
    )
    cells = executed_cells(executed)
    outputs = {number: cell["text"] for number, cell in cells.items()}
    assert all(cell["ran"] and not cell["error"] for cell in cells.values()), outputs
    assert all("Traceback" not in text and "❌" not in text for text in outputs.values()), outputs
    assert not any(DESIGN_NUMBERS.search(text) for text in outputs.values())
    # Colab's path: Drive mounted at the stand-in mount point, checkpoints on "Drive"
    assert "Colab: yes" in outputs[1]
    checkpoint_dir = Path(tmp_path, "content", "drive", "MyDrive", "gpt2-training", "checkpoints")
    assert f"Checkpoint folder: {checkpoint_dir} " in outputs[5]
    assert sorted((my_drive / "gpt2-training" / "checkpoints").glob("checkpoint_epoch*_step*.pt"))
    assert "Quick mode replaced" in outputs[4]
    # the storage plan: said before training, one checkpoint keeps the optimizer state
    assert "storage plan: this run keeps at most" in outputs[32]
    assert "Google Drive's quota, as the mount reports it" in outputs[32]
    from utils.training.engine.recovery import list_checkpoints

    kept = list_checkpoints(my_drive / "gpt2-training" / "checkpoints")
    assert [info.resumable for info in kept].count(True) == 1 < len(kept)  # 10 and 15
    # the table Cell 34 shows says which can resume (before Cell 37 the run has one
    # checkpoint, which keeps the optimizer state; Cell 37's step 15 makes it weights only)
    assert "kept" in outputs[34] and "resumable" in outputs[34]
    # training wrote checkpoints, recovery and loading found them, the summary is complete
    assert "✅ model" in outputs[35] and "✅ results" in outputs[35]
    assert "✅ checkpoint_path" in outputs[35] and "✅ best_checkpoint_path" in outputs[35]
    assert "LOADING MODEL WEIGHTS" in outputs[34]
    assert "from step 10 to step 15" in outputs[37] and "✅ resumed run" in outputs[37]
    assert "val_loss" in outputs[40] and "sample" in outputs[40]
    assert "Need at least two checkpoints" not in outputs[40]  # steps 10 and 15 compared
    # artefacts: the loss curve, a Hugging Face folder and the binary weights
    assert (output_dir / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (output_dir / "hf_model" / "config.json").is_file()
    assert (output_dir / "binary" / "gpt2_weights.bin").is_file()
    # the notebook's logging: TensorBoard events and a CSV per run, a sample while training,
    # and Cell 17 names the command instead of starting a server no page would show
    [run_logs] = (my_drive / "gpt2-training" / "checkpoints" / "logs").iterdir()
    assert list(run_logs.glob("events.out.tfevents.*")) and (run_logs / "metrics.csv").is_file()
    assert "tensorboard --logdir" in outputs[17]
    assert "--- sample at step 10 (prompt: 'The meaning of life is') ---" in outputs[32]
    # the runs and checkpoints tables are rendered (HTML), the text reports stay
    for number in (33, 34):
        assert "<table" in rendered_html(executed, number), number
    assert "AVAILABLE CHECKPOINTS" in outputs[34] and "LOADING MODEL WEIGHTS" in outputs[34]
    # Cell 41 exported the checkpoint Cell 34 loaded (step 10), not the model Cell 37
    # trained on to step 15, and said which
    exported = re.search(r"✅ exported (\S+) \(the checkpoint Cell 34 loaded: step 10,",
                         outputs[41])
    assert exported, outputs[41]
    assert_exported_weights_are(output_dir / "hf_model", Path(exported.group(1)))


def rendered_html(executed: Path, number: int) -> str:
    """The HTML outputs (rendered tables) of Cell `number` in an executed notebook."""
    for cell in nbformat.read(executed, as_version=4).cells:
        if cell.cell_type == "code" and TITLE.match(cell.source) \
                and int(TITLE.match(cell.source).group(1)) == number:
            return "".join(output.get("data", {}).get("text/html", "") for output in cell.outputs)
    raise AssertionError(f"no Cell {number}")


def assert_exported_weights_are(hf_dir: Path, checkpoint: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from utils.pretrained.huggingface import export_to_hf
    from utils.training.engine.loading import load_pretrained_model

    model, _ = load_pretrained_model(checkpoint, device="cpu")
    reference = export_to_hf(model, hf_dir.parent / "reference_export")
    exported = load_file(hf_dir / "model.safetensors")
    expected = load_file(reference / "model.safetensors")
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[name], expected[name]) for name in expected)


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
    text = kernel.run_cell_expecting_stop(34)
    assert "Model instance not found" in text and "run Cell 13" in text
    assert kernel.value("'model' in globals()") is False

    # Scenario 2: a model, but an empty checkpoint folder
    kernel.run_cells([6, 7, 9, 10, 11, 13])
    text = kernel.run_cell_expecting_stop(34)
    assert "No checkpoints found" in text and "Cell 32" in text

    # Scenario 3: train a little, then change the architecture in Cell 11 and rebuild
    kernel.run("MAX_STEPS, CHECKPOINT_INTERVAL, EVAL_INTERVAL = 4, 2, 2")
    kernel.run_cells([15, 16, 32])
    assert list(empty_dir.glob("checkpoint_*.pt"))
    kernel.run("MODEL_PRESET = 'tiny'; CONTEXT_LENGTH = 32")
    kernel.run_cells([11, 13])
    before = kernel.value("[float(p.sum()) for p in model.parameters()]")
    text = kernel.run_cell_expecting_stop(34)
    assert "architecture mismatch" in text.lower() and "Cells 4-13" in text
    # the failed load changed nothing and the session goes on
    assert kernel.value("[float(p.sum()) for p in model.parameters()]") == before
    assert kernel.value("6 * 7") == 42


# ------------------------------------------- utils.runtime, utils.forms, utils.notebook


def assigned_names(source: str) -> set[str]:
    """Names a cell's code assigns (assignment and for/with targets, tuples unpacked)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        targets = []
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        elif isinstance(node, (ast.For, ast.comprehension)):
            targets = [node.target]
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            targets = [node.optional_vars]
        for target in targets:
            names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def test_session_summary_names_the_cell_that_makes_each_variable():
    """The cell in each "run Cell N" hint is the first cell whose code assigns the variable,
    found by reading the notebook (not from the table the summary is printed from)."""
    first_assigned: dict[str, int] = {}
    for number, source in sorted(notebook_cells().items()):
        for name in assigned_names(source):
            first_assigned.setdefault(name, number)
    empty = nb.session_summary({})
    assert "SESSION VARIABLES" in empty
    hints = dict(re.findall(r"⚪ (\w+) +not set \(run Cell (\d+)\)", empty))
    assert {"model", "tokenizer", "trainer", "results", "checkpoint_path"} <= set(hints)
    for name, cell in hints.items():
        assert int(cell) == first_assigned[name], (name, cell, first_assigned.get(name))
    assert hints["trainer"] == "16"


def test_session_summary_always_prints_every_variable():
    # seed 003's bug: with everything already set, the old cell printed nothing
    results = {"checkpoint_path": "a.pt", "latest_checkpoint_path": "b.pt", "metrics": [],
               "best_val_loss": 1.5, "epoch": 0, "global_step": 7}
    namespace = {"results": results, "model": None, **nb.extract_session_variables(
        {"results": results})}
    full = nb.session_summary(namespace)
    assert "✅ best_checkpoint_path" in full and "a.pt" in full and "✅ global_step" in full
    assert "⚪ checkpoint_path" in full and "run Cell 34" in full
    assert "⚪ model" in full and "run Cell 13" in full


def test_extract_session_variables_takes_only_what_results_has():
    assert nb.extract_session_variables({}) == {}
    assert nb.extract_session_variables({"results": {"global_step": 3, "other": 1}}) == {
        "global_step": 3}


def test_cell_35_keeps_the_checkpoint_that_cell_34_loaded(capsys):
    """Cell 35 used to replace Cell 34's `checkpoint_path` (maybe CHECKPOINT_OVERRIDE) with
    Cell 33's best checkpoint. Run the cell's own code on a session namespace."""
    results = {"checkpoint_path": "best.pt", "latest_checkpoint_path": "latest.pt",
               "metrics": [], "best_val_loss": 1.5, "epoch": 0, "global_step": 7}
    namespace = {"results": results, "checkpoint_path": Path("override.pt")}
    exec(notebook_cells()[35], namespace)
    assert namespace["checkpoint_path"] == Path("override.pt")
    assert namespace["best_checkpoint_path"] == "best.pt"
    assert namespace["latest_checkpoint_path"] == "latest.pt" and namespace["global_step"] == 7
    out = capsys.readouterr().out
    assert "✅ checkpoint_path" in out and "override.pt" in out
    # before Cell 33: every extracted variable is None, and the summary says what to run
    namespace = {}
    exec(notebook_cells()[35], namespace)
    assert namespace["best_checkpoint_path"] is None
    assert "run Cell 33 (Checkpoint Recovery)" in capsys.readouterr().out


@pytest.mark.parametrize("init_from, name, preset", [
    ("gpt2-medium", "gpt2-medium", "medium"), ("Scratch", "tiny", "tiny")])
def test_cell_12_checks_the_memory_of_the_model_cell_13_builds(init_from, name, preset, capsys):
    """MODEL_PRESET is tiny but INIT_FROM loads GPT-2 medium: Cell 12 must check medium,
    activations of a BATCH_SIZE x CONTEXT_LENGTH batch in the precision training uses
    included (fp32 on this CPU)."""
    from utils.model.memory import SAFETY_FACTOR, training_memory

    namespace = {"MODEL_PRESET": "tiny", "INIT_FROM": init_from, "device": "cpu",
                 "model_config": GPT2_CONFIGS["tiny"], "BATCH_SIZE": 8, "CONTEXT_LENGTH": 256,
                 "PRECISION": "auto", "ACTIVATION_CHECKPOINTING": False}
    try:
        exec(notebook_cells()[12], namespace)
        text = capsys.readouterr().out
    except forms.StopRun as stop:  # too big for this machine: the guidance names it too
        text = stop.guidance
    needed = training_memory(GPT2_CONFIGS[preset], 8, 256, "fp32").total * SAFETY_FACTOR
    assert f"{name} needs about" in text, text
    assert (f"{needed / 2**30:.2f} GiB" in text) or (f"{needed / 2**30:.1f} GiB" in text), text


def test_checkpoint_dir_is_local_outside_colab(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runtime.in_colab() is False
    assert runtime.choose_checkpoint_dir() == Path("checkpoints")
    assert (tmp_path / "checkpoints").is_dir()
    assert runtime.choose_checkpoint_dir(str(tmp_path / "x" / "y")) == tmp_path / "x" / "y"
    assert (tmp_path / "x" / "y").is_dir()


@pytest.mark.parametrize("error", [
    ModelNotInitializedError("no model: run Cell 13"),
    NoCheckpointsError("no checkpoints: run Cell 32"),
    ConfigError("bad preset"),
    FileNotFoundError("missing.txt"),
])
def test_friendly_errors_stop_the_cell_with_the_guidance_alone(error, capsys):
    with pytest.raises(forms.StopRun) as stopped, forms.friendly_errors():
        raise error
    rendered = "\n".join(stopped.value._render_traceback_())  # what IPython shows
    assert str(error).split(":")[0] in rendered and "Traceback" not in rendered
    assert "Stopped here" in rendered and rendered.count("❌") == 1
    assert capsys.readouterr().out == ""  # shown once: as the error, not printed as well


@pytest.mark.parametrize("error, fields, hint", [
    (ModelNotInitializedError("no model to load into"), (), "run Cell 13"),
    (NoCheckpointsError("no checkpoints in x"), (), "Cell 32"),
    (ConfigError("min_learning_rate (-0.1) exceeds learning_rate (-1)"), (), "LEARNING_RATE"),
    (ValueError("batch_size must be >= 1, got 0"), (), "BATCH_SIZE"),
    (FileNotFoundError("corpus.txt does not exist"), ("DATA_PATH",), "DATA_PATH"),
    (forms.FormValueError("SEED", -1, "it must be a whole number >= 0"), (), "change SEED"),
    (TrainingOutOfMemoryError("CUDA ran out of memory while training with batch_size=8, "
                              "precision='fp16', activation_checkpointing=False"), (),
     "BATCH_SIZE / PRECISION / ACTIVATION_CHECKPOINTING"),
    (ValueError("precision must be one of ('auto', 'fp32', 'bf16', 'fp16')"), (), "PRECISION"),
])
def test_one_mapping_adds_the_notebook_cell_or_field_to_library_errors(error, fields, hint):
    text = forms.format_error(error, fields)
    assert str(error).split(" (")[0] in text
    assert "▶ In this notebook:" in text and hint in text.split("▶ In this notebook:")[1]
    assert forms.notebook_hint(KeyError("a bug")) is None  # nothing to add for other errors


def test_check_form_names_the_field_and_what_it_must_hold():
    good = {"LEARNING_RATE": 6e-4, "BATCH_SIZE": 8, "MODEL_PRESET": "gpt2", "TOKENIZER": "byte"}
    forms.check_form(good, *good)
    for name, value, words in [("LEARNING_RATE", -1, "positive number"),
                               ("LEARNING_RATE", float("nan"), "positive number"),
                               ("BATCH_SIZE", 2.5, "whole number"),
                               ("BATCH_SIZE", True, "whole number"),
                               ("MODEL_PRESET", "huge", "tiny"),
                               ("TOKENIZER", "gpt3", "byte")]:
        with pytest.raises(forms.FormValueError, match=words) as raised:
            forms.check_form({**good, name: value}, name)
        assert raised.value.field == name and str(raised.value).startswith(f"{name} = ")
    with pytest.raises(forms.FormValueError, match="not set"):
        forms.check_form({}, "SEED")


def test_every_settings_field_has_a_rule_and_a_cell_that_checks_it():
    """Each form field of Cell 3 is validated (check_form) by some cell, by the rule in
    FORM_FIELDS: a new field without either fails here."""
    cells = notebook_cells()
    fields = re.findall(r"^(\w+) = .+# @param", cells[3], re.MULTILINE)
    assert set(fields) == set(forms.FORM_FIELDS)
    checked = set()
    for source in cells.values():
        for call in ast.walk(ast.parse(source)):
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "check_form":
                checked |= {arg.value for arg in call.args if isinstance(arg, ast.Constant)}
    assert checked == set(fields), set(fields) ^ checked


def test_init_source_reads_scratch_sizes_paths_and_refuses_stray_words(tmp_path):
    assert forms.init_source("Scratch") == forms.init_source(" ") == "scratch"
    assert forms.init_source("gpt2") == "small" and forms.init_source("GPT2-XL") == "xl"
    assert forms.init_source(str(tmp_path)) == str(tmp_path)
    assert forms.init_source("openai-community/gpt2") == "openai-community/gpt2"
    for stray in ("scrach", "gpt7", "./missing-folder"):
        with pytest.raises(forms.FormValueError, match="INIT_FROM"):
            forms.init_source(stray)


def test_quick_mode_says_which_settings_it_replaced():
    namespace = {"QUICK_MODE_STEPS": 12, "MODEL_PRESET": "small", "BATCH_SIZE": 4,
                 "CONTEXT_LENGTH": 64}
    text = forms.apply_quick_mode(namespace)
    assert "MODEL_PRESET 'small' → 'tiny'" in text and "MAX_STEPS None → 12" in text
    assert "BATCH_SIZE" not in text  # already 4: not replaced
    assert namespace["MODEL_PRESET"] == "tiny" and namespace["MAX_STEPS"] == 12


def test_friendly_errors_let_programming_errors_raise():
    with pytest.raises(TypeError), forms.friendly_errors():
        raise TypeError("a bug, not a user error")


def test_checkpoint_dir_that_is_a_file_names_the_field(tmp_path):
    (tmp_path / "file").write_text("x")
    for requested in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(forms.FormValueError, match="CHECKPOINT_DIR .* is a file"):
            runtime.choose_checkpoint_dir(requested)


def test_environment_report_names_torch_and_device():
    import torch

    report = runtime.environment_report()
    assert f"PyTorch {torch.__version__}" in report
    assert f"Device used: {runtime.default_device()}" in report


def test_environment_report_states_the_precision_training_will_choose(monkeypatch):
    """On a T4 torch says bf16 is supported (emulated); training picks fp16, and Cell 1
    must say the same, not "bf16 supported: yes"."""
    import torch

    t4 = type("Props", (), {"name": "Tesla T4", "total_memory": 15e9})()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: t4)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(runtime, "default_device", lambda: "cuda")
    report = runtime.environment_report()
    assert "bf16 supported" not in report
    assert 'Precision (PRECISION = "auto"): fp16 (auto: Tesla T4 has compute capability 7.5' \
        in report
    from utils.training.engine.precision import choose_precision

    assert choose_precision("cuda", (7, 5))[0].name == "fp16"  # what the Trainer runs


def test_install_requirements_skips_when_everything_is_present(capsys):
    assert runtime.missing_modules() == []
    assert runtime.install_requirements("does-not-matter.txt") is False
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
    for name, tensor in model.state_dict().items():  # moved to the GPU where there is one
        assert torch.equal(tensor.cpu(), saved[name]), name
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
    logits = kernel.value(f"model(torch.tensor({ids}, device=model.lm_head.weight.device)).tolist()")
    assert torch.allclose(torch.tensor(logits), expected, atol=1e-5, rtol=0)
    assert kernel.value("model_config.embedding_dimension") == 32  # the folder's, not Cell 11's


def test_the_widget_picker_shows_a_load_error_with_the_notebook_hint(two_checkpoints, capsys,
                                                                    tiny_config, monkeypatch):
    """The picker's Load button shows errors through the same mapping as the cells: Cell 34
    (load_weights_cell) gives the picker `format_error`."""
    from utils import widgets
    from utils.model import GPTModel

    made = []
    monkeypatch.setattr(widgets, "checkpoint_picker",
                        lambda *args, **kwargs: made.append(kwargs) or None)
    nb.load_weights_cell({"model": GPTModel(tiny_config)}, two_checkpoints, use_widget=True)
    assert made[0]["describe_error"] is forms.format_error
    monkeypatch.undo()

    def fail(path):
        raise NoCheckpointsError(f"nothing to load at {path}")

    picker = widgets.checkpoint_picker(two_checkpoints, on_load=fail, force_widgets=True,
                                       describe_error=made[0]["describe_error"])
    picker.button.click()
    shown = capsys.readouterr().out  # outside a kernel, the Output widget lets prints through
    assert isinstance(picker.error, NoCheckpointsError)
    assert "nothing to load at" in shown and "▶ In this notebook: train first (Cell 32)" in shown


def test_cell_3_model_data_and_logging_fields_come_from_their_definitions():
    """DROPOUT is ModelConfig's default, VAL_FRACTION/VAL_SPLIT load_data's (with the splits
    it offers); LOG_TO and SAMPLE_EVERY keep TrainingConfig's meaning with the notebook's
    demo values (TensorBoard and a CSV, samples on)."""
    import inspect

    from utils.config import setting_help
    from utils.data import SPLITS, load_data

    source = notebook_cells()[3]
    values = {node.targets[0].id: ast.literal_eval(node.value)
              for node in ast.parse(source).body if isinstance(node, ast.Assign)}
    defaults = inspect.signature(load_data).parameters
    assert values["DROPOUT"] == ModelConfig().dropout_rate
    assert values["VAL_FRACTION"] == defaults["val_fraction"].default
    assert values["VAL_SPLIT"] == defaults["split"].default
    assert f"# @param {list(SPLITS)}".replace("'", '"') in source
    assert values["LOG_TO"] == "tensorboard,csv" and values["SAMPLE_EVERY"] > 0
    for variable, setting in (("LOG_TO", "log_to"), ("SAMPLE_EVERY", "sample_every")):
        assert f"# {variable}: {setting_help(setting)}" in source
    for variable in ("GRADIENT_ACCUMULATION_STEPS", "KEEP_LAST", "KEEP_BEST", "WEIGHT_DECAY"):
        assert variable in load_builder().TRAINING_FORM_FIELDS


def test_cell_3s_new_fields_reach_the_data_model_and_training_settings(kernel, tmp_path):
    parameters = {**ERROR_PARAMETERS, "QUICK_MODE": False, "MODEL_PRESET": "tiny",
                  "CONTEXT_LENGTH": 32, "BATCH_SIZE": 2, "MAX_STEPS": 4,
                  "CHECKPOINT_DIR": str(tmp_path / "ck"), "OUTPUT_DIR": str(tmp_path / "out"),
                  "GRADIENT_ACCUMULATION_STEPS": 3, "WEIGHT_DECAY": 0.02, "KEEP_LAST": None,
                  "KEEP_BEST": 2, "DROPOUT": 0.25, "VAL_FRACTION": 0.2, "VAL_SPLIT": "block",
                  "LOG_TO": "CSV", "SAMPLE_EVERY": 3}
    kernel.run_cells([1, 2, 3, 4, 5, 6, 7, 9, 11, 15], parameters)
    settings = kernel.value(
        "{k: getattr(training_config, k) for k in ('gradient_accumulation_steps', "
        "'weight_decay', 'keep_last', 'keep_best', 'log_to', 'sample_every', 'sample_prompt')}")
    assert settings == {"gradient_accumulation_steps": 3, "weight_decay": 0.02,
                        "keep_last": None, "keep_best": 2, "log_to": "csv",
                        "sample_every": 3, "sample_prompt": "The meaning of life is"}
    assert kernel.value("model_config.dropout_rate") == 0.25
    assert kernel.value("data.split").startswith("20% of") and "blocks" in kernel.value("data.split")
    share = kernel.value("len(val_tokens) / (len(train_tokens) + len(val_tokens))")
    assert share == pytest.approx(0.2, abs=0.02)


def test_quick_mode_keeps_the_tiny_models_dropout():
    namespace = {"QUICK_MODE_STEPS": 5, "DROPOUT": 0.1}
    assert "DROPOUT 0.1 → 0.0" in forms.apply_quick_mode(namespace)
    assert namespace["DROPOUT"] == GPT2_CONFIGS["tiny"].dropout_rate


def test_tensorboard_cell_shows_it_inline_where_a_page_can_and_the_command_elsewhere(
        tmp_path, capsys):
    from utils.config import TrainingConfig

    class Shell:
        calls: list[tuple[str, str]] = []

        def run_line_magic(self, name: str, line: str) -> None:
            self.calls.append((name, line))

    config = TrainingConfig(checkpoint_dir=str(tmp_path / "ck"), log_to="tensorboard,csv")
    shell = Shell()
    assert nb.show_tensorboard(config, shell=shell, inline=True) == tmp_path / "ck" / "logs"
    assert shell.calls == [("load_ext", "tensorboard"),
                           ("tensorboard", f"--logdir {tmp_path / 'ck' / 'logs'}")]
    assert not nb.tensorboard_inline()  # no kernel here: never starts a server
    nb.show_tensorboard(config)
    assert f"tensorboard --logdir {tmp_path / 'ck' / 'logs'}" in capsys.readouterr().out
    assert nb.show_tensorboard(TrainingConfig(log_to="csv")) is None
    assert "add \"tensorboard\" to LOG_TO" in capsys.readouterr().out


def test_export_takes_the_loaded_checkpoint_unless_told_otherwise(two_checkpoints, tiny_config):
    import torch

    from utils.model import GPTModel
    from utils.training.engine.recovery import list_checkpoints

    first, second = sorted(list_checkpoints(two_checkpoints), key=lambda i: i.global_step)
    model = GPTModel(tiny_config)  # stands for a model trained on after loading `first`
    namespace = {"model": model, "checkpoint_path": first.path}
    exported, said, path = nb.model_to_export(namespace, "")
    saved = torch.load(first.path, weights_only=True)["model_state_dict"]
    assert path == first.path and exported is not model
    assert all(torch.equal(exported.state_dict()[k].cpu(), v) for k, v in saved.items())
    assert said.startswith(f"{first.path} (the checkpoint Cell 34 loaded: step 1")
    assert nb.model_to_export(namespace, str(second.path)).checkpoint_path == second.path
    assert nb.model_to_export(namespace, " model ").model is model
    alone = nb.model_to_export({"model": model}, "")
    assert alone.model is model and "Cell 34 loaded no checkpoint" in alone.description
    with pytest.raises(forms.FormValueError, match="EXPORT_FROM"):
        nb.model_to_export(namespace, str(two_checkpoints / "missing.pt"))


def test_checkpoints_table_has_the_text_reports_rows_and_arrow(two_checkpoints):
    from utils.reports import available_checkpoints_report, checkpoints_table, resume_text
    from utils.training.engine.recovery import list_checkpoints

    infos = list_checkpoints(two_checkpoints)
    table = checkpoints_table(infos, infos[1].path)
    text = available_checkpoints_report(infos, infos[1].path)
    assert list(table[""]) == ["", "→"] and "→ [1]" in text
    assert list(table.step) == [info.global_step for info in infos]
    assert list(table.file) == [info.filename for info in infos]
    assert list(table.kept) == [resume_text(info) for info in infos]
    assert all(f"({kept})" in text for kept in table.kept)


def test_cell_3_training_settings_come_from_training_config():
    """MAX_STEPS, BATCH_SIZE, ... have TrainingConfig's defaults and meanings (defined once)."""
    from utils.config import setting_default, setting_help

    source = notebook_cells()[3]
    values = {node.targets[0].id: ast.literal_eval(node.value)
              for node in ast.parse(source).body if isinstance(node, ast.Assign)}
    builder = load_builder()
    for variable, setting in builder.TRAINING_FORM_FIELDS.items():
        assert values[variable] == setting_default(setting), variable
        assert f"# {variable}: {setting_help(setting)}" in source


def test_an_os_error_in_a_cell_names_the_path_the_fix_and_the_field():
    import errno

    text = forms.format_error(OSError(errno.ENAMETOOLONG, "File name too long",
                                      "/a/" + "b" * 300), ("CHECKPOINT_DIR",))
    assert "longer than the file system allows" in text and "choose shorter names" in text
    assert "check CHECKPOINT_DIR in Cell 3" in text and "[Errno" not in text
    cache = OSError(errno.ENOSPC, "cannot write the token cache in '/c' (No space left on "
                                  "device); choose a token cache folder that is writable and "
                                  "has free space (cache_dir)")
    hint = forms.format_error(cache, ("DATA_PATH",)).split("▶ In this notebook:")[1]
    assert "CACHE_DIR" in hint  # the token cache's folder field


def test_the_cells_after_training_use_the_notebooks_run():
    class Trained:
        run_id = "20250101-000000-aaaaaa"

    assert nb.notebook_run({"RUN_ID": "", "trainer": Trained()}) == Trained.run_id
    assert nb.notebook_run({"RUN_ID": " 20250102-000000-bbbbbb ", "trainer": Trained()}) == \
        "20250102-000000-bbbbbb"
    assert nb.notebook_run({"RUN_ID": ""}) == "latest"  # a fresh runtime after a crash


def test_cell_37_continues_with_the_runs_saved_settings_to_its_target():
    from utils.config import TrainingConfig

    saved = {"training_config": TrainingConfig(max_steps=100, learning_rate=1e-3,
                                               seed=3, device="cuda").to_dict(),
             "total_steps": 100}
    form = TrainingConfig(max_steps=24, learning_rate=6e-4, seed=9, device="cpu",
                          checkpoint_dir="here", eval_interval=7)
    config = nb.continued_config(saved, form, target=28)
    assert (config.learning_rate, config.seed) == (1e-3, 3)  # the run's own
    assert (config.device, config.checkpoint_dir, config.eval_interval) == ("cpu", "here", 7)
    assert config.max_steps == 100  # an unfinished run keeps its schedule
    assert nb.continued_config({**saved, "total_steps": 24}, form, target=28).max_steps == 28


@pytest.mark.usefixtures("one_thread")
def test_cell_37_continues_the_chosen_run_with_its_settings_and_refuses_other_data(tmp_path,
                                                                                  capsys):
    """RUN_ID names a run trained with another learning rate than the form's: Cell 37
    continues it with its own (its checkpoints say so) up to MAX_STEPS + RESUME_EXTRA_STEPS,
    a second call trains nothing, and on other data it is refused before anything changes."""
    import numpy as np
    import torch

    from tests import _train_worker as worker
    from utils.checkpoint_errors import RunMismatchError
    from utils.data import BatchLoader
    from utils.training.engine.recovery import list_runs

    run_trainer = worker.make_trainer(tmp_path, steps=4, learning_rate=2e-3)
    run_trainer.fit(resume_from=None)
    [run] = list_runs(tmp_path)
    train, val = worker.tokens()
    session = worker.make_trainer(tmp_path, steps=4, learning_rate=5e-4)  # the form's settings
    namespace = {"RUN_ID": run.run_id, "MAX_STEPS": 4, "RESUME_EXTRA_STEPS": 2,
                 "CHECKPOINT_DIR": str(tmp_path), "TOKENIZER": "byte", "model": session.model,
                 "training_config": session.config, "initialised_from": "scratch",
                 "train_loader": BatchLoader(train, 4, worker.MODEL.context_length, seed=7),
                 "val_loader": BatchLoader(val, 4, worker.MODEL.context_length, seed=8)}
    other = dict(namespace, train_loader=BatchLoader(np.flip(train).copy(), 4,
                                                     worker.MODEL.context_length, seed=7))
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with pytest.raises(RunMismatchError, match="trained on other data"):
        nb.continue_training(other)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before

    trainer = nb.continue_training(namespace)
    assert trainer.run_id == run.run_id and trainer.global_step == 6
    newest = max(list_runs(tmp_path)[0].checkpoints, key=lambda info: info.global_step)
    saved = torch.load(newest.path, weights_only=True)
    assert saved["training_config"]["learning_rate"] == 2e-3  # the run's, not the form's
    assert saved["run_id"] == run.run_id and saved["global_step"] == 6
    assert nb.continue_training(dict(namespace, trainer=trainer)) is trainer  # nothing more
    assert "at or past Cell 37's target MAX_STEPS + RESUME_EXTRA_STEPS = 6" in \
        capsys.readouterr().out
