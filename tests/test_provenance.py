"""run.json records every train call: its first iteration, the versions and the machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_api import QUIET
from test_api import TINY as API_TINY

import maml_rl
from maml_rl import machine

TINY = {k: v for k, v in API_TINY.items() if k != "num_batches"}


def calls(run: Path) -> list[dict[str, object]]:
    return json.loads((run / "run.json").read_text())["calls"]


def test_each_call_that_trains_is_recorded_with_its_first_iteration(tmp_path: Path) -> None:
    run = tmp_path / "run"
    maml_rl.train(maml_rl.load_config("navigation", num_batches=1, **TINY), run, **QUIET)
    maml_rl.train(maml_rl.load_config("navigation", num_batches=3, **TINY), run, resume=True,
                  **QUIET)  # fmt: skip
    recorded = calls(run)
    assert [c["from_iteration"] for c in recorded] == [0, 1]
    for call in recorded:
        assert {k: call[k] for k in machine.versions()} == machine.versions()
        assert str(call["machine"]).startswith(machine.cpu_model())
    record = json.loads((run / "run.json").read_text())
    assert record["env"] == "navigation" and record["sampler"]
    # a new start in the same directory is a new run: its history starts with it
    maml_rl.train(maml_rl.load_config("navigation", num_batches=1, **TINY), run,
                  overwrite=True, **QUIET)  # fmt: skip
    assert [c["from_iteration"] for c in calls(run)] == [0]


@pytest.mark.parametrize("damage", ["{not json", "[1, 2]", '{"calls": 3}'])
def test_a_damaged_record_does_not_stop_a_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    run = tmp_path / "run"
    maml_rl.train(maml_rl.load_config("navigation", num_batches=1, **TINY), run, **QUIET)
    (run / "run.json").write_text(damage)
    capsys.readouterr()
    maml_rl.train(maml_rl.load_config("navigation", num_batches=2, **TINY), run, resume=True,
                  **QUIET)  # fmt: skip
    assert [c["from_iteration"] for c in calls(run)] == [1]
    out = capsys.readouterr()
    assert "call history starts anew" in out.out + out.err
