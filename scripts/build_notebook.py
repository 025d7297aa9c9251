"""Build `training.ipynb` from the cell sources below (the readable, reviewable source).

    python scripts/build_notebook.py          # rewrite training.ipynb
    python scripts/build_notebook.py --check  # exit 1 if training.ipynb is out of date

Edit the cells here, not in the notebook: diffs stay small and every cell stays a few lines
that call `utils`. Cell numbers 13 and 32-35 are fixed (the recovery guide and seed 003 refer
to them); the others count up in order, so the numbers jump from 16 to 32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_PATH = REPO_ROOT / "training.ipynb"


def title(number: int, name: str) -> str:
    return f'# @title Cell {number} · {name} {{ display-mode: "form" }}\n'


# (kind, source, tags). Code cells start with their Colab form title.
CELLS: list[tuple[str, str, list[str]]] = []


def md(text: str) -> None:
    CELLS.append(("markdown", text.strip() + "\n", []))


def code(number: int, name: str, body: str, tags: list[str] | None = None) -> None:
    CELLS.append(("code", title(number, name) + body.strip() + "\n", tags or []))


md("""
# GPT-2 training workflow

Run the numbered cells top to bottom: set-up, data, model, training with checkpoints, then
recovery, loading, inference and export. Every cell is a few lines that call the `utils`
package, which is tested on its own (`make test`).

**After a crash or a disconnected runtime** (Colab): run Cells 1–13 (set-up, data, model:
quick, the data is cached), then Cell 33 (recover the metrics), Cell 34 (load the weights)
and Cell 35. Cell 37 resumes training from the latest checkpoint. The checkpoints live on
Google Drive in Colab, so they survive the runtime. See `docs/03-crash-recovery-colab.md`.

