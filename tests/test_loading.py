"""load_pretrained_model, load_model_weights and select_checkpoint on real checkpoint files."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import pytest
import torch

from utils.checkpoint_errors import (
    ArchitectureMismatchError,
    CheckpointConfigError,
    CheckpointNotFoundError,
    ModelNotInitializedError,
    NoCheckpointsError,
    UnsafeCheckpointError,
)
from utils.config import ModelConfig
from utils.model import GPTModel
from utils.training.engine import loading
from utils.training.engine.checkpoint import save_checkpoint
from utils.training.engine.loading import (
    LoadReport,
    load_model_weights,
    load_pretrained_model,
    resolve_device,
    select_checkpoint,
)

TINY = ModelConfig(vocab_size=64, context_length=16, embedding_dimension=16,
                   number_of_heads=2, number_of_layers=2, dropout_rate=0.0)
IDS = torch.tensor([[1, 5, 9, 33, 2, 63, 0, 7]])


def make_model(config: ModelConfig = TINY, seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(config).eval()


def write_checkpoint(path, model: GPTModel, **extra) -> str:
    """A DESIGN.md-format checkpoint (the parts loading reads), saved with torch.save."""
    state = {"format_version": 1, "model_state_dict": model.state_dict(),
             "config": model.config.to_dict(), "epoch": 3, "global_step": 42,
             "train_loss": 2.5, "val_loss": 2.75, "learning_rate": 3e-4,
             "timestamp": "2025-11-22T06:54:55"}
    state.update(extra)
    torch.save(state, path)
    return str(path)


def snapshot(model: torch.nn.Module) -> dict:
    """Everything a failed load must leave alone: values, objects, devices, dtypes, mode."""
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "ids": [id(p) for p in model.parameters()],
        "ptrs": [p.data_ptr() for p in model.parameters()],
        "devices": [str(p.device) for p in model.parameters()],
        "dtypes": [p.dtype for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
    }


def assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, tensor in before["tensors"].items():
        assert torch.equal(after["tensors"][key], tensor), key  # bitwise
    for field in ("ids", "ptrs", "devices", "dtypes", "training", "requires_grad"):
        assert after[field] == before[field], field


def logits(model: GPTModel) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS)


# ---------------------------------------------------------------------------------------
# load_pretrained_model
# ---------------------------------------------------------------------------------------

def test_load_pretrained_model_rebuilds_the_model_from_the_checkpoint(tmp_path):
    source = make_model()
    path = write_checkpoint(tmp_path / "best_model.pt", source)
    model, checkpoint = load_pretrained_model(path, device="cpu")
    assert model.config == TINY
    assert not model.training
    assert model.lm_head.weight is model.token_embedding.weight  # re-tied after assign=True
    assert torch.equal(logits(model), logits(source))
    assert {"epoch": 3, "global_step": 42, "val_loss": 2.75, "learning_rate": 3e-4}.items() \
        <= checkpoint.items()
    assert "model_state_dict" not in checkpoint
    assert checkpoint["config"] == TINY.to_dict()
    assert checkpoint["format"] == "training checkpoint"
    assert all(p.device.type == "cpu" and not p.is_meta for p in model.parameters())


def test_train_mode_and_default_device(tmp_path):
    path = write_checkpoint(tmp_path / "c.pt", make_model())
    model, _ = load_pretrained_model(path, mode="train")
    assert model.training and all(m.training for m in model.modules())
    assert next(model.parameters()).device.type == resolve_device().type
    with pytest.raises(ValueError, match="mode"):
        load_pretrained_model(path, mode="inference")


def test_builds_on_meta_without_initialising_weights_and_reads_with_mmap(tmp_path, monkeypatch):
    path = write_checkpoint(tmp_path / "c.pt", make_model())
    real_init, real_load = torch.nn.init.normal_, torch.load
    initialised, load_calls = [], []

    def counting_init(tensor, *args, **kwargs):
        if not tensor.is_meta:
            initialised.append(tuple(tensor.shape))
        return real_init(tensor, *args, **kwargs)

    def spying_load(*args, **kwargs):
        load_calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "normal_", counting_init)
    monkeypatch.setattr(torch, "load", spying_load)
    load_pretrained_model(path, device="cpu")
    assert initialised == []  # no random initialisation of real tensors
    assert torch.nn.init.normal_ is counting_init  # init functions restored after the build
    torch.nn.init.normal_(torch.empty(3))
    assert initialised == [(3,)]
    assert load_calls == [{"map_location": "cpu", "weights_only": True, "mmap": True}]


def test_file_systems_without_mmap_fall_back_to_a_plain_read(tmp_path, monkeypatch):
    source = make_model()
    path = write_checkpoint(tmp_path / "c.pt", source)
    real_load = torch.load

    def no_mmap_load(*args, mmap=False, **kwargs):
        if mmap:
            raise RuntimeError("unable to mmap 4096 bytes from file: Operation not supported")
        return real_load(*args, mmap=False, **kwargs)

    monkeypatch.setattr(torch, "load", no_mmap_load)
    model, _ = load_pretrained_model(path, device="cpu")
    assert torch.equal(logits(model), logits(source))


def test_cpu_weights_are_copy_on_write_so_training_never_changes_the_file(tmp_path):
    source = make_model()
    path = write_checkpoint(tmp_path / "c.pt", source)
    file_bytes = Path(path).read_bytes()
    model, _ = load_pretrained_model(path, device="cpu", mode="train")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(IDS, IDS)[1].backward()
    optimizer.step()
    assert not torch.equal(model.token_embedding.weight, source.token_embedding.weight)
    assert Path(path).read_bytes() == file_bytes
    reloaded, _ = load_pretrained_model(path, device="cpu")
    assert torch.equal(logits(reloaded), logits(source))


def test_prefixed_keys_from_compile_and_ddp_load(tmp_path):
    source = make_model()
    for prefix in ("_orig_mod.", "module.", "module._orig_mod."):
        state = {prefix + k: v for k, v in source.state_dict().items()}
        path = tmp_path / f"{prefix.replace('.', '_')}.pt"
        torch.save({"model_state_dict": state, "config": TINY.to_dict()}, path)
        model, checkpoint = load_pretrained_model(path, device="cpu")
        assert torch.equal(logits(model), logits(source)), prefix
        assert any(prefix.split(".")[0] in note for note in checkpoint["load_notes"])


def test_legacy_config_key_is_migrated(tmp_path):
    config = dataclasses.replace(TINY, use_attention_bias=False)
    source = make_model(config)
    legacy = config.to_dict()
    legacy["query_key_value_bias"] = legacy.pop("use_attention_bias")
    path = tmp_path / "old.pt"
    torch.save({"model_state_dict": source.state_dict(), "config": legacy}, path)
    model, _ = load_pretrained_model(path, device="cpu")
    assert model.config.use_attention_bias is False
    assert torch.equal(logits(model), logits(source))


def test_bare_state_dict_needs_a_config_unless_shapes_match_a_preset(tmp_path):
    source = make_model()
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    with pytest.raises(CheckpointConfigError, match="config=ModelConfig"):
        load_pretrained_model(path, device="cpu")
    model, checkpoint = load_pretrained_model(path, device="cpu", config=TINY)
    assert torch.equal(logits(model), logits(source))
    assert checkpoint["format"] == "bare state dict"
    # the caller's config must agree with the file's own when the file has one
    full = write_checkpoint(tmp_path / "full.pt", source)
    wider = dataclasses.replace(TINY, embedding_dimension=32)
    with pytest.raises(ArchitectureMismatchError, match="embedding_dimension: checkpoint 16"):
        load_pretrained_model(full, device="cpu", config=wider)
    # a different dropout is not an architecture change: the caller's wins (fine-tuning)
    model, _ = load_pretrained_model(full, device="cpu",
                                     config=dataclasses.replace(TINY, dropout_rate=0.2))
    assert model.config.dropout_rate == 0.2


@pytest.mark.slow
def test_bare_gpt2_small_state_dict_gets_the_preset_config(tmp_path):
    config = ModelConfig.from_preset("gpt2")
    with torch.device("meta"):
        shapes = GPTModel(config).state_dict()
    state = {k: torch.zeros(v.shape) for k, v in shapes.items()}
    state["lm_head.weight"] = state["token_embedding.weight"]
    torch.save(state, tmp_path / "sd.pt")
    model, checkpoint = load_pretrained_model(tmp_path / "sd.pt", device="cpu")
    assert model.config == config
    assert any("number_of_heads=12 was assumed" in n for n in checkpoint["load_notes"])


def test_unsafe_pickle_never_runs_and_trust_is_an_explicit_opt_in(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": make_model().state_dict(), "config": TINY.to_dict(),
                "payload": Exploit()}, path)
    with pytest.raises(UnsafeCheckpointError, match="trust_checkpoint=True"):
        load_pretrained_model(path, device="cpu")
    model = make_model(seed=1)
    before = snapshot(model)
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        load_model_weights(model, path, device="cpu")
    assert not marker.exists()
    assert_unchanged(model, before)

    # An old checkpoint that pickled the ModelConfig dataclass: safe to refuse, and loadable
    # by someone who trusts it, with a warning.
    source = make_model()
    old = tmp_path / "old.pt"
    torch.save({"model_state_dict": source.state_dict(), "config": TINY}, old)
    with pytest.raises(UnsafeCheckpointError, match="utils.config.ModelConfig"):
        load_pretrained_model(old, device="cpu")
    with pytest.warns(UserWarning, match="weights_only=False"):
        model, _ = load_pretrained_model(old, device="cpu", trust_checkpoint=True)
    assert torch.equal(logits(model), logits(source))


def test_nan_weights_are_refused(tmp_path):
    source = make_model()
    state = source.state_dict()
    state["final_norm.scale"] = state["final_norm.scale"].clone()
    state["final_norm.scale"][3] = float("nan")
    torch.save({"model_state_dict": state, "config": TINY.to_dict()}, tmp_path / "nan.pt")
    with pytest.raises(loading.InvalidWeightsError, match="final_norm.scale"):
        load_pretrained_model(tmp_path / "nan.pt", device="cpu")


# ---------------------------------------------------------------------------------------
# load_model_weights: into an existing model, all or nothing
# ---------------------------------------------------------------------------------------

def test_load_model_weights_copies_into_the_same_parameter_objects(tmp_path):
    source = make_model(seed=0)
    path = write_checkpoint(tmp_path / "c.pt", source)
    model = make_model(seed=1).train()
    parameter_ids = [id(p) for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    report = load_model_weights(model, path, device="cpu")
    assert isinstance(report, LoadReport) and report.complete
    assert report.metadata["global_step"] == 42 and "model_state_dict" not in report.metadata
    assert len(report.loaded) == len(source.state_dict())
    assert [id(p) for p in model.parameters()] == parameter_ids
    assert optimizer.param_groups[0]["params"][0] is model.token_embedding.weight
    assert model.lm_head.weight is model.token_embedding.weight
    assert not model.training
    assert torch.equal(logits(model), logits(source))
    # the weights are copies: changing them does not touch the file's tensors
    with torch.no_grad():
        model.final_norm.scale.add_(1.0)
    assert torch.equal(load_pretrained_model(path, device="cpu")[0].final_norm.scale,
                       source.final_norm.scale)


def test_mode_none_keeps_the_mode_and_dtype_is_the_models(tmp_path):
    path = write_checkpoint(tmp_path / "c.pt", make_model())
    model = make_model(seed=1).to(torch.bfloat16).train()
    load_model_weights(model, path, device="cpu", mode=None)
    assert model.training
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert torch.equal(model.final_norm.scale, make_model().final_norm.scale.bfloat16())


def test_model_none_says_what_to_create(tmp_path):
    path = write_checkpoint(tmp_path / "c.pt", make_model())
    with pytest.raises(ModelNotInitializedError, match=r"GPTModel\(config\)"):
        load_model_weights(None, path)


def test_architecture_mismatch_names_keys_and_config_values_and_changes_nothing(tmp_path):
    bigger = dataclasses.replace(TINY, embedding_dimension=32, number_of_layers=3)
    path = write_checkpoint(tmp_path / "big.pt", make_model(bigger))
    model = make_model().train()
    before = snapshot(model)
    with pytest.raises(ArchitectureMismatchError) as caught:
        load_model_weights(model, path, device="cpu")
    message = str(caught.value)
    assert "embedding_dimension: checkpoint 32, model 16" in message
    assert "number_of_layers: checkpoint 3, model 2" in message
    assert "0 missing, 16 unexpected" in message  # block 2: 16 tensors
    assert "transformer_blocks.2." in message
    assert "token_embedding.weight (checkpoint [64, 32] vs model [64, 16])" in message
    assert "Fix:" in message and "strict=False" in message
    assert_unchanged(model, before)


def test_failure_while_staging_leaves_the_model_exactly_as_it_was(tmp_path, monkeypatch):
    """An allocation failing half-way (think CUDA out of memory) must not half-load."""
    path = write_checkpoint(tmp_path / "c.pt", make_model(seed=0))
    model = make_model(seed=1).train()
    before = snapshot(model)
    real_to, calls = torch.Tensor.to, []

    def failing_to(self, *args, **kwargs):
        if kwargs.get("copy"):  # staging copies each loaded tensor onto the target device
            calls.append(1)
        if len(calls) == 10:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", failing_to)
    with pytest.raises(RuntimeError, match="simulated"):
        load_model_weights(model, path, device="cpu")
    monkeypatch.undo()
    assert len(calls) >= 10
    assert_unchanged(model, before)


def test_partial_loading_reports_exactly_what_was_skipped(tmp_path):
    # Transfer learning: a checkpoint with a different vocabulary and one more block.
    other = dataclasses.replace(TINY, vocab_size=80, number_of_layers=3)
    source = make_model(other, seed=0)
    path = write_checkpoint(tmp_path / "other.pt", source)
    model = make_model(seed=1)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="partial load .*skipped 0 missing, 16 unexpected, 2 wrong-shape"):
        report = load_model_weights(model, path, device="cpu", strict=False)
    assert sorted(k for k, _, _ in report.mismatched) == ["lm_head.weight",
                                                          "token_embedding.weight"]
    assert ("token_embedding.weight", [80, 16], [64, 16]) in report.mismatched
    assert sorted(report.unexpected) == sorted(k for k in source.state_dict()
                                               if k.startswith("transformer_blocks.2."))
    assert report.missing == []
    expected_loaded = [k for k in model.state_dict()
                       if k not in ("token_embedding.weight", "lm_head.weight")]
    assert sorted(report.loaded) == sorted(expected_loaded)
    state = model.state_dict()
    for key in expected_loaded:
        assert torch.equal(state[key], source.state_dict()[key]), key
    assert torch.equal(state["token_embedding.weight"], original["token_embedding.weight"])
    assert "vocab_size: checkpoint 80, model 64" in str(report)
    assert "wrong shape (model keeps its values): token_embedding.weight" in str(report)


def test_partial_loading_of_nothing_is_an_error(tmp_path):
    unrelated = ModelConfig(vocab_size=50, context_length=8, embedding_dimension=8,
                            number_of_heads=2, number_of_layers=1)
    path = write_checkpoint(tmp_path / "u.pt", make_model(unrelated))
    model = make_model()
    before = snapshot(model)
    with pytest.raises(ArchitectureMismatchError):
        load_model_weights(model, path, device="cpu", strict=False)
    assert_unchanged(model, before)


def test_unavailable_device_is_refused_before_anything_changes(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")  # the GPU variant is below
    path = write_checkpoint(tmp_path / "c.pt", make_model())
    model = make_model(seed=1)
    before = snapshot(model)
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_model_weights(model, path, device="cuda")
    assert_unchanged(model, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loads_onto_cuda_and_moves_an_existing_model(tmp_path):
    source = make_model()
    path = write_checkpoint(tmp_path / "c.pt", source)
    model, _ = load_pretrained_model(path)
    assert model.token_embedding.weight.device.type == "cuda"
    assert model.lm_head.weight is model.token_embedding.weight
    with torch.no_grad():
        assert torch.allclose(model(IDS.cuda()).cpu(), logits(source), atol=1e-5)
    existing = make_model(seed=1)
    load_model_weights(existing, path, device="cuda")
    assert all(p.device.type == "cuda" for p in existing.parameters())
    assert existing.lm_head.weight is existing.token_embedding.weight


# ---------------------------------------------------------------------------------------
# select_checkpoint
# ---------------------------------------------------------------------------------------

def save_series(folder, model: GPTModel) -> list:
    """Three checkpoints (via the real writer, with sidecars); step 20 has the best val_loss."""
    paths = []
    for step, val_loss in ((10, 3.0), (20, 2.0), (30, 2.5)):
        state = {"format_version": 1, "model_state_dict": model.state_dict(),
                 "config": TINY.to_dict(), "epoch": 0, "global_step": step,
                 "train_loss": val_loss + 0.1, "val_loss": val_loss, "learning_rate": 1e-3,
                 "timestamp": f"2025-11-22T06:00:{step:02d}"}
        paths.append(save_checkpoint(state, folder))
    return paths


def test_select_checkpoint_priorities(tmp_path):
    first, best, last = save_series(tmp_path, make_model())
    assert select_checkpoint(checkpoint_dir=tmp_path) == (best, "auto-selected best val_loss")
    results = {"checkpoint_path": str(last)}
    assert select_checkpoint(results, tmp_path) == (last, "from the recovered results (best of the run)")
    # the override wins over both: a path, a file name in the folder, or a listing index
    assert select_checkpoint(results, tmp_path, override=str(first)) == (first, "manual override")
    assert select_checkpoint(results, tmp_path, override=first.name)[0] == first
    assert select_checkpoint(results, tmp_path, override=0)[0] == best
    assert select_checkpoint(results, tmp_path, override="2")[0] == first
    # Cell 33's file deleted since: fall back to the best and say why
    last.unlink()
    path, method = select_checkpoint(results, tmp_path)
    assert path == best and method.startswith("auto-selected best val_loss") \
        and last.name in method


def test_select_checkpoint_errors(tmp_path):
    with pytest.raises(NoCheckpointsError, match="python -m utils train"):
        select_checkpoint(checkpoint_dir=tmp_path)
    with pytest.raises(NoCheckpointsError):
        select_checkpoint(checkpoint_dir=tmp_path / "absent")
    save_series(tmp_path, make_model())
    with pytest.raises(CheckpointNotFoundError) as caught:
        select_checkpoint(checkpoint_dir=tmp_path, override="nope.pt")
    message = str(caught.value)
    assert "'nope.pt'" in message and "[0] checkpoint_epoch0000_step000020_" in message
    assert "[2] checkpoint_epoch0000_step000010_" in message
    with pytest.raises(CheckpointNotFoundError, match="index 0..2"):
        select_checkpoint(checkpoint_dir=tmp_path, override=7)


def test_selected_checkpoint_loads_without_warnings(tmp_path):
    source = make_model()
    save_series(tmp_path, source)
    path, _ = select_checkpoint(checkpoint_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, checkpoint = load_pretrained_model(path, device="cpu")
    assert checkpoint["global_step"] == 20
    assert torch.equal(logits(model), logits(source))


# ---------------------------------------------------------------------------------------
# Command line and example script
# ---------------------------------------------------------------------------------------

BYTE_CONFIG = dataclasses.replace(TINY, vocab_size=257)  # fits the byte tokenizer


def test_cli_load_prints_the_full_report(tmp_path, capsys):
    from utils.__main__ import main

    path = write_checkpoint(tmp_path / "c.pt", make_model())
    assert main(["load", "--checkpoint", path, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for expected in ("LOADING MODEL WEIGHTS", "Device: cpu", "Global Step: 42",
                     "Val Loss: 2.7500", f"Total: {sum(p.numel() for p in make_model().parameters()):,}",
                     "ARCHITECTURE PREVIEW", "NEXT STEPS"):
        assert expected in out
    save_series(tmp_path / "dir", make_model())
    assert main(["load", "--checkpoint-dir", str(tmp_path / "dir"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "→ [0] Epoch  0 | Step   20" in out and "Auto-selected best val_loss" in out


def test_cli_load_bad_file_is_one_line_and_exit_2(tmp_path, capsys):
    from utils.__main__ import main

    (tmp_path / "x.pt").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert main(["load", "--checkpoint", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "PNG image" in err and err.count("\n") == 1


def test_example_script_loads_and_generates(tmp_path, capsys):
    import importlib.util

    from utils.generation import generate_text
    from utils.tokenizer import get_tokenizer

    source = make_model(BYTE_CONFIG)
    path = write_checkpoint(tmp_path / "c.pt", source, tokenizer="byte")
    spec = importlib.util.spec_from_file_location(
        "example", Path(__file__).parent.parent / "examples" / "load_pretrained_weights.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--checkpoint", path, "--prompt", "Once upon", "--length", "5",
                         "--temperature", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    tokenizer = get_tokenizer("byte")
    expected = tokenizer.decode(generate_text(source, tokenizer.encode("Once upon"), 5,
                                              temperature=0))
    assert out.rstrip().endswith(expected) and "Val Loss: 2.7500" in out
    assert example.main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
