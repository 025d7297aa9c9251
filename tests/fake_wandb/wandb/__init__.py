"""A stand-in for the `wandb` client (tests/test_loggers.py puts this folder on PYTHONPATH):
it records what training hands it to the JSON file $FAKE_WANDB_RECORD, on each call, so a
test reads back the run's id, settings and logged metrics without the real client."""

from __future__ import annotations

import json
import os
from typing import Any

_calls: dict[str, Any] = {"init": None, "log": [], "finished": False}


def _save() -> None:
    with open(os.environ["FAKE_WANDB_RECORD"], "w", encoding="utf-8") as handle:
        json.dump(_calls, handle)


class Run:
    def log(self, data: dict[str, Any], step: int | None = None) -> None:
        _calls["log"].append([step, data])
        _save()

    def finish(self) -> None:
        _calls["finished"] = True
        _save()


def init(project: str | None = None, id: str | None = None, name: str | None = None,  # noqa: A002
         dir: str | None = None, config: dict | None = None, resume: str | None = None,  # noqa: A002
         **others: Any) -> Run:
    _calls["init"] = {"project": project, "id": id, "name": name, "dir": dir,
                      "config": config, "resume": resume, "others": sorted(others),
                      "mode_env": os.environ.get("WANDB_MODE")}
    _save()
    return Run()
