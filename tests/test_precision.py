"""precision="auto": the choice per device, the T4 bf16 trap, TF32, and the AMP pieces that a
CPU can run for real (bf16 autocast, fp16 with a CPU GradScaler skipping non-finite steps)."""

from __future__ import annotations

import warnings

import pytest
import torch

from utils.training.engine import precision as P
from utils.training.engine.precision import PrecisionChoice, choose_precision, resolve_precision

T4, V100, A100, L4, H100 = (7, 5), (7, 0), (8, 0), (8, 9), (9, 0)


@pytest.mark.parametrize("device_type", ["cpu", "mps"])
def test_auto_is_fp32_off_cuda(device_type):
    choice, warning = choose_precision(device_type, None, "auto")
    assert (choice.name, warning, choice.uses_grad_scaler) == ("fp32", None, False)
    assert "auto" in choice.reason and device_type in choice.reason


@pytest.mark.parametrize("capability, name", [(A100, "A100"), (L4, "L4"), (H100, "H100")])
def test_auto_is_bf16_from_ampere_on(capability, name):
    choice, warning = choose_precision("cuda", capability, "auto", f"NVIDIA {name}")
    assert (choice.name, choice.dtype, choice.uses_grad_scaler, warning) == \
        ("bf16", torch.bfloat16, False, None)
    assert f"NVIDIA {name}" in choice.reason and "TF32" in choice.reason


@pytest.mark.parametrize("capability", [T4, V100])
def test_auto_is_fp16_with_scaler_below_ampere(capability):
    choice, warning = choose_precision("cuda", capability, "auto", "Tesla T4")
    assert (choice.name, choice.dtype, choice.uses_grad_scaler, warning) == \
        ("fp16", torch.float16, True, None)
    assert "emulated" in choice.reason


def test_explicit_bf16_on_a_t4_warns_and_uses_fp16():
    choice, warning = choose_precision("cuda", T4, "bf16", "Tesla T4")
    assert choice.name == "fp16" and choice.requested == "bf16" and choice.uses_grad_scaler
    assert "Tesla T4" in warning and "emulated" in warning and "fp16" in warning


@pytest.mark.parametrize("device_type, capability, requested", [
    ("cuda", A100, "fp32"), ("cuda", A100, "fp16"), ("cuda", T4, "fp32"), ("cuda", T4, "fp16"),
    ("cpu", None, "bf16"), ("cpu", None, "fp16"), ("mps", None, "fp16"),
])
def test_explicit_values_win(device_type, capability, requested):
    choice, warning = choose_precision(device_type, capability, requested)
    assert (choice.name, warning) == (requested, None)


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("cpu", None, "fp8")


def _fake_cuda(monkeypatch, capability, name):
    """Pretend a CUDA device is present: only the queries resolve_precision makes."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    # a T4 says yes here (emulation): resolve_precision must not ask
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def _tf32_flags() -> tuple[str, str, str]:
    return (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
            torch.backends.mkldnn.matmul.fp32_precision)


def test_resolve_on_a_mocked_t4(monkeypatch):
    _fake_cuda(monkeypatch, T4, "Tesla T4")
    before = _tf32_flags()
    assert resolve_precision("cuda", "auto").name == "fp16"
    with pytest.warns(UserWarning, match="Tesla T4"):
        assert resolve_precision("cuda:0", "bf16").name == "fp16"
    assert _tf32_flags() == before  # choosing changes no global flag


def test_resolve_on_a_mocked_a100(monkeypatch):
    _fake_cuda(monkeypatch, A100, "NVIDIA A100-SXM4-40GB")
    choice = resolve_precision("cuda", "auto")
    assert choice.name == "bf16" and "A100" in choice.reason


def test_tf32_is_on_inside_the_block_only_and_for_cuda_only():
    before = _tf32_flags()
    with P.tf32_matmuls("cuda"):
        assert _tf32_flags()[:2] == ("tf32", "tf32")
        # the CPU's matmuls keep full fp32 (set_float32_matmul_precision would change them)
        assert _tf32_flags()[2] == before[2]
    assert _tf32_flags() == before
    with pytest.raises(RuntimeError), P.tf32_matmuls("cuda:0"):
        raise RuntimeError("a failing step")
    assert _tf32_flags() == before  # restored on the way out of an error too
    with P.tf32_matmuls("cpu"):
        assert _tf32_flags() == before


def test_a_resume_keeps_the_stored_choice(monkeypatch):
    _fake_cuda(monkeypatch, A100, "NVIDIA A100")
    started = resolve_precision("cuda", "fp16")  # explicitly fp16 at step 0
    stored = started.to_dict()
    assert all(isinstance(v, str) for v in stored.values())  # weights_only-safe
    resumed = resolve_precision("cuda", "auto", resumed=stored)
    assert resumed.name == "fp16" and resumed.reason.startswith("resumed in fp16")
    again = resolve_precision("cuda", "auto", resumed=resumed.to_dict())
    assert again.reason == resumed.reason  # no "resumed in ... resumed in ..." chains
    # an explicit request still wins over the stored one
    assert resolve_precision("cuda", "bf16", resumed=stored).name == "bf16"
    # a bf16 run resumed on a T4 cannot keep bf16: auto's fp16, and the reason says why
    _fake_cuda(monkeypatch, T4, "Tesla T4")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        moved = resolve_precision("cuda", "auto", resumed={"name": "bf16", "device_type": "cuda"})
    assert moved.name == "fp16" and "started in bf16" in moved.reason
    # a CUDA run resumed on a CPU chooses afresh
    assert resolve_precision("cpu", "auto", resumed=stored).name == "fp32"
    assert PrecisionChoice.from_dict(stored) == started


def _step(model, choice, scaler, x, y):
    with choice.autocast():
        loss = torch.nn.functional.mse_loss(model(x).float(), y)
    scaler.scale(loss).backward()
    scaler.step(model.optimizer)
    scaler.update()
    model.optimizer.zero_grad(set_to_none=True)


def test_fp16_grad_scaler_on_cpu_skips_non_finite_steps_and_its_state_resumes():
    choice, _ = choose_precision("cpu", None, "fp16")
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    model.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = choice.grad_scaler()
    assert scaler.is_enabled()
    x, y = torch.randn(16, 8), torch.randn(16, 4)
    _step(model, choice, scaler, x, y)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scale_before = scaler.get_scale()
    _step(model, choice, scaler, x, torch.full_like(y, float("inf")))  # an overflowing loss
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed on a non-finite step"
    assert scaler.get_scale() == scale_before * 0.5  # backoff_factor
    restored = torch.amp.GradScaler("cpu")
    restored.load_state_dict(scaler.state_dict())
    assert restored.get_scale() == scaler.get_scale()
    assert restored.state_dict() == scaler.state_dict()


def test_fp32_and_bf16_scalers_are_pass_through():
    for name in ("fp32", "bf16"):
        choice, _ = choose_precision("cpu", None, name)
        scaler = choice.grad_scaler()
        loss = torch.tensor(2.0, requires_grad=True)
        assert not scaler.is_enabled() and scaler.scale(loss) is loss


def test_bf16_autocast_runs_on_cpu():
    choice, _ = choose_precision("cpu", None, "bf16")
    with choice.autocast():
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    fp32, _ = choose_precision("cpu", None, "auto")
    with fp32.autocast():
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32


def test_planning_query_does_not_warn(monkeypatch):
    _fake_cuda(monkeypatch, T4, "Tesla T4")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert P.choose_precision_for("cuda", "bf16").name == "fp16"
    assert P.choose_precision_for("cpu").name == "fp32"
