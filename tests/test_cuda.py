"""The CUDA paths, run for real on a GPU: automatic precision on the card at hand, resuming
in bf16 and fp16 (GradScaler state included), no host sync per optimizer step, pinned
prefetching, torch.compile for training, evaluation and generation, an out-of-memory error
that names the setting to change, torchrun on one GPU and the clear refusal of more
processes than GPUs (NCCL with two ranks needs two GPUs: not tested here).

Every test here is skipped, with that reason, on a machine without CUDA (CI, this project's
development machine); the CPU halves of the same behaviour are tested elsewhere
(test_precision.py, test_trainer_speed.py, test_distributed.py). docs/benchmarks.md records
the GPU these last ran on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tests import _train_worker as worker
from tests._cli_helpers import run_cli
from tests._run_helpers import file_hashes
from utils.config import ModelConfig, TrainingConfig
from utils.model import GPTModel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

REPO = Path(__file__).resolve().parent.parent
CAPABILITY = torch.cuda.get_device_capability() if torch.cuda.is_available() else (0, 0)


def _run(args: list[str], timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **env})


def _tf32_on() -> bool:
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        return matmul.fp32_precision == "tf32"
    return bool(matmul.allow_tf32)


def test_auto_precision_is_what_the_card_runs_natively_with_tf32_while_training(tmp_path):
    from utils.training.engine.precision import resolve_precision

    choice = resolve_precision("cuda", "auto")
    expected = "bf16" if CAPABILITY >= (8, 0) else "fp16"
    assert choice.name == expected and choice.uses_grad_scaler == (expected == "fp16")
    assert torch.cuda.get_device_name() in choice.reason and "TF32" in choice.reason
    before = _tf32_on()
    during = []
    trainer = worker.make_trainer(tmp_path, steps=4, device="cuda")
    trainer.callbacks.append(lambda record: during.append(_tf32_on()))
    trainer.fit(resume_from=None)
    assert during and all(during) and trainer.precision == expected
    assert _tf32_on() == before  # full fp32 again outside training


RESUME_SCRIPT = """
import json, sys, torch
torch.use_deterministic_algorithms(True)
from tests._train_worker import make_trainer
precision, root = sys.argv[1], sys.argv[2]
settings = dict(device="cuda", precision=precision)
full = make_trainer(root + "/full", **settings)
full.fit(resume_from=None)
part = make_trainer(root + "/part", **settings)
part.fit(resume_from=None, stop_at_step=10)
rest = make_trainer(root + "/part", **settings)
rest.fit()
from utils.training.engine.listing import list_checkpoints
state = torch.load(list_checkpoints(root + "/part")[-1].path, weights_only=True)
equal = all(torch.equal(a, b) for a, b in zip(full.model.state_dict().values(),
                                               rest.model.state_dict().values()))
print(json.dumps({"equal": equal, "resumed_at": 10, "precision": rest.precision,
                  "stored": state["precision"]["name"],
                  "scaler": state["scaler_state_dict"],
                  "steps": [full.global_step, rest.global_step],
                  "cuda_rng": len(state["rng_state"]["cuda"])}, default=str))
