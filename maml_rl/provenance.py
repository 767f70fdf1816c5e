"""A run's record, ``run.json``: what it trains and what each ``train`` call ran on.

    {"env": "ant-dir", "import_root": null, "sampler": "native (auto)",
     "calls": [{"from_iteration": 0, "maml-rl": "0.1.0", "python": "3.11.7",
                "torch": "2.13.0+cpu", "gymnasium": "1.4.0", "mujoco": "4.0.1",
                "numpy": "2.4.6", "machine": "AMD EPYC, 2 CPUs, 24 GiB, ..."},
               {"from_iteration": 393, ...}]}

A run resumed across machines or library versions says so: each call that trained (a start,
or a resume) appends its first iteration (0-based), the versions (`machine.versions`) and the
machine (`machine.describe`). A resumed run is bit-identical to an uninterrupted one only on
one machine and torch build, so this is where to look when two runs differ. The record is
information, not state: an unreadable one starts its call history anew, with a note.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maml_rl import artifacts, machine

CALLS = "calls"


def earlier_calls(path: Path, note: Callable[[str], None]) -> list[dict[str, Any]]:
    """The calls recorded in `path` ([] if there is none); an unreadable or malformed record
    gives [] and `note` says its history starts anew."""
    if not path.exists():
        return []
    try:
        record = artifacts.read_json(path, "its call history starts anew")
    except artifacts.ArtifactError as error:
        note(f"note: {error}")
        return []
    calls = record.get(CALLS, []) if isinstance(record, dict) else None
    if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
        note(f"note: {path} has no list of calls; its call history starts anew")
        return []
    return calls


def this_call(from_iteration: int) -> dict[str, Any]:
    """This process's entry: the first iteration it trains, the versions and the machine."""
    return {"from_iteration": from_iteration, **machine.versions(), "machine": machine.describe()}


def write(path: Path, env: str, import_root: str | None, sampler: str,
          calls: list[dict[str, Any]]) -> None:  # fmt: skip
    """Atomically write the record (`artifacts.write_text`)."""
    record = {"env": env, "import_root": import_root, "sampler": sampler, CALLS: calls}
    artifacts.write_text(path, json.dumps(record, indent=1) + "\n")
