"""DDP with 2 CPU processes (gloo) under torchrun: same training as one process with the
doubled batch, checkpoints written once by rank 0, resumable across world sizes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import _train_worker as worker
from utils.training.engine.checkpoint import sidecar_path
from utils.training.engine.recovery import list_checkpoints

REPO = Path(__file__).resolve().parent.parent
ATOL = 1e-5  # DDP averages two half-batch gradients: equal up to float rounding


def _single_process(checkpoint_dir: Path, resume: str | Path | None = None,
                    steps: int = 10) -> tuple[dict, list]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = worker.make_ddp_comparable_trainer(checkpoint_dir, batch_size=4, steps=steps)
        history = trainer.fit(resume_from=resume)
    finally:
        torch.set_num_threads(threads)
    return trainer.model.state_dict(), history


def _assert_close(state: dict, reference: dict) -> None:
    assert state.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(state[name], tensor, atol=ATOL, rtol=0, msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    single_dir = root / "single"
    reference = _single_process(single_dir)  # 1 process x batch 4, 10 steps
    # a single-process checkpoint at step 5 for the DDP run to resume
    resume_dir = root / "from_single"
    resume_dir.mkdir()
    [step5] = [info for info in list_checkpoints(single_dir) if info.global_step == 5]
    for path in (step5.path, sidecar_path(step5.path)):
        shutil.copy(path, resume_dir / path.name)

    fresh_dir = root / "ddp"
    outputs = root / "fresh.pt", root / "resumed.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for job in ([str(fresh_dir), str(outputs[0])],
                [str(resume_dir), str(outputs[1]), "latest"]):
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc_per_node=2", str(REPO / "tests" / "_ddp_worker.py"), *job],
            capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    fresh, resumed = (torch.load(path, weights_only=True) for path in outputs)
    return {"reference": reference, "fresh": fresh, "resumed": resumed,
            "fresh_dir": fresh_dir, "resume_dir": resume_dir, "root": root}


@pytest.mark.slow
def test_two_ranks_train_like_one_process_with_the_doubled_batch(runs):
    reference_state, reference_history = runs["reference"]
    assert runs["fresh"]["world_size"] == 2
    _assert_close(runs["fresh"]["model"], reference_state)
    ddp_history = runs["fresh"]["history"]
    assert [h["step"] for h in ddp_history] == [5, 10]
    for ddp, single in zip(ddp_history, reference_history, strict=True):
        assert ddp["tokens_seen"] == single["tokens_seen"] == ddp["step"] * 4 * 16
        assert ddp["val_loss"] == pytest.approx(single["val_loss"], abs=1e-5)
        assert ddp["train_loss"] == pytest.approx(single["train_loss"], abs=1e-5)


@pytest.mark.slow
def test_rank_zero_writes_each_checkpoint_once(runs):
    names = sorted(p.name for p in runs["fresh_dir"].iterdir())
    checkpoints = [n for n in names if n.startswith("checkpoint_") and n.endswith(".pt")]
    assert [int(n.split("_step")[1][:6]) for n in checkpoints] == [5, 10]
    assert not [n for n in names if n.startswith(".")]
    saved = torch.load(runs["fresh_dir"] / checkpoints[-1], weights_only=True)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in saved["model_state_dict"])
    assert saved["data_state"]["world_size"] == 2 and saved["data_state"]["batch_size"] == 2


@pytest.mark.slow
def test_ddp_checkpoint_resumes_in_one_process(runs, tmp_path):
    reference_state, reference_history = runs["reference"]
    [step5] = [i for i in list_checkpoints(runs["fresh_dir"]) if i.global_step == 5]
    state, history = _single_process(tmp_path, resume=step5.path)
    _assert_close(state, reference_state)
    assert [h["step"] for h in history] == [5, 10]


@pytest.mark.slow
def test_single_process_checkpoint_resumes_under_ddp(runs):
    reference_state, _ = runs["reference"]
    _assert_close(runs["resumed"]["model"], reference_state)
    assert [h["step"] for h in runs["resumed"]["history"]] == [5, 10]
    assert {i.global_step for i in list_checkpoints(runs["resume_dir"])} == {5, 10}


@pytest.mark.parametrize("gpus, local_rank, visible, expected", [
    (2, 1, None, 1),          # one GPU per process
    (1, 1, "3", 0),           # a launcher gave each process its own GPU
    (1, 1, None, "--nproc_per_node=1"),  # two processes, one GPU: refused, with the fix
    (2, 3, None, "--nproc_per_node=2"),
])
def test_each_process_gets_its_own_gpu_or_a_clear_refusal(monkeypatch, gpus, local_rank,
                                                          visible, expected):
    from utils.training.engine import distributed

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_rank + 1))
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    if isinstance(expected, int):
        assert distributed._gpu_of_process(local_rank) == expected
    else:
        with pytest.raises(ValueError, match="NCCL needs one GPU per process") as caught:
            distributed._gpu_of_process(local_rank)
        assert expected in str(caught.value) and "--device cpu" in str(caught.value)
