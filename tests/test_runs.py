"""Runs, as people meet them: the same command again after a crash (in another time zone),
a second experiment in the same folder, two trainings at once, and the metrics log.

Every test here runs real processes (tests/_train_worker.py, the Trainer's default
`fit(resume_from="auto")`) and compares against an uninterrupted run bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests import _train_worker as worker
from tests._ckpt_helpers import make_state
from tests._run_helpers import (
    assert_same_weights,
    file_hashes,
    final_weights,
    finish,
    kill_after_step,
    start,
    wait_for_step,
    wait_until,
)
from utils.training.engine.checkpoint import (
    BEST_MODEL_NAME,
    read_sidecar,
    save_checkpoint,
    sidecar_path,
)
from utils.training.engine.recovery import list_checkpoints, list_runs, recover_training_results
from utils.training.engine.runs import metrics_log_path, read_metrics_log
from utils.training.engine.writer import CheckpointWriter

REPO = Path(__file__).resolve().parent.parent


def test_same_command_after_a_kill_in_another_time_zone_finishes_the_same_run(
        tmp_path, uninterrupted_weights):
    folder, out = tmp_path / "checkpoints", tmp_path / "final.pt"
    # Kiribati is UTC+14, Adak UTC-10: a day apart, as Colab (UTC) and a laptop can be.
    kill_after_step(start(folder, out, tz="Pacific/Kiritimati"), 8)
    first_run = list_runs(folder)
    assert len(first_run) == 1 and first_run[0].steps == 6  # checkpoints at 3 and 6

    output = finish(start(folder, out, tz="America/Adak"))
    assert f"resuming run {first_run[0].run_id} at step 6" in output
    final = torch.load(out, weights_only=True)
    assert_same_weights(final["model"], uninterrupted_weights)
    runs = list_runs(folder)
    assert [run.run_id for run in runs] == [first_run[0].run_id]
    assert runs[0].steps == worker.STEPS
    # the metrics log is continuous: every step once, the resumed steps replacing the killed
    records = read_metrics_log(metrics_log_path(folder, runs[0].run_id))
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == list(range(1, worker.STEPS + 1))
    assert [r["step"] for r in records if r["kind"] == "eval"] == steps

    before = file_hashes(folder)
    again = finish(start(folder, out, tz="Asia/Kolkata"))
    assert "already finished at step 24" in again and "step 1\n" not in again
    assert torch.load(out, weights_only=True)["finished_before"] is True
    assert_same_weights(torch.load(out, weights_only=True)["model"], uninterrupted_weights)
    assert file_hashes(folder) == before  # a finished run is reported, never retrained


def test_a_second_experiment_never_touches_the_first(tmp_path):
    folder, out = tmp_path / "checkpoints", tmp_path / "final.pt"
    finish(start(folder, out))
    run_a = list_runs(folder)[0]
    # files that are not run A's: someone's model, a renamed copy, an old-format checkpoint
    someone = save_checkpoint(make_state(1, 9.0), folder / "colleague_model.pt")
    renamed = folder / "my_model.pt"
    renamed.write_bytes(run_a.latest.path.read_bytes())
    legacy = save_checkpoint(make_state(2, 0.5), folder)  # no run id, best val loss of all
    (folder / "notes.txt").write_text("mine")
    before = file_hashes(folder)

    output = finish(start(folder, out, "--lr", "1e-3"))  # other settings: another run
    assert "starting a new run" in output and run_a.run_id in output
    after = file_hashes(folder)
    assert {name: after.get(name) for name in before if name != BEST_MODEL_NAME and
            not name.startswith(BEST_MODEL_NAME)} == \
        {name: digest for name, digest in before.items() if not name.startswith(BEST_MODEL_NAME)}
    listed = {info.path for info in list_checkpoints(folder)}
    assert {info.path for info in run_a.checkpoints} <= listed
    assert {someone, renamed, legacy} <= listed
    runs = list_runs(folder)
    run_b = next(run for run in runs if run.run_id != run_a.run_id
                 and run.run_id != "legacy")
    assert {run.run_id for run in runs} == {run_a.run_id, run_b.run_id, "legacy"}
    best = read_sidecar(folder / BEST_MODEL_NAME)  # best_model.pt follows the newest run
    assert best["run_id"] == run_b.run_id and (folder / best["source"]).is_file()
    results = recover_training_results(folder)
    assert results["run_id"] == run_b.run_id
    assert set(results["runs"]["run_id"]) == {run_a.run_id, run_b.run_id, "legacy"}
    assert Path(results["latest_checkpoint_path"]).name.startswith("checkpoint_")
    assert recover_training_results(folder, run=run_a.run_id)["global_step"] == worker.STEPS


def test_retention_deletes_only_the_writing_runs_own_checkpoints(tmp_path):
    others = [save_checkpoint(make_state(step, 1.0, run_id="20250101-000000-aaaaaa"), tmp_path)
              for step in (1, 2)]
    legacy = save_checkpoint(make_state(3, 1.0), tmp_path)
    writer = CheckpointWriter(tmp_path, keep_last=1, keep_best=0, background=False,
                              run_id="20250102-000000-bbbbbb")
    mine = []
    for step in (4, 5, 6):
        writer.submit(make_state(step, 2.0, run_id="20250102-000000-bbbbbb"))
        mine.append(writer.last_path)
    copied_in = tmp_path / "resumed_from.pt"
    copied_in.write_bytes(mine[-1].read_bytes())  # our run id, but not our name pattern
    writer.submit(make_state(7, 2.0, run_id="20250102-000000-bbbbbb"))
    assert not mine[0].exists() and not mine[1].exists() and not mine[2].exists()
    assert all(path.exists() and sidecar_path(path).exists() for path in [*others, legacy])
    assert copied_in.exists()


def test_two_runs_in_the_same_second_get_their_own_files(tmp_path):
    a = save_checkpoint(make_state(5, 1.0, run_id="20250101-000000-aaaaaa"), tmp_path)
    b = save_checkpoint(make_state(5, 2.0, run_id="20250101-000000-bbbbbb"), tmp_path)
    c = save_checkpoint(make_state(5, 3.0), tmp_path)
    assert len({a, b, c}) == 3 and b.name.endswith("_bbbbbb.pt") and c.name.endswith("_2.pt")
    for path, run_id in ((a, "20250101-000000-aaaaaa"), (b, "20250101-000000-bbbbbb"), (c, None)):
        assert read_sidecar(path)["run_id"] == run_id
        assert torch.load(path, weights_only=True)["run_id"] == run_id


def test_the_same_run_twice_at_once_refuses_the_second(tmp_path):
    folder, out, hold = tmp_path / "checkpoints", tmp_path / "final.pt", tmp_path / "hold"
    first = start(folder, out, "--step-sleep", "0.3", "--hold", str(hold))
    wait_for_step(first, 4)  # a checkpoint (step 3) exists: the run is on disk
    hold.touch()  # the first run now waits after a step until the second has been refused
    second = start(folder, tmp_path / "second.pt")
    output = second.communicate(timeout=300)[0]
    hold.unlink()
    assert second.returncode == 2, output
    assert "is being trained by another process" in output and "Traceback" not in output
    assert finish(first).count("done") == 1
    assert len(list_runs(folder)) == 1


def test_metrics_survive_a_kill_up_to_the_last_step(tmp_path):
    folder, out = tmp_path / "checkpoints", tmp_path / "final.pt"
    kill_after_step(start(folder, out, "--step-sleep", "0.2"), 11)  # checkpoint at 9
    log = metrics_log_path(folder, list_runs(folder)[0].run_id)
    with open(log, "a") as handle:
        handle.write('{"kind": "train", "step": 12, "train_lo')  # torn by the crash
    results = recover_training_results(folder)
    curve = results["train_curve"]
    assert results["global_step"] == 9
    assert results["last_logged_step"] >= 11
    assert list(curve["step"]) == list(range(1, results["last_logged_step"] + 1))
    assert list(curve.loc[curve["after_last_checkpoint"], "step"]) == \
        list(range(10, results["last_logged_step"] + 1))
    metrics = results["metrics"]
    assert 11 in set(metrics["step"]) and metrics["after_last_checkpoint"].any()
    json.loads(log.read_text().splitlines()[0])  # plain JSON lines


CLI_TRAIN = [sys.executable, "-m", "utils", "train", "--preset", "tiny", "--tokenizer", "byte",
             "--layers", "1", "--dim", "32", "--heads", "2", "--context", "32",
             "--max-steps", "30", "--warmup-steps", "5", "--batch-size", "4",
             "--checkpoint-interval", "5", "--eval-interval", "5", "--eval-batches", "2",
             "--seed", "1", "--no-progress"]


def cli(folder: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    environment = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen([*CLI_TRAIN, "--checkpoint-dir", str(folder), *extra], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=environment)


def test_the_same_cli_command_after_a_kill_continues_the_run(tmp_path):
    reference_dir, folder = tmp_path / "reference", tmp_path / "checkpoints"
    finish(cli(reference_dir))
    slow = cli(folder, env={"UTILS_TEST_CHECKPOINT_SLEEP": "0.5"})
    deadline = time.monotonic() + 240
    while len(list(folder.glob("checkpoint_*.pt.json"))) < 2:
        assert slow.poll() is None and time.monotonic() < deadline, slow.stdout.read()
        time.sleep(0.05)
    slow.send_signal(signal.SIGKILL)
    slow.wait()
    steps = sorted(info.global_step for info in list_checkpoints(folder))
    assert steps[-1] < 30

    output = finish(cli(folder))  # what "Run all" / the same command does after the crash
    assert f"resuming run {list_runs(folder)[0].run_id} at step {steps[-1]}" in output
    assert_same_weights(final_weights(folder, 30), final_weights(reference_dir, 30))
    assert len(list_runs(folder)) == 1

    again = finish(cli(folder))
    assert "already finished at step 30" in again
    new = finish(cli(folder, "--new-run"))
    assert "starting a new run" in new and len(list_runs(folder)) == 2
    recovered = subprocess.run([sys.executable, "-m", "utils", "recover", "--checkpoint-dir",
                                str(folder)], cwd=REPO, capture_output=True, text=True)
    assert recovered.returncode == 0, recovered.stderr
    assert "2 run(s)" in recovered.stdout
    assert all(run.run_id in recovered.stdout for run in list_runs(folder))


def make_legacy(folder: Path) -> None:
    """Turn a folder into one written before runs existed: no run id anywhere, naive local
    timestamps, no metrics log."""
    for path in folder.glob("*.pt"):
        state = torch.load(path, weights_only=True)
        state.pop("run_id", None), state.pop("run_fingerprint", None)
        state["timestamp"] = state["timestamp"][:26]  # drop the UTC offset
        torch.save(state, path)
        sidecar = json.loads(sidecar_path(path).read_text())
        sidecar.pop("run_id", None), sidecar.pop("run_fingerprint", None)
        sidecar.update(timestamp=state["timestamp"], size_bytes=path.stat().st_size)
        sidecar_path(path).write_text(json.dumps(sidecar))
    for log in folder.glob("metrics_*.jsonl"):
        log.unlink()


def test_a_folder_from_before_runs_still_recovers_and_resumes(tmp_path, uninterrupted_weights):
    folder, out = tmp_path / "checkpoints", tmp_path / "final.pt"
    kill_after_step(start(folder, out), 8)
    make_legacy(folder)
    legacy = file_hashes(folder)
    [run] = list_runs(folder)
    assert run.run_id == "legacy" and run.steps == 6
    results = recover_training_results(folder)
    assert results["run_id"] == "legacy" and results["global_step"] == 6
    assert list(results["metrics"]["step"]) == list(range(1, 7))

    output = finish(start(folder, out, "--resume", "latest"))
    assert "resuming run (legacy) at step 6" in output and "continues as run" in output
    assert_same_weights(torch.load(out, weights_only=True)["model"], uninterrupted_weights)
    after = file_hashes(folder)
    assert {name: after.get(name) for name in legacy if not name.startswith("best_model")} \
        == {name: h for name, h in legacy.items() if not name.startswith("best_model")}


# ---------------------------------------------------------------- a log or folder deleted


def _train_records(log: Path) -> list[int]:
    return [r["step"] for r in read_metrics_log(log) if r["kind"] == "train"]


def test_a_metrics_log_deleted_mid_run_is_said_once_and_started_again(tmp_path,
                                                                      uninterrupted_weights):
    folder, out = tmp_path / "checkpoints", tmp_path / "final.pt"
    process = start(folder, out, "--step-sleep", "0.3")
    seen: list[str] = []
    wait_for_step(process, 4, seen)
    [log] = folder.glob("metrics_*.jsonl")
    log.unlink()  # someone tidies the folder while training runs
    output = "".join(seen) + finish(process)
    assert output.count("was deleted during training") == 1, output
    steps = _train_records(log)  # the lines after the deletion, in a new log of that name
    assert steps and steps[0] > 4 and steps == list(range(steps[0], worker.STEPS + 1))
    assert_same_weights(torch.load(out, weights_only=True)["model"], uninterrupted_weights)


def remove_folder_in_use(folder: Path) -> None:
    """`rm -rf folder` while a training writes into it: a file that vanishes meanwhile (a
    temp file the writer just published, the lease's heartbeat) is no error, and a file
    written meanwhile means another pass; once the folder is gone, it stops (the training
    may make it again)."""
    import errno
    import shutil

    class NotEmpty(Exception):
        pass

    def on_error(function, path, error: BaseException) -> None:
        if isinstance(error, FileNotFoundError):
            return
        if function is os.rmdir and Path(path) == folder and error.errno == errno.ENOTEMPTY:
            raise NotEmpty from error
        raise error

    # Python 3.12 names the hook onexc (given the exception); onerror gets exc_info
    handler = ({"onexc": on_error} if sys.version_info >= (3, 12) else
               {"onerror": lambda function, path, info: on_error(function, path, info[1])})
    for _ in range(100):
        try:
            shutil.rmtree(folder, **handler)
            return
        except NotEmpty:
            continue
    raise AssertionError(f"{folder} kept filling while it was deleted")


def test_a_checkpoint_folder_deleted_mid_run_is_recreated_and_said_once(tmp_path,
                                                                        uninterrupted_weights):
    folder, out = tmp_path / "checkpoints", tmp_path / "final.pt"
    process = start(folder, out, "--step-sleep", "0.3")
    seen: list[str] = []
    wait_for_step(process, 4, seen)
    # the step-3 checkpoint is written in the background: on a busy machine it may still be
    # in flight when step 4 is printed
    wait_until(lambda: bool(list_runs(folder)), process, "the step-3 checkpoint")
    run_id = list_runs(folder)[0].run_id
    remove_folder_in_use(folder)  # the whole folder, checkpoint of step 3 and log included
    output = "".join(seen) + finish(process)
    assert output.count("was deleted during training (or its folder went away)") == 1, output
    steps = _train_records(metrics_log_path(folder, run_id))
    assert steps and steps[0] > 4 and steps == list(range(steps[0], worker.STEPS + 1))
    results = recover_training_results(folder)  # the run goes on in the recreated folder
    assert results["run_id"] == run_id and results["global_step"] == worker.STEPS
    assert results["last_logged_step"] == worker.STEPS
    assert_same_weights(torch.load(out, weights_only=True)["model"], uninterrupted_weights)


# ---------------------------------------------------------------- Ctrl-C, budgets, other data


def test_ctrl_c_on_the_command_line_checkpoints_where_it_stopped_and_exits_130(tmp_path):
    """SIGINT stops at the next step with a checkpoint there, says where training resumes
    (exit 130); a rerun whose --max-steps is below that step is told the run was
    interrupted, not that it finished; the same command resumes at that step."""
    folder = tmp_path / "checkpoints"
    process = cli(folder, "--max-steps", "1000")  # replaces CLI_TRAIN's 30 (the last wins)
    deadline = time.monotonic() + 240
    while not list(folder.glob("checkpoint_*.pt.json")):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if line.startswith("interrupted: ")]
    [run] = list_runs(folder)
    stopped = run.steps
    assert f"training stopped at step {stopped} of run {run.run_id}" in line
    assert f"resumes the run at step {stopped}" in line and run.latest.path.name in line
    assert stopped % 5 != 0 or stopped > 5  # not only the interval's checkpoint
    saved = torch.load(run.latest.path, weights_only=True)
    assert saved["global_step"] == stopped and saved["optimizer_state_dict"]["state"]

    before = file_hashes(folder)
    refused = cli(folder, "--max-steps", str(stopped - 1))
    output = refused.communicate(timeout=300)[0]
    assert refused.returncode == 2 and "Traceback" not in output, output
    [error] = [line for line in output.splitlines() if line.startswith("error: ")]
    assert f"stopped at step {stopped} of its 1000 steps" in error
    assert "already finished" not in output
    assert "--max-steps to 1000" in error and "--new-run" in error
    assert file_hashes(folder) == before

    resumed = finish(cli(folder, "--max-steps", str(stopped + 2)))
    assert f"resuming run {run.run_id} at step {stopped}" in resumed


def test_resume_latest_on_other_data_is_refused_with_the_fix(tmp_path):
    folder = tmp_path / "checkpoints"
    first, other = tmp_path / "first.txt", tmp_path / "other.txt"
    first.write_text("the first corpus, " * 400, encoding="utf-8")
    other.write_text("another corpus entirely. " * 400, encoding="utf-8")
    finish(cli(folder, "--data", str(first), "--max-steps", "5"))
    before = file_hashes(folder)
    process = cli(folder, "--data", str(other), "--resume", "latest", "--max-steps", "10")
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 2 and "Traceback" not in output, output
    [error] = [line for line in output.splitlines() if line.startswith("error: ")]
    assert "was trained on other data than this" in error and "--new-run" in error
    assert file_hashes(folder) == before
    again = finish(cli(folder, "--data", str(first), "--resume", "latest", "--max-steps", "7"))
    assert "resuming at step 5" in again