Cell numbers 13 and 32–35 are fixed because the guides refer to them; the numbers jump from
16 to 32.
""")

md("## 1 · Set-up")

code(1, "Environment and GPU Check", '''
# In Colab the repository is cloned first (set REPO_URL), so that `utils` can be imported.
REPO_URL = ""  # @param {type:"string"}
import os, subprocess, sys
from pathlib import Path

if not Path("utils/notebook.py").exists():
    if not Path("gpt2-training/utils").exists():
        if not REPO_URL:
            raise SystemExit("Open this notebook from the repository folder, or set REPO_URL "
                             "to the repository's git URL so this cell can clone it.")
        subprocess.run(["git", "clone", "-q", REPO_URL, "gpt2-training"], check=True)
    os.chdir("gpt2-training")
sys.path.insert(0, os.getcwd())

from utils.notebook import environment_report
print(environment_report())
''')

code(2, "Install Requirements", '''
# Installs requirements.txt only when something is missing (Colab lacks tiktoken); Colab's
# own torch is kept.
from utils.notebook import install_requirements
installed = install_requirements("requirements.txt")
''')

code(3, "Settings", '''
# Every knob of the run. papermill can override them: -p QUICK_MODE True -p MAX_STEPS 500
QUICK_MODE = False  # @param {type:"boolean"}
QUICK_MODE_STEPS = 30  # @param {type:"integer"}
MODEL_PRESET = "small"  # @param ["tiny", "small", "medium", "large", "xl"]
INIT_FROM = "scratch"  # @param {type:"string"}
DATA_PATH = ""  # @param {type:"string"}
TOKENIZER = "gpt2"  # @param ["gpt2", "byte"]
CONTEXT_LENGTH = 256  # @param {type:"integer"}
MAX_STEPS = 2000  # @param {type:"integer"}
BATCH_SIZE = 8  # @param {type:"integer"}
LEARNING_RATE = 6e-4  # @param {type:"number"}
WARMUP_STEPS = 100  # @param {type:"integer"}
EVAL_INTERVAL = 100  # @param {type:"integer"}
EVAL_BATCHES = 20  # @param {type:"integer"}
CHECKPOINT_INTERVAL = 200  # @param {type:"integer"}
CHECKPOINT_DIR = ""  # @param {type:"string"}
CHECKPOINT_OVERRIDE = ""  # @param {type:"string"}
RESUME_EXTRA_STEPS = 200  # @param {type:"integer"}
PROMPT = "The meaning of life is"  # @param {type:"string"}
OUTPUT_DIR = "outputs"  # @param {type:"string"}
SEED = 1337  # @param {type:"integer"}
# QUICK_MODE: the tiny preset, QUICK_MODE_STEPS steps, small batches (Cell 4).
# INIT_FROM: "scratch", an OpenAI GPT-2 name ("gpt2", "gpt2-medium", ...) or a local folder.
# DATA_PATH: a .txt file or a folder of them; empty means the built-in corpus (no download).
# CHECKPOINT_DIR: empty means Google Drive in Colab, ./checkpoints elsewhere.
# CHECKPOINT_OVERRIDE: a checkpoint file for Cell 34 to load instead of the best one.
# OUTPUT_DIR: where the loss curve and the exported models go.
''', tags=["parameters"])

code(4, "Quick Mode, Seed and Device", '''
import torch
from utils.notebook import default_device

if QUICK_MODE:  # a tiny model and a few steps: the whole notebook runs in minutes on a CPU
    MODEL_PRESET, CONTEXT_LENGTH, MAX_STEPS, BATCH_SIZE = "tiny", 64, QUICK_MODE_STEPS, 4
    WARMUP_STEPS, EVAL_INTERVAL, EVAL_BATCHES, CHECKPOINT_INTERVAL = 5, 10, 2, 10
    RESUME_EXTRA_STEPS = 5
torch.manual_seed(SEED)
device = default_device()
print(f"Quick mode: {QUICK_MODE} | preset: {MODEL_PRESET} | steps: {MAX_STEPS} | "
      f"batch: {BATCH_SIZE} x {CONTEXT_LENGTH} tokens | device: {device}")
''')

code(5, "Google Drive and Checkpoint Folder", '''
# In Colab the checkpoints go to Google Drive, so they survive a crashed runtime.
from utils.notebook import choose_checkpoint_dir
from utils.training.engine.recovery import list_checkpoints

CHECKPOINT_DIR = str(choose_checkpoint_dir(CHECKPOINT_DIR or None))
existing = list_checkpoints(CHECKPOINT_DIR)
print(f"📁 Checkpoint folder: {CHECKPOINT_DIR} ({len(existing)} checkpoints already there)")
if existing:
    print("   Recovering after a crash? Run Cells 6-13, then Cells 33-35 (not Cell 32).")
''')

md("## 2 · Data")

code(6, "Tokenizer", '''
from utils.tokenizer import get_tokenizer

tokenizer = get_tokenizer(TOKENIZER)
example = "Hello, my name is"
ids = tokenizer.encode(example)
print(f"{TOKENIZER}: {tokenizer.n_vocab:,} tokens in the vocabulary")
print(f"{example!r} -> {ids} -> {tokenizer.decode(ids)!r}")
''')

code(7, "Load and Tokenise the Corpus", '''
# Tokenised once and cached on disk: running this again (e.g. after a crash) is instant.
from utils.data import tokenize_corpus
from utils.notebook import friendly_errors

with friendly_errors():  # a wrong DATA_PATH prints what to pass instead
    corpus = tokenize_corpus(DATA_PATH or None, tokenizer_name=TOKENIZER)
    print(f"Source: {corpus.source}")
    print(f"Tokens: {len(corpus.tokens):,} (uint16 memmap, sha256 {corpus.sha256[:12]}...)")
''')

code(8, "Data Statistics", '''
from utils.notebook import corpus_statistics

print(corpus_statistics(corpus, tokenizer).to_string())
''')

code(9, "Train / Validation Split", '''
from utils.data import train_val_split

train_tokens, val_tokens = train_val_split(corpus.tokens, val_fraction=0.1)
print(f"train: {len(train_tokens):,} tokens | validation: {len(val_tokens):,} tokens")
''')

code(10, "Batches", '''
# Batches are a pure function of (seed, step), so a resumed run sees the same data.
from utils.data import BatchLoader

train_loader = BatchLoader(train_tokens, BATCH_SIZE, CONTEXT_LENGTH, seed=SEED)
val_loader = BatchLoader(val_tokens, BATCH_SIZE, CONTEXT_LENGTH, seed=SEED + 1)
x, y = train_loader.get_batch(0)
print(f"batch: x {tuple(x.shape)}, y {tuple(y.shape)}; {train_loader.steps_per_epoch} steps per epoch")
print("first row:", repr(tokenizer.decode(x[0, :32].tolist())), "...")
''')

md("## 3 · Model")

code(11, "Model Configuration", '''
from utils.config import ModelConfig

# The vocabulary is the tokenizer's (GPT-2's 50,257, or 257 for the byte tokenizer).
model_config = ModelConfig.from_preset(MODEL_PRESET, context_length=CONTEXT_LENGTH,
                                       vocab_size=tokenizer.n_vocab)
for field, value in model_config.to_dict().items():
    print(f"{field:>20}: {value}")
''')

code(12, "Memory Check", '''
# Weights, gradients and AdamW state against the free memory, before anything is allocated.
from utils.notebook import friendly_errors
from utils.pretrained.memory import available_ram_bytes, check_memory

with friendly_errors():
    needed = check_memory(model_config, device=device, training=True, name=MODEL_PRESET)
    print(f"✅ training {MODEL_PRESET} needs about {needed / 2**30:.2f} GiB "
          f"(weights, gradients, AdamW); {available_ram_bytes() / 2**30:.1f} GiB RAM free")
''')

code(13, "Initialize Model", '''
# From scratch, or OpenAI's GPT-2 (a Hugging Face name such as "gpt2" or a local folder).
from utils.model import GPTModel, count_parameters
from utils.notebook import friendly_errors
from utils.pretrained.huggingface import load_openai_gpt2

with friendly_errors():
    if INIT_FROM in ("", "scratch"):
        model = GPTModel(model_config).to(device)
    else:
        model, model_config = load_openai_gpt2(INIT_FROM, device=device)
    print(f"✅ model: {count_parameters(model):,} parameters on {device} (init: {INIT_FROM})")
''')

md("## 4 · Before training")

code(14, "Sanity Check: Initial Loss", '''
# An untrained model guesses uniformly, so its loss should be close to ln(vocab_size).
import math

model.eval()
with torch.no_grad():
    x, y = (t.to(device) for t in val_loader.get_batch(0))
    _, initial_loss = model(x, y)
expected = math.log(model_config.vocab_size)
print(f"initial loss {initial_loss.item():.3f} vs ln({model_config.vocab_size}) = {expected:.3f}")
if INIT_FROM in ("", "scratch") and abs(initial_loss.item() - expected) > 1.0:
    print("⚠️  far from ln(vocab): check the initialisation and the data")
''')

code(15, "Training Configuration", '''
from utils.config import TrainingConfig

training_config = TrainingConfig(
    learning_rate=LEARNING_RATE, min_learning_rate=LEARNING_RATE / 10, warmup_steps=WARMUP_STEPS,
    max_steps=MAX_STEPS, batch_size=BATCH_SIZE, eval_interval=EVAL_INTERVAL,
    eval_batches=EVAL_BATCHES, checkpoint_interval=CHECKPOINT_INTERVAL,
    checkpoint_dir=CHECKPOINT_DIR, seed=SEED, device=device,
)
for field, value in training_config.to_dict().items():
    print(f"{field:>26}: {value}")
''')

code(16, "Create the Trainer", '''
from utils.plots import LiveLossPlot
from utils.training.engine.trainer import Trainer

live_plot = LiveLossPlot()
trainer = Trainer(model, training_config, train_loader, val_loader, callbacks=[live_plot],
                  tokenizer_name=TOKENIZER)
print(f"{trainer.total_steps} steps of {trainer.tokens_per_step:,} tokens; "
      f"{trainer.steps_per_epoch} steps per epoch")
''')

md("## 5 · Training")

code(32, "Run Training", '''
# A progress bar shows loss, learning rate and tokens/s; the plot updates at each evaluation.
# Checkpoints are written every CHECKPOINT_INTERVAL steps to CHECKPOINT_DIR.
from utils.notebook import friendly_errors

with friendly_errors():
    history = trainer.fit()
    live_plot.close()
    print(f"✅ trained to step {trainer.global_step}; checkpoints in {CHECKPOINT_DIR}")
''')

md("""
## 6 · Recovery and loading