"""


@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_resume_is_bitwise_on_the_gpu(tmp_path, precision):
    """A run stopped at step 10 and resumed by a new Trainer ends with the weights of the
    uninterrupted run, bit for bit (with deterministic kernels: CUDA's atomic adds are
    otherwise free to sum in any order); the checkpoint stores the precision, the CUDA RNG
    (dropout is on) and, for fp16, the GradScaler."""
    done = _run([sys.executable, "-c", RESUME_SCRIPT, precision, str(tmp_path)],
                CUBLAS_WORKSPACE_CONFIG=":4096:8")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = precision if precision != "auto" else ("bf16" if CAPABILITY >= (8, 0) else "fp16")
    assert result["steps"] == [worker.STEPS, worker.STEPS]
    assert (result["precision"], result["stored"]) == (expected, expected)
    assert result["cuda_rng"] >= 1
    if expected == "fp16":
        assert result["scaler"] and float(result["scaler"]["scale"]) > 0
    else:
        assert result["scaler"] is None
    assert result["equal"], "resumed weights differ from the uninterrupted run"
    assert "resuming run" in done.stdout and "at step 10" in done.stdout


def _sync_warnings(steps: int) -> int:
    """Synchronising CUDA calls that `torch.cuda.set_sync_debug_mode` flags during a fit of
    `steps` steps with one log point and one evaluation at the end."""
    torch.manual_seed(0)
    train, val = worker.tokens()
    config = TrainingConfig(max_steps=steps, batch_size=4, eval_interval=steps,
                            log_interval=steps, eval_batches=2, checkpoint_dir=None,
                            device="cuda", warmup_steps=2)
    from utils.training.engine.trainer import Trainer

    trainer = Trainer(GPTModel(worker.MODEL), config, train, val, progress=False)
    trainer.train_step()  # lazy CUDA initialisation (handles, allocator) stays out of it
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.fit(resume_from=None)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_no_host_sync_per_optimizer_step():
    """The count of synchronising calls does not grow with the number of steps: the loss
    is read at log points and evaluations only, batches come from pinned memory."""
    if CAPABILITY < (8, 0):
        pytest.skip("fp16's GradScaler reads found_inf every step (a sync PyTorch makes)")
    _sync_warnings(4)  # one-time work (kernels' first use) stays out of the count
    short, long = _sync_warnings(10), _sync_warnings(40)
    assert short == long, f"{short} syncs in 10 steps but {long} in 40"


def test_prefetcher_hands_out_the_loaders_batches_from_pinned_memory():
    import numpy as np

    from utils.data import BatchLoader
    from utils.training.engine.device_loop import DevicePrefetcher

    tokens = np.arange(10_000, dtype=np.uint16)
    loader, reference = BatchLoader(tokens, 4, 16, seed=3), BatchLoader(tokens, 4, 16, seed=3)
    batches = DevicePrefetcher(loader, "cuda")
    assert batches.asynchronous
    for step in range(5):
        inputs, targets = next(batches)
        expected = reference.get_batch(step)
        assert inputs.is_cuda and torch.equal(inputs.cpu(), expected[0])
        assert torch.equal(targets.cpu(), expected[1])
        assert loader.step == step + 1  # the batch prepared ahead is not counted
    assert batches._ready[1].is_cuda


def _compile_trainer(folder: Path, compiled: bool, steps: int):
    from utils.training.engine.trainer import Trainer

    torch.manual_seed(0)
    train, val = worker.tokens()
    config = TrainingConfig(max_steps=steps, batch_size=4, eval_interval=4, eval_batches=2,
                            checkpoint_dir=str(folder), checkpoint_interval=4, device="cuda",
                            compile=compiled, warmup_steps=2)
    return Trainer(GPTModel(worker.MODEL), config, train, val, progress=False)


def test_compile_trains_evaluates_and_resumes_both_ways(tmp_path, capsys):
    """Compiled training writes plain state dicts (no `_orig_mod.`), an uncompiled Trainer
    resumes them and a compiled one resumes an uncompiled run's checkpoints; the compiled
    evaluation gives the plain model's loss; the warm-up is reported."""
    from utils.training.engine.checkpoint import load_checkpoint_file
    from utils.training.engine.listing import list_checkpoints

    compiled = _compile_trainer(tmp_path / "a", True, 8)
    compiled.fit(stop_at_step=4)
    assert "torch.compile warm-up" in capsys.readouterr().out
    [first] = list_checkpoints(tmp_path / "a")
    keys = load_checkpoint_file(first.path)["model_state_dict"].keys()
    assert keys and not any("_orig_mod" in k for k in keys)
    plain = _compile_trainer(tmp_path / "a", False, 8)
    plain.fit()  # auto: the same run (compile is not part of its identity) continues
    assert plain.global_step == 8 and plain.run_id == compiled.run_id

    plain_run = _compile_trainer(tmp_path / "b", False, 8)
    plain_run.fit(stop_at_step=4)
    again = _compile_trainer(tmp_path / "b", True, 8)
    again.fit()
    assert again.global_step == 8 and again.run_id == plain_run.run_id
    compiled_loss = again.evaluate()["val_loss"]
    again._compiled = None  # the plain module with the same weights
    assert compiled_loss == pytest.approx(again.evaluate()["val_loss"], abs=2e-2)


def test_generation_with_a_compiled_model_gives_the_plain_models_ids():
    from utils.generation import generate_text

    torch.manual_seed(0)
    model = GPTModel(ModelConfig(vocab_size=257, context_length=64, embedding_dimension=64,
                                 number_of_heads=4, number_of_layers=2,
                                 dropout_rate=0.0)).cuda().eval()
    prompt = [5, 17, 42]
    plain = generate_text(model, prompt, 20, temperature=0)
    compiled = generate_text(torch.compile(model), prompt, 20, temperature=0)
    assert compiled == plain


