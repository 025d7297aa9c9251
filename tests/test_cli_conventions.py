"""The command line's conventions: --version, every option's help shows its default, a way
to keep every checkpoint, messages that name flags, help that points only at real files."""

from __future__ import annotations

import argparse
import re

import pytest

from tests._cli_helpers import REPO_ROOT, run_cli
from utils import DISTRIBUTION, __version__
from utils.__main__ import build_parser, main
from utils.cli.common import with_flag_names
from utils.cli.train import SETTING_FLAGS, build_training_config
from utils.config import TrainingConfig

SWITCHES = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
            argparse._HelpAction, argparse._VersionAction)


def commands() -> dict[str, argparse.ArgumentParser]:
    subparsers = next(action for action in build_parser()._actions
                      if isinstance(action, argparse._SubParsersAction))
    return dict(subparsers.choices)


def required_options(parser: argparse.ArgumentParser) -> set[argparse.Action]:
    """Options the user must give (alone or as one of a required group): no default."""
    required = {action for action in parser._actions if action.required}
    for group in parser._mutually_exclusive_groups:
        if group.required:
            required.update(group._group_actions)
    return required


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_option_has_help_that_shows_its_default(name):
    parser = commands()[name]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings:
            continue
        assert action.help, f"{name} {action.option_strings[0]} has no help"
        if isinstance(action, SWITCHES) or action in required_options(parser):
            continue
        shown = formatter._get_help_string(action) % {"default": action.default}
        # a default, or for a setting the device picks, what leaving it out does
        assert "default" in shown or "unset:" in shown, f"{name} {action.option_strings[0]}"


def test_help_texts_point_only_at_files_in_the_repository():
    texts = [build_parser().format_help()] + [parser.format_help()
                                              for parser in commands().values()]
    named = set(re.findall(r"[\w./-]+\.md\b", " ".join(" ".join(texts).split())))
    assert "DESIGN.md" not in named  # convert --help once sent users to a file they lack
    for name in named:
        assert (REPO_ROOT / name).is_file(), name


def test_version_and_the_command_name():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"{DISTRIBUTION} {__version__}"
    assert build_parser().prog == "python -m utils"


@pytest.mark.parametrize("word", ["all", "None", "ALL"])
def test_keep_last_all_means_keep_every_checkpoint(word):
    args = build_parser().parse_args(["train", "--keep-last", word, "--keep-best", word])
    config = build_training_config(args, None)
    assert config.keep_last is None and config.keep_best is None
    # given on a resume, it wins over the checkpoint's saved value
    saved = TrainingConfig(keep_last=2).to_dict()
    assert build_training_config(args, saved).keep_last is None
    assert build_training_config(build_parser().parse_args(["train"]), saved).keep_last == 2


def test_grad_clip_none_as_its_help_says():
    args = build_parser().parse_args(["train", "--grad-clip", "none"])
    assert build_training_config(args, None).grad_clip is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--keep-last", "some"])


def tiny_train(folder, *extra: str) -> list[str]:
    return ["train", "--layers", "1", "--heads", "2", "--dim", "16", "--context", "16",
            "--batch-size", "2", "--eval-batches", "1", "--tokenizer", "byte", "--device",
            "cpu", "--no-progress", "--checkpoint-dir", str(folder), *extra]


def test_keep_last_all_keeps_every_checkpoint_of_a_real_run(tmp_path, capsys, one_thread):
    assert main(tiny_train(tmp_path, "--max-steps", "5", "--checkpoint-interval", "1",
                           "--eval-interval", "5", "--keep-last", "all")) == 0
    steps = sorted(int(re.search(r"_step(\d+)_", path.name).group(1))
                   for path in tmp_path.glob("checkpoint_*.pt"))
    assert steps == [1, 2, 3, 4, 5]


def test_a_finished_run_is_reported_with_flags_not_python_arguments(tmp_path, capsys,
                                                                     one_thread):
    argv = tiny_train(tmp_path, "--max-steps", "2", "--eval-interval", "2")
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0  # the same command again: the run has finished
    out = capsys.readouterr().out
    assert "already finished" in out and "(--max-steps)" in out and "(--new-run)" in out
    assert "resume_from" not in out and "max_steps" not in out


def test_fit_arguments_become_their_flags():
    message = "start a separate run (resume_from=None) or use another checkpoint folder"
    assert with_flag_names(message, SETTING_FLAGS) == \
        "start a separate run (--new-run) or use another checkpoint folder"
