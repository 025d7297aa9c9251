"""bench/train.py's nanoGPT side-by-side helpers: what they need and what they read."""

from __future__ import annotations

import pytest

from bench import train

NANOGPT_LOG = """\
step 0: train loss 4.2874, val loss 4.2823
iter 0: loss 4.2654, time 1200.00ms, mfu -100.00%
iter 1: loss 4.1000, time 40.00ms, mfu -100.00%
iter 2: loss 4.0000, time 30.00ms, mfu -100.00%
iter 3: loss 3.9000, time 50.00ms, mfu -100.00%
step 250: train loss 1.9000, val loss 2.0000
iter 250: loss 1.9000, time 900.00ms, mfu 0.03%
step 500: train loss 1.7648, val loss 1.8857
"""


def test_parse_nanogpt_log_takes_the_last_val_loss_and_leaves_evaluations_out():
    parsed = train.parse_nanogpt_log(NANOGPT_LOG)
    assert parsed["val_loss"] == 1.8857
    # iterations 0 and 250 include an evaluation: the median is of 40, 30, 50 ms
    assert parsed["step_s"] == pytest.approx(0.040)


def test_parse_nanogpt_log_refuses_output_without_results():
    with pytest.raises(RuntimeError, match="no evaluation or step lines"):
        train.parse_nanogpt_log("Traceback (most recent call last):\n")


def test_nanogpt_missing_names_the_file_and_the_fix(tmp_path):
    assert "train.py is missing" in train.nanogpt_missing(tmp_path)
    for name in ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert "prepare.py" in train.nanogpt_missing(tmp_path)
    for name in ("train.bin", "val.bin", "meta.pkl"):
        (tmp_path / "data" / "shakespeare_char").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "shakespeare_char" / name).write_bytes(b"")
    assert train.nanogpt_missing(tmp_path) is None


def test_nanogpt_command_is_the_readme_cpu_recipe():
    command = train.nanogpt_command(2000)
    assert command[1:3] == ["train.py", "config/train_shakespeare_char.py"]
    for flag in ("--device=cpu", "--compile=False", "--eval_iters=20", "--block_size=64",
                 "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
                 "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"):
        assert flag in command