def test_out_of_memory_names_the_setting_and_keeps_every_checkpoint(tmp_path):
    """A batch far beyond the card's memory ends in TrainingOutOfMemoryError naming
    batch_size with a size that fits; the folder's files (another run's) are unchanged,
    and the GPU's memory is free again for the next attempt."""
    from utils.checkpoint_errors import TrainingOutOfMemoryError
    from utils.training.engine.trainer import Trainer

    good = worker.make_trainer(tmp_path, steps=6, device="cuda")
    good.fit(resume_from=None)
    before = file_hashes(tmp_path)
    config = ModelConfig(vocab_size=50304, context_length=1024, embedding_dimension=256,
                         number_of_heads=4, number_of_layers=2, dropout_rate=0.0)
    total = torch.cuda.get_device_properties(0).total_memory
    # bf16 logits alone: batch x 1024 x 50304 x 2 bytes, several times the card
    batch = int(4 * total / (1024 * 50304 * 2)) + 1
    tokens = torch.randint(0, 50304, (batch * 1024 + 2,)).numpy().astype("uint16")
    huge = Trainer(GPTModel(config), TrainingConfig(
        max_steps=2, batch_size=batch, checkpoint_dir=str(tmp_path), device="cuda",
        eval_interval=2, checkpoint_interval=1), tokens, progress=False)
    with pytest.raises(TrainingOutOfMemoryError) as caught:
        huge.fit(resume_from=None)
    message = str(caught.value)
    assert f"batch_size={batch}" in message and "Estimated to fit this GPU" in message
    assert "activation_checkpointing" in message and "intact" in message
    del huge, caught
    import gc

    gc.collect()
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated() < 2**30
    assert {k: v for k, v in file_hashes(tmp_path).items() if k in before} == before


def test_out_of_memory_on_the_command_line_is_one_error_line(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("To be, or not to be, that is the question. " * 4000)
    total = torch.cuda.get_device_properties(0).total_memory
    batch = int(4 * total / (256 * 50257 * 2)) + 1
    done = run_cli("train", "--data", data, "--preset", "tiny", "--context", "256",
                   "--batch-size", batch, "--max-steps", "2", "--checkpoint-dir",
                   tmp_path / "ckpt", "--device", "cuda", "--no-progress")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error:") and "batch" in done.stderr, done.stderr[-2000:]


def test_torchrun_with_one_process_trains_on_the_gpu(tmp_path):
    """One process needs no process group (NCCL itself needs two GPUs to test)."""
    out = tmp_path / "out.pt"
    done = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node=1", str(REPO / "tests" / "_ddp_worker.py"),
                 str(tmp_path / "ckpt"), str(out), "--device", "cuda"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = torch.load(out, weights_only=True)
    assert result["world_size"] == 1 and result["backend"] is None
    assert [h["step"] for h in result["history"]] == [5, 10]


@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="needs a machine with one GPU")
def test_more_processes_than_gpus_is_one_clear_line(tmp_path):
    done = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node=2", "-m", "utils", "train", "--data",
                 str(REPO / "README.md"), "--preset", "tiny", "--max-steps", "2",
                 "--device", "cuda", "--no-progress"])
    assert done.returncode != 0
    assert "NCCL needs one GPU per process" in done.stdout + done.stderr
    assert "--nproc_per_node=1" in done.stdout + done.stderr


@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_loggers_gradient_norms_and_samples_on_the_gpu(tmp_path, precision, capsys):
    """TensorBoard and the CSV on a GPU run: the gradient norm is the true one (fp16: read
    after unscaling, not 65536 times too large), MFU where the card's peak is known, and the
    text samples generate from the model on the GPU."""
    import pandas as pd
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = worker.make_trainer(tmp_path, steps=6, device="cuda", precision=precision,
                                  grad_clip=None, log_to="tensorboard,csv", log_interval=1,
                                  sample_every=2, sample_prompt="0 1")
    trainer.fit(resume_from=None)
    [folder] = (tmp_path / "logs").iterdir()
    table = pd.read_csv(folder / "metrics.csv")
    train = table[table.kind == "train"]
    assert list(train.step) == [1, 2, 3, 4, 5, 6]
    finite = train.grad_norm[train.grad_norm.abs() < float("inf")]  # fp16 may skip a step
    assert len(finite) >= 4 and finite.between(1e-3, 1e2).all(), train.grad_norm
    assert list(table[table.kind == "sample"].step) == [2, 4, 6]
    assert capsys.readouterr().out.count("--- sample at step") == 3
    board = EventAccumulator(str(folder))
    board.Reload()
    assert [e.step for e in board.Scalars("train/grad_norm")] == [1, 2, 3, 4, 5, 6]
    if "H100" in torch.cuda.get_device_name() or "H200" in torch.cuda.get_device_name():
        assert [e.step for e in board.Scalars("train/mfu")] == [1, 2, 3, 4, 5, 6]
