"""The Trainer's fast-by-default pieces (issue 10), on a CPU: no host sync per step, the
precision choice printed once / stored / kept on resume, bf16 and fp16 (CPU GradScaler)
resuming bitwise, compile never writing `_orig_mod.`, activation checkpointing, tokens/s and
MFU in the metrics, and a friendly out-of-memory error."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from tests._cli_helpers import run_cli
from utils.checkpoint_errors import TrainingOutOfMemoryError
from utils.config import ModelConfig, TrainingConfig
from utils.data import BatchLoader
from utils.model import GPTModel
from utils.training.engine.device_loop import DevicePrefetcher, LossMeter
from utils.training.engine.recovery import list_checkpoints
from utils.training.engine.trainer import Trainer

TINY = ModelConfig(vocab_size=64, context_length=16, embedding_dimension=32, number_of_heads=2,
                   number_of_layers=2, dropout_rate=0.1)


pytestmark = pytest.mark.usefixtures("one_thread")


def _tokens() -> tuple[np.ndarray, np.ndarray]:
    data = np.random.default_rng(5).integers(0, TINY.vocab_size, 4000).astype(np.uint16)
    return data[:3500], data[3500:]


def _trainer(folder, val: bool = True, model_config: ModelConfig = TINY,
             **overrides) -> Trainer:
    torch.manual_seed(0)
    settings = dict(max_steps=8, warmup_steps=2, learning_rate=1e-2, min_learning_rate=1e-3,
                    batch_size=4, eval_interval=4, eval_batches=2, checkpoint_interval=4,
                    checkpoint_dir=str(folder) if folder else None, keep_last=None, seed=3,
                    device="cpu")  # the CPU's numerics and sync counting, also on a GPU machine
    settings.update(overrides)
    train, validation = _tokens()
    return Trainer(GPTModel(model_config), TrainingConfig(**settings), train,
                   validation if val else None, progress=False)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------- host syncs

SYNCING = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy")


def _count_syncs(monkeypatch) -> list[str]:
    """Patch the Tensor methods that copy a value to the host (a sync on a GPU)."""
    calls: list[str] = []
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return calls


@pytest.mark.parametrize("log_interval, expected", [(4, 6), (1, 14)])
def test_the_loss_is_read_only_at_log_points_and_evaluations(monkeypatch, log_interval, expected):
    # 12 steps, evaluation every 6 (no validation data: evaluation itself reads nothing)
    trainer = _trainer(None, val=False, max_steps=12, eval_interval=6,
                       log_interval=log_interval, gradient_accumulation_steps=2)
    trainer._setup()
    calls = _count_syncs(monkeypatch)
    history = trainer.fit()
    # log_interval=4: the log window is read at steps 4, 6, 8, 12 and the evaluation
    # window at 6 and 12 -> 6 reads; log_interval=1: 12 + 2. Never one per micro-batch.
    # (The gradient norm comes back with the log window's loss, in the same read.)
    assert len(calls) == expected, calls
    assert [record["step"] for record in history] == [6, 12]


def test_an_evaluation_reads_its_loss_once(monkeypatch):
    trainer = _trainer(None, eval_batches=5)
    trainer._setup()
    calls = _count_syncs(monkeypatch)
    trainer.evaluate()
    assert calls == ["item"]


def test_loss_meter_windows():
    meter = LossMeter("cpu")
    for value in (1.0, 2.0, 4.0):
        meter.add(torch.tensor(value))
    assert meter.read_log() == pytest.approx(7 / 3)
    meter.add(torch.tensor(5.0))
    assert meter.read_log(lambda v: 10 * v) == 50.0  # the reduction runs at reads only
    assert meter.read_record() == 3.0 and meter.read_record() is None


def test_loss_meter_reads_the_gradient_norm_with_the_loss_window():
    meter = LossMeter("cpu")
    for value in (1.0, 3.0):
        meter.add(torch.tensor(value))
    assert meter.read_log_with(torch.tensor(0.5), lambda v: 10 * v) == (20.0, 0.5)
    assert meter.log_steps == 0 and meter.read_record() == 2.0  # the windows stay apart
    meter.add(torch.tensor(4.0))
    assert meter.read_log_with(None) == (4.0, None)


def test_prefetcher_hands_out_the_loaders_batches_and_counts_only_those():
    tokens = np.arange(1000, dtype=np.uint16)
    loader, reference = BatchLoader(tokens, 3, 8, seed=1), BatchLoader(tokens, 3, 8, seed=1)
    batches = DevicePrefetcher(loader, "cpu")
    assert not batches.asynchronous  # pinned copies are for CUDA only
    for step in range(3):
        inputs, targets = next(batches)
        expected = reference.get_batch(step)
        assert torch.equal(inputs, expected[0]) and torch.equal(targets, expected[1])
        assert loader.step == step + 1
    loader.load_state_dict({**loader.state_dict(), "step": 7})  # a resume moves the loader
    assert torch.equal(next(batches)[0], reference.get_batch(7)[0])


def test_prefetcher_prepares_the_next_batch_pinned_on_cuda(monkeypatch):
    """The CUDA path, with pinning and the device copy recorded instead of run."""
    events = []
    monkeypatch.setattr("utils.training.engine.device_loop.pin_memory_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: events.append("pin") or self)
    original_to = torch.Tensor.to

    def fake_to(self, device=None, *args, non_blocking=False, **kwargs):
        if str(device).startswith("cuda"):
            events.append(("to", non_blocking))
            return self
        return original_to(self, device, *args, non_blocking=non_blocking, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    loader = BatchLoader(np.arange(1000, dtype=np.uint16), 2, 8, seed=1)
    batches = DevicePrefetcher(loader, "cuda")
    assert batches.asynchronous
    first = next(batches)
    # batch 0 fetched on demand, batch 1 already pinned and on its way
    assert events == ["pin", "pin", ("to", True), ("to", True)] * 2
    assert batches._ready[0] == 1 and loader.step == 1
    events.clear()
    second = next(batches)
    assert events == ["pin", "pin", ("to", True), ("to", True)]  # only batch 2 is new
    assert torch.equal(second[0], loader.get_batch(1)[0]) and not torch.equal(first[0], second[0])


# ---------------------------------------------------------------- precision

def test_precision_is_printed_once_and_stored(tmp_path, capsys):
    trainer = _trainer(tmp_path)
    trainer.fit(stop_at_step=4)
    trainer.fit()
    printed = capsys.readouterr().out
    assert printed.count("precision: fp32 (auto: fp32 on cpu") == 1
    checkpoint = torch.load(list_checkpoints(tmp_path)[0].path, weights_only=True)
    assert checkpoint["precision"]["name"] == "fp32"
    assert checkpoint["precision"]["requested"] == "auto"
    assert checkpoint["training_config"]["precision"] == "auto"


def test_a_resume_keeps_the_precision_the_run_started_with(tmp_path):
    trainer = _trainer(tmp_path, max_steps=4)
    trainer.fit(stop_at_step=4)
    [info] = [i for i in list_checkpoints(tmp_path) if i.global_step == 4]
    state = torch.load(info.path, weights_only=True)
    # as if the run had been started in bf16 (say, the CPU choice changed since)
    state["precision"] = {"name": "bf16", "requested": "bf16", "device_type": "cpu",
                          "reason": "bf16 requested on cpu"}
    torch.save(state, info.path)
    resumed = _trainer(tmp_path, max_steps=6)
    resumed.fit(resume_from=info.path)
    assert resumed.precision == "bf16"
    assert resumed.precision_choice.reason.startswith("resumed in bf16")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_training_on_cpu_resumes_bitwise(tmp_path, precision):
    straight = _trainer(tmp_path / "straight", precision=precision)
    straight.fit()
    interrupted = _trainer(tmp_path / "split", precision=precision)
    interrupted.fit(stop_at_step=4)
    resumed = _trainer(tmp_path / "split", precision=precision)
    resumed.fit()  # auto-resumes the unfinished run at step 4
    assert resumed.global_step == 8
    _assert_bitwise(_weights(straight), _weights(resumed))
    assert [r["train_loss"] for r in straight.metrics_history] == \
        [r["train_loss"] for r in resumed.metrics_history]
    assert resumed.precision == precision
    if precision == "fp16":
        assert resumed.scaler.is_enabled()
        assert resumed.scaler.state_dict() == straight.scaler.state_dict()
        final = max(list_checkpoints(tmp_path / "split"), key=lambda info: info.global_step)
        saved = torch.load(final.path, weights_only=True)  # the newest keeps the scaler
        assert saved["scaler_state_dict"]["scale"] == straight.scaler.get_scale()


def test_fp16_skips_non_finite_steps_in_the_trainer(tmp_path):
    trainer = _trainer(None, precision="fp16", max_steps=3, val=False)
    trainer._setup()
    before = _weights(trainer)
    scale = trainer.scaler.get_scale()
    # an absurd scale overflows fp16 gradients: the step is skipped and the scale backs off
    trainer.scaler.load_state_dict({**trainer.scaler.state_dict(), "scale": 2.0**60})
    trainer._train_step(trainer.model)
    _assert_bitwise(before, _weights(trainer))
    assert trainer.scaler.get_scale() == 2.0**59 and scale != 2.0**59


# ---------------------------------------------------------------- compile

@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile through TorchDynamo's graph capture, with the eager backend: the wrapper
    (`_orig_mod.`) is real, the numerics stay eager's, and no C++ compiler runs."""
    calls = []
    real = torch.compile

    def compile_eagerly(model, **kwargs):
        if isinstance(model, torch.nn.Module):  # not the Trainer's one-line probe
            calls.append(model)
        return real(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    return calls


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Graph capture may order a few floating-point operations differently (the fused
    loss's in-place scaling among them): equal to rounding, not bitwise."""
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-6, key


def test_compile_trains_evaluates_and_resumes_across_both_ways(tmp_path, eager_compile, capsys):
    # No Q/K/V bias here: the key bias's true gradient is zero (softmax ignores a constant
    # per query), so it is rounding noise that AdamW scales up to full-size updates
    config = ModelConfig.from_dict({**TINY.to_dict(), "use_attention_bias": False})
    trainer = functools.partial(_trainer, model_config=config)
    plain = trainer(tmp_path / "plain")
    plain.fit()
    compiled = trainer(tmp_path / "compiled", compile=True)
    compiled.fit(stop_at_step=2)
    compiled.fit(stop_at_step=4)  # a second session reuses the compiled model
    assert len(eager_compile) == 1 and eager_compile[0] is compiled.model
    assert capsys.readouterr().out.count("torch.compile warm-up: the first step took") == 1
    for info in list_checkpoints(tmp_path / "compiled"):
        keys = torch.load(info.path, weights_only=True)["model_state_dict"].keys()
        assert not any("_orig_mod" in key for key in keys)
    # compiled checkpoint -> uncompiled resume
    resumed = trainer(tmp_path / "compiled", compile=False)
    resumed.fit()
    _assert_close(_weights(plain), _weights(resumed))
    steps = [r["step"] for r in plain.metrics_history]  # 4, 8 (the resumed run also has 2)
    assert [r["val_loss"] for r in plain.metrics_history] == pytest.approx(
        [r["val_loss"] for r in resumed.metrics_history if r["step"] in steps], abs=1e-6)
    # uncompiled checkpoint -> compiled resume
    other = trainer(tmp_path / "other")
    other.fit(stop_at_step=4)
    back = trainer(tmp_path / "other", compile=True)
    back.fit()
    _assert_close(_weights(plain), _weights(back))


def test_compile_without_a_cpp_compiler_warns_and_trains_without_it(tmp_path):
    """A machine where inductor cannot build CPU kernels (no working C++ compiler): one
    warning that says why, then the run trains uncompiled to the end (no traceback)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 100)
    done = run_cli("train", "--data", corpus, "--tokenizer", "byte", "--layers", "1",
                   "--heads", "2", "--dim", "16", "--context", "16", "--max-steps", "3",
                   "--device", "cpu", "--compile", "--no-progress", "--checkpoint-dir",
                   tmp_path / "ck", env={"CXX": str(tmp_path / "no-such-g++")})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "torch.compile cannot build kernels on cpu" in output and "no-such-g++" in output
    assert "Traceback" not in output
    assert len(list((tmp_path / "ck").glob("checkpoint_*step000003_*.pt"))) == 1


def test_a_refused_compile_is_said_once_per_trainer(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("utils.training.engine.trainer.compile_problem",
                        lambda device: "InvalidCxxCompiler: none here")
    trainer = _trainer(tmp_path, compile=True)
    trainer.fit(stop_at_step=4)
    trainer.fit()  # a second session of the same Trainer
    out = capsys.readouterr().out
    assert out.count("torch.compile cannot build kernels") == 1 and "none here" in out
    assert trainer.global_step == 8 and trainer._compiled is None


# ---------------------------------------------------------------- memory

def test_activation_checkpointing_from_the_config(tmp_path):
    plain = _trainer(None, max_steps=3)
    plain.fit()
    checkpointed = _trainer(None, max_steps=3, activation_checkpointing=True)
    checkpointed.fit()
    assert checkpointed.model.activation_checkpointing and not plain.model.activation_checkpointing
    for key, value in _weights(plain).items():
        assert (value - _weights(checkpointed)[key]).abs().max() <= 1e-6, key


def test_out_of_memory_names_the_setting_and_keeps_the_checkpoints(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, checkpoint_interval=2)
    original = trainer._train_step

    def running_out(model):
        if trainer.global_step == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(model)

    monkeypatch.setattr(trainer, "_train_step", running_out)
    with pytest.raises(TrainingOutOfMemoryError) as caught:
        trainer.fit()
    message = str(caught.value)
    assert "batch_size=4" in message and "gradient_accumulation_steps" in message
    assert "activation_checkpointing=True" in message and "intact" in message
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)
    [info] = list_checkpoints(tmp_path)
    assert info.global_step == 2
    torch.load(info.path, weights_only=True)  # whole and readable


# ---------------------------------------------------------------- throughput

def test_tokens_per_second_and_mfu_are_in_the_metrics(tmp_path, monkeypatch):
    from utils.training.engine import trainer as trainer_module

    trainer = _trainer(tmp_path, log_interval=2)
    history = trainer.fit()  # on a CPU: no data-sheet peak, so no MFU
    for record in history:
        assert record["tokens_per_s"] > 0 and record["mfu"] is None
    # with a peak (as on a GPU of the table) the metrics carry it
    monkeypatch.setattr(trainer_module, "peak_flops", lambda device, precision: (1e15, "test"))
    history = _trainer(tmp_path / "with_peak", log_interval=2).fit()
    for record in history:
        assert record["tokens_per_s"] > 0 and 0 < record["mfu"] < 1
    log = next((tmp_path / "with_peak").glob("metrics_*.jsonl")).read_text()
    assert '"mfu"' in log and '"tokens_per_s"' in log


def test_train_step_still_returns_a_float():
    trainer = _trainer(None, val=False)
    assert isinstance(trainer.train_step(), float) and trainer.global_step == 1


@pytest.fixture(autouse=True)
def _no_cuda_reads(monkeypatch):
    """These CPU runs must never plan for a CUDA device (on a machine with a GPU too, where
    torch's own compile machinery may query the card, which is not ours to forbid)."""
    from utils.training.engine import precision

    original = precision._cuda_identity

    def identity(device):
        if device.type == "cuda":
            pytest.fail("asked CUDA for its capability")
        return original(device)

    monkeypatch.setattr(precision, "_cuda_identity", identity)


def test_out_of_memory_message_suggests_a_plan_for_the_gpu():
    from utils.config import GPT2_CONFIGS
    from utils.training.engine.out_of_memory import out_of_memory_message

    settings = {"batch_size": 16, "gradient_accumulation_steps": 1, "precision": "fp16",
                "activation_checkpointing": False, "context_length": 1024}
    message = out_of_memory_message(torch.OutOfMemoryError("CUDA out of memory."), settings,
                                    GPT2_CONFIGS["medium"], 15 * 2**30)
    # gpt2-medium on a 15 GB T4 in fp16: 4 sequences per micro-batch, 4 micro-batches
    assert "batch_size=4, gradient_accumulation_steps=4" in message
    assert "batch_size=16" in message and "CUDA out of memory." in message


# ---------------------------------------------------------------- per-step bookkeeping

def test_train_mode_is_set_once_per_session_not_per_step(tmp_path, monkeypatch):
    """`.train()` walks every module; the loop sets it once per fit() and after nothing
    but a change (evaluation restores the mode it found). A model handed over in eval mode
    still trains with dropout on, bitwise like one handed over in train mode."""
    reference = _trainer(None)
    reference.fit()
    trainer = _trainer(None)
    trainer.model.eval()
    calls = []
    real_train = torch.nn.Module.train

    def counting_train(module, mode=True):
        if module is trainer.model:
            calls.append(mode)
        return real_train(module, mode)

    monkeypatch.setattr(torch.nn.Module, "train", counting_train)
    trainer.fit()
    assert trainer.global_step == 8
    # once at the start, and once back after each of the 2 evaluations: not 8 times
    assert calls.count(True) == 3, calls
    _assert_bitwise(_weights(reference), _weights(trainer))
