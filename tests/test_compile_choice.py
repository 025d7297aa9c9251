"""`compile="auto"`: on for CUDA runs long enough to repay the warm-up (T4 included), eager
on CPUs, on GPUs without Triton support and for short runs; True/False win. The GPU cases
pass the device's properties in (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from utils.config import GPT2_CONFIGS, ConfigError, TrainingConfig
from utils.model import GPTModel
from utils.training.engine import compiling
from utils.training.engine.compiling import WARMUP_S, choose_compile, resolve_compile
from utils.training.engine.throughput import flops_per_token, gpu_peak_flops


def _gpt2_small_step_flops(batch: int) -> float:
    config = GPT2_CONFIGS["small"]
    n = 124_439_808 - config.context_length * config.embedding_dimension
    per_token = flops_per_token(n, config.number_of_layers, config.number_of_heads,
                                config.head_dimension, config.context_length)
    return per_token * batch * config.context_length


def test_explicit_values_win():
    assert choose_compile(True, "cpu").enabled
    assert not choose_compile(False, "cuda", (9, 0), steps=10**6, flops_per_step=1e13).enabled


def test_auto_is_eager_on_cpu_and_mps():
    for device in ("cpu", "mps"):
        choice = choose_compile("auto", device, steps=10**6, flops_per_step=1e13)
        assert not choice.enabled and device in choice.reason


def test_auto_is_eager_below_triton_capability():
    choice = choose_compile("auto", "cuda", (6, 0), steps=10**6, flops_per_step=1e13,
                            peak_flops=21e12)
    assert not choice.enabled and "6.0" in choice.reason


@pytest.mark.parametrize("card, capability, precision, batch", [
    ("NVIDIA H200", (9, 0), "bf16", 16), ("NVIDIA A100-SXM4-40GB", (8, 0), "bf16", 16),
    ("Tesla T4", (7, 5), "fp16", 8)])
def test_auto_compiles_long_gpu_runs_and_not_short_ones(card, capability, precision, batch):
    peak = gpu_peak_flops(card, precision)
    flops = _gpt2_small_step_flops(batch)
    long_run = choose_compile("auto", "cuda", capability, steps=20_000, flops_per_step=flops,
                              peak_flops=peak)
    short_run = choose_compile("auto", "cuda", capability, steps=50, flops_per_step=flops,
                               peak_flops=peak)
    assert long_run.enabled and "warm-up" in long_run.reason
    assert not short_run.enabled and "50 steps" in short_run.reason


def test_a_t4_repays_the_warm_up_sooner_than_an_h100():
    """The same run saves more seconds on a slow card: a T4 compiles a 1000-step GPT-2
    small run that an H200 finishes eagerly before compiling would have paid off."""
    flops = _gpt2_small_step_flops(8)
    t4 = choose_compile("auto", "cuda", (7, 5), steps=1000, flops_per_step=flops,
                        peak_flops=gpu_peak_flops("Tesla T4", "fp16"))
    h200 = choose_compile("auto", "cuda", (9, 0), steps=1000, flops_per_step=flops,
                          peak_flops=gpu_peak_flops("NVIDIA H200", "bf16"))
    assert t4.enabled and not h200.enabled


def test_an_unknown_card_is_estimated_not_refused():
    choice = choose_compile("auto", "cuda", (8, 9), steps=100_000,
                            flops_per_step=_gpt2_small_step_flops(8), peak_flops=None)
    assert choice.enabled


def test_resolve_asks_the_device_only_on_cuda_for_auto(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("a CPU decision must not ask CUDA")

    monkeypatch.setattr(torch.cuda, "get_device_capability", no_cuda)
    monkeypatch.setattr(torch.cuda, "get_device_name", no_cuda)
    assert not resolve_compile("auto", torch.device("cpu"), steps=10**6, flops_per_step=1e13,
                               precision="fp32").enabled
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla T4")
    choice = resolve_compile("auto", torch.device("cuda"), steps=20_000,
                             flops_per_step=_gpt2_small_step_flops(8), precision="fp16")
    assert choice.enabled


def test_the_setting_accepts_auto_on_off_and_booleans():
    assert TrainingConfig().compile == "auto"
    assert TrainingConfig(compile="on").compile is True
    assert TrainingConfig(compile="Off").compile is False
    assert TrainingConfig(compile=True).compile is True
    assert TrainingConfig.from_dict({"compile": False}).compile is False  # older checkpoints
    with pytest.raises(ConfigError, match="compile"):
        TrainingConfig(compile="yes please")
    with pytest.raises(ConfigError, match="compile"):
        TrainingConfig(compile=1)


def test_trainer_on_cpu_with_auto_stays_eager_and_says_nothing(tmp_path, monkeypatch, capsys):
    from utils.training.engine.trainer import Trainer

    def refuse(*args, **kwargs):
        raise AssertionError("auto on a CPU must not compile")

    monkeypatch.setattr(torch, "compile", refuse)
    config = GPT2_CONFIGS["tiny"]
    model = GPTModel(config)
    tokens = torch.randint(0, config.vocab_size, (3000,)).numpy().astype("uint16")
    trainer = Trainer(model, TrainingConfig(max_steps=2, batch_size=2, eval_interval=2,
                                            eval_batches=1, checkpoint_dir=None, device="cpu"),
                      tokens[:2500], tokens[2500:], progress=False, context_length=32)
    trainer.fit()
    assert trainer.global_step == 2 and trainer._compiled is None
    assert "torch.compile" not in capsys.readouterr().out


def test_trainer_decides_from_the_whole_step_budget(monkeypatch):
    """A resumed session decides as the first one did: the run's total steps count, not
    what is left of them (so the kernels, and with them the numbers, stay the same)."""
    from utils.training.engine.trainer import Trainer

    seen = {}

    def spy(requested, device, *, steps, flops_per_step, precision):
        seen.update(steps=steps, flops=flops_per_step)
        return compiling.CompileChoice(False, "spy")

    monkeypatch.setattr("utils.training.engine.trainer.resolve_compile", spy)
    config = GPT2_CONFIGS["tiny"]
    tokens = torch.randint(0, config.vocab_size, (3000,)).numpy().astype("uint16")
    trainer = Trainer(GPTModel(config), TrainingConfig(max_steps=6, batch_size=2, eval_interval=6,
                                                       eval_batches=1, checkpoint_dir=None,
                                                       device="cpu"),
                      tokens[:2500], tokens[2500:], progress=False, context_length=32)
    trainer.fit(stop_at_step=3)
    assert seen["steps"] == 6 and seen["flops"] > 0
    assert WARMUP_S > 0
