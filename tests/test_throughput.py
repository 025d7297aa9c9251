"""FLOPs per token (nanoGPT's estimate_mfu count), the GPU peak table, the measured CPU peak,
and the tokens/s + MFU meter."""

from __future__ import annotations

import pytest
import torch

from utils.config import GPT2_CONFIGS, ModelConfig
from utils.model import GPTModel
from utils.training.engine import throughput as T


def test_gpt2_small_flops_per_token_by_hand():
    with torch.device("meta"):
        model = GPTModel(GPT2_CONFIGS["small"])
    n = 124_439_808 - 1024 * 768  # HF's parameter count minus the position embedding
    expected = 6 * n + 12 * 12 * 12 * 64 * 1024
    assert expected == 855_166_464
    assert T.model_flops_per_token(model) == expected
    # a shorter training context changes only the attention term
    assert T.model_flops_per_token(model, context_length=256) == 6 * n + 12 * 12 * 12 * 64 * 256


def test_flops_per_token_sees_through_wrappers_and_hugging_face_configs():
    config = ModelConfig(vocab_size=65, context_length=64, embedding_dimension=128,
                         number_of_heads=4, number_of_layers=4, dropout_rate=0.0,
                         use_attention_bias=False)
    model = GPTModel(config)
    bare = T.model_flops_per_token(model)

    class Wrapper(torch.nn.Module):  # what DDP (`module`) and torch.compile (`_orig_mod`) add
        def __init__(self, inner, attribute):
            super().__init__()
            setattr(self, attribute, inner)

    assert T.model_flops_per_token(Wrapper(Wrapper(model, "module"), "_orig_mod")) == bare

    class HFConfig:
        n_layer, n_head, n_embd, n_positions = 4, 4, 128, 64

    model.config = HFConfig()  # same parameters, Hugging Face's config names
    assert T.model_flops_per_token(model) == bare


@pytest.mark.parametrize("name, precision, expected", [
    ("Tesla T4", "fp16", 65e12),
    ("NVIDIA L4", "bf16", 121e12),
    ("NVIDIA A100-SXM4-40GB", "bf16", 312e12),
    ("NVIDIA A100 80GB PCIe", "fp32", 156e12),
    ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
    ("NVIDIA L40S", "bf16", None),  # not an L4
    ("Tesla V100-SXM2-16GB", "fp16", None),  # unknown: no MFU rather than a made-up one
])
def test_gpu_peak_table(name, precision, expected):
    assert T.gpu_peak_flops(name, precision) == expected


def test_peak_flops_on_a_mocked_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    peak, source = T.peak_flops("cuda", "fp16")
    assert peak == 65e12 and "Tesla T4" in source and "data sheet" in source
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Radeon X")
    assert T.peak_flops("cuda:0", "bf16")[0] is None


def test_cpu_peak_is_measured_once_per_process(monkeypatch):
    monkeypatch.setattr(T, "_cpu_peak_cache", {})
    calls = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a, **k: calls.append(1) or real_mm(*a, **k))
    first = T.cpu_peak_flops(size=64, repeats=2)
    assert first > 0 and len(calls) == 3  # warm-up + 2 timed
    assert T.cpu_peak_flops(size=64, repeats=2) == first and len(calls) == 3
    monkeypatch.setattr(T, "_cpu_peak_cache", {})
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    T.cpu_peak_flops(size=64, repeats=1)  # measuring must leave the global RNG alone
    assert torch.equal(torch.rand(3), expected)
    peak, source = T.measured_cpu_peak()
    assert peak > 0 and "measured" in source


def test_training_reports_no_mfu_without_a_data_sheet_peak():
    """A CPU's measured peak is not a peak the model cannot beat (the progress bar once
    showed mfu=103.4% on a CPU): training shows no MFU there."""
    assert T.peak_flops("cpu") == (None, "no data-sheet peak for cpu: no MFU")


def test_mfu_arithmetic():
    assert T.mfu(1000.0, 6e9, 12e12) == pytest.approx(0.5)
    assert T.mfu(1000.0, 6e9, None) is None
    assert T.mfu(1000.0, 6e9, 6e12) == pytest.approx(1.0)
    assert T.mfu(1000.0, 6e9, 5.9e12) is None  # above 100%: the peak is wrong, not shown


def test_meter_reports_rates_between_marks():
    now = [10.0]
    meter = T.ThroughputMeter(tokens_per_step=768, flops_per_token_=1_000_000, peak=2e9,
                              clock=lambda: now[0])
    meter.start(steps_done=0)
    now[0] = 12.0
    rates = meter.mark(steps_done=4)  # 4 steps x 768 tokens in 2 s
    assert rates == {"tokens_per_s": 1536.0, "mfu": pytest.approx(0.768)}
    now[0] = 13.0
    assert meter.mark(steps_done=5)["tokens_per_s"] == 768.0
    now[0] = 14.0
    assert meter.mark(steps_done=5)["tokens_per_s"] == 768.0  # no new step: the last rate stays
