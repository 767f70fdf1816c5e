"""maml_rl.interrupts: a Ctrl-C or SIGTERM whose KeyboardInterrupt Python drops in a finalizer
is delivered again, so that the command stops (it used to go on, ignoring SIGTERM for good).
Each case runs in a child process: it sends itself signals."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_artifacts import LATEST, TINY
from test_machine_failures import one_line

from maml_rl import checkpoint

# A finalizer that signals its own process while it runs: the handler's KeyboardInterrupt is
# raised inside __del__, where Python reports it as unraisable and drops it.
DROPPED = """
import os, signal, sys
from maml_rl.interrupts import interrupt_handling

class SignalsInFinalizer:
    def __init__(self, signum):
        self.signum = signum
    def __del__(self):
        os.kill(os.getpid(), self.signum)
        for _ in range(1000):  # bytecodes: the handler runs here, inside __del__
            pass
"""


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(("signal_name", "terminated"), [("SIGTERM", True), ("SIGINT", False)])
def test_an_interrupt_dropped_in_a_finalizer_is_delivered_again_in_ordinary_code(
    signal_name: str, terminated: bool
) -> None:
    """SIGTERM (exit 143 in `maml-rl`) and Ctrl-C (130) alike; the previous SIGTERM handler and
    unraisable hook come back afterwards."""
    done = run(
        DROPPED
        + f"""
with interrupt_handling() as interrupts:
    try:
        SignalsInFinalizer(signal.{signal_name})  # dropped at once
        for _ in range(10**7):
            pass
        print("went on")
    except KeyboardInterrupt:
        print("stopped", interrupts.terminated)
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
print(sys.unraisablehook is sys.__unraisablehook__)
"""
    )
    assert done.stdout.split() == ["stopped", str(terminated), "True", "True"], done
    assert done.stderr == "", "the dropped interrupt was reported"


def test_without_the_hook_python_drops_the_interrupt() -> None:
    """The premise: the same finalizer outside `interrupt_handling` loses the Ctrl-C."""
    done = run(
        DROPPED
        + """
try:
    SignalsInFinalizer(signal.SIGINT)
    for _ in range(10**6):
        pass
    print("went on")
except KeyboardInterrupt:
    print("stopped")
"""
    )
    assert done.stdout.splitlines() == ["went on"], done
    assert "Exception ignored in" in done.stderr


def test_other_unraisable_exceptions_still_reach_the_previous_hook() -> None:
    done = run(
        """
import sys
from maml_rl.interrupts import interrupt_handling

class Fails:
    def __del__(self):
        raise ValueError("from a finalizer")

with interrupt_handling():
    Fails()
print("went on")
"""
    )
    assert done.stdout.splitlines() == ["went on"]
    assert "Exception ignored in" in done.stderr and "ValueError: from a finalizer" in done.stderr


def test_train_stopped_by_a_sigterm_that_lands_in_a_finalizer_exits_143(tmp_path: Path) -> None:
    """End to end: the SIGTERM arrives while a finalizer runs at the end of iteration 3's
    checkpoint; the run stops there (exit 143, one line), as with any other SIGTERM."""
    out = tmp_path / "run"
    done = run(
        DROPPED
        + """
from maml_rl import checkpoint
from maml_rl.cli import main

save_atomic = checkpoint.save_atomic
calls = []

def save_then_finalize(state, path):
    save_atomic(state, path)
    calls.append(path)
    if len(calls) == 3:
        SignalsInFinalizer(signal.SIGTERM)

checkpoint.save_atomic = save_then_finalize
sys.exit(main(sys.argv[1:]))
""",
        "train",
        "navigation",
        "--out",
        str(out),
        *TINY,
        "--set",
        "num_batches=40",
        "--no-progress",
    )
    assert done.returncode == 143, done.stderr
    line = one_line(done.stderr)
    assert line.startswith("maml-rl: terminated (SIGTERM): interrupted; ") and "saved" in line
    assert checkpoint.load(out / LATEST)["iteration"] < 39


def test_the_python_api_inside_interrupt_handling_stops_on_sigterm_with_what_was_saved(
    tmp_path: Path,
) -> None:
    """docs/python-api.md: `maml_rl.train` inside `interrupt_handling()` turns SIGTERM into
    RunInterrupted naming what was saved, and the run resumes."""
    out = tmp_path / "run"
    script = f"""
import os, signal, sys
import maml_rl
from maml_rl.errors import RunInterrupted
from maml_rl.interrupts import interrupt_handling

def stop_at_second(info):
    if info.iteration == 1:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10**7):  # the handler runs in ordinary code here
            pass

cfg = maml_rl.load_config("navigation", num_batches=50, meta_batch_size=2, fast_batch_size=2,
                          env_kwargs={{"max_episode_steps": 10}}, hidden_sizes=[8], cg_iters=2)
with interrupt_handling() as interrupts:
    try:
        maml_rl.train(cfg, {str(out)!r}, callbacks=[stop_at_second], progress=False,
                      tensorboard=False, process_settings=False)
    except RunInterrupted as error:
        print(interrupts.terminated, "|", error)
"""
    done = run(script)
    terminated, message = done.stdout.strip().splitlines()[-1].split(" | ")
    assert terminated == "True" and "saved" in message, done
    assert checkpoint.load(out / LATEST)["iteration"] == 1