Cells 33–35 also work in a fresh runtime after a crash: run Cells 1–13 first.
""")

code(33, "Checkpoint Recovery", '''
# Reads every metric back from the checkpoints on disk (the runtime's memory may be gone).
from utils.notebook import friendly_errors
from utils.training.engine.recovery import recover_training_results

with friendly_errors():
    results = recover_training_results(CHECKPOINT_DIR)
    print(f"Recovered {len(results['metrics'])} evaluations up to step {results['global_step']}")
    print(f"Best checkpoint:   {results['checkpoint_path']} (val loss {results['best_val_loss']:.4f})")
    print(f"Latest checkpoint: {results['latest_checkpoint_path']}")
''')

code(34, "Load Model Weights from Checkpoint", '''
# Which checkpoint: CHECKPOINT_OVERRIDE (Cell 3) if set, else Cell 33's choice, else the best.
USE_WIDGET_PICKER = False  # @param {type:"boolean"}
from utils.notebook import friendly_errors, load_weights_cell

with friendly_errors():
    checkpoint_path, checkpoint = load_weights_cell(globals(), CHECKPOINT_DIR,
                                                    override=CHECKPOINT_OVERRIDE or None,
                                                    use_widget=USE_WIDGET_PICKER)
''')

code(35, "Extract Session Variables", '''
# Always prints a summary (seed 003's version printed nothing when everything existed).
from utils.notebook import extract_session_variables, session_summary

globals().update(extract_session_variables(globals()))
print(session_summary(globals()))
''')

md("## 7 · Results")

code(36, "Loss and Learning-Rate Curves", '''
from IPython.display import display
from utils.plots import plot_training_curves, save_figure

metrics = results["metrics"]
figure = plot_training_curves(metrics, title=f"{MODEL_PRESET}: {len(metrics)} evaluations")
save_figure(figure, f"{OUTPUT_DIR}/loss_curve.png")
display(metrics.tail(10))
''')

code(37, "Resume Training from the Latest Checkpoint", '''
# Continues exactly where the latest checkpoint stopped (optimizer, schedule, data position)
# and trains RESUME_EXTRA_STEPS more: an interrupted run keeps its learning-rate schedule
# (up to MAX_STEPS); past MAX_STEPS the run is extended.
# After a crash: Cells 1-13 and 15 first (the settings of the run that wrote the checkpoints).
import dataclasses

from utils.notebook import friendly_errors
from utils.training.engine.recovery import recover_training_results
from utils.training.engine.trainer import Trainer

with friendly_errors():
    latest = recover_training_results(CHECKPOINT_DIR)
    stop_at = latest["global_step"] + RESUME_EXTRA_STEPS
    horizon = max(training_config.max_steps or 0, stop_at)
    resume_config = dataclasses.replace(training_config, max_steps=horizon)
    trainer = Trainer(model, resume_config, train_loader, val_loader, tokenizer_name=TOKENIZER)
    trainer.fit(resume_from="latest", stop_at_step=stop_at)
    print(f"✅ resumed from step {latest['global_step']} to step {trainer.global_step}")
''')

md("## 8 · Inference and evaluation")

code(38, "Generate Text", '''
from utils.generation import generate_from_prompt

for temperature in (0.0, 0.8):  # greedy, then sampled (reproducible with SEED)
    text = generate_from_prompt(model, tokenizer, PROMPT, maximum_new_tokens=40,
                                temperature=temperature, top_k_tokens=50, seed=SEED)
    print(f"--- temperature {temperature} ---")
    print(text)
    print()
''')

code(39, "Validation Perplexity", '''
import math

from utils.training.engine.evaluation import evaluate

val_loss = evaluate(model, val_loader, batches=EVAL_BATCHES, device=device)
print(f"validation loss {val_loss:.4f} | perplexity {math.exp(val_loss):.2f}")
''')

code(40, "Compare Checkpoints", '''
# Which layers moved most between the oldest and the newest checkpoint kept on disk, and
# how their predictions differ (validation loss and a greedy continuation of PROMPT).
from IPython.display import display
from utils.training.engine.compare import (
    compare_checkpoints, compare_predictions, plot_weight_changes)
from utils.training.engine.recovery import list_checkpoints

kept = sorted(list_checkpoints(CHECKPOINT_DIR), key=lambda info: info.global_step)
if len(kept) >= 2:
    changes = compare_checkpoints(kept[0].path, kept[-1].path)
    display(plot_weight_changes(changes, top=12, title=f"Relative weight change, step "
                                f"{kept[0].global_step} → {kept[-1].global_step}"))
    display(compare_predictions([kept[0].path, kept[-1].path], val_tokens, tokenizer, PROMPT,
                                max_new_tokens=15, max_batches=2))
else:
    print("Need at least two checkpoints to compare; train longer (Cell 32).")
''')

md("## 9 · Export")

code(41, "Export to Hugging Face", '''
from utils.pretrained.huggingface import export_to_hf

hf_dir = export_to_hf(model, f"{OUTPUT_DIR}/hf_model")
print(f"✅ saved a transformers folder: GPT2LMHeadModel.from_pretrained({str(hf_dir)!r})")
''')

code(42, "Export Binary Weights", '''
# Seed 002's format for C/C++: docs/binary-weight-format.md describes the layout.
from utils.pretrained.binary import export_binary

binary_dir = export_binary(model, f"{OUTPUT_DIR}/binary")
print(f"✅ binary weights in {binary_dir}")
''')


def build() -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata.update({
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "accelerator": "GPU",
        "colab": {"provenance": [], "gpuType": "T4"},
    })
    for index, (kind, source, tags) in enumerate(CELLS):
        cell = (nbformat.v4.new_markdown_cell(source) if kind == "markdown"
                else nbformat.v4.new_code_cell(source))
        cell.id = f"cell-{index:02d}"  # stable ids: rebuilding gives an identical file
        if tags:
            cell.metadata["tags"] = tags
        notebook.cells.append(cell)
    nbformat.validate(notebook)
    return notebook


def render() -> str:
    return nbformat.writes(build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if training.ipynb differs from what this script builds")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = NOTEBOOK_PATH.read_text() if NOTEBOOK_PATH.exists() else ""
        if current != text:
            print("training.ipynb is out of date: run python scripts/build_notebook.py")
            return 1
        print("training.ipynb is up to date")
        return 0
    NOTEBOOK_PATH.write_text(text)
    print(f"wrote {NOTEBOOK_PATH.relative_to(REPO_ROOT)} ({len(CELLS)} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
