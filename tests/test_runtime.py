"""runtime.py: importing maml_rl changes nothing in the process; a run's start (the CLI, the
Python API) applies the environment variables and the allocator, with opt-outs."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
from malloc_probe import MALLINFO2

from maml_rl import runtime
from maml_rl.ray_sampler import _actor_environment

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
OURS = ("MKL_CBWR", "OMP_WAIT_POLICY", "MUJOCO_GL")

# Prints, as JSON, what the process looks like after running argv[1]: our variables, whether
# the environment changed at all, what they were when torch was first imported, and how many
# bytes of a fresh 16 MiB tensor glibc served from mmap (0 once our thresholds are set).
PROBE = (
    MALLINFO2
    + """
import importlib.abc, json, os, sys

OURS = ("MKL_CBWR", "OMP_WAIT_POLICY", "MUJOCO_GL")
at_torch = {}

class WatchTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not at_torch:
            at_torch.update({k: os.environ.get(k) for k in OURS})
        return None

sys.meta_path.insert(0, WatchTorch())
before = dict(os.environ)
exec(sys.argv[1])
changed = sorted(k for k in {*before, *os.environ} if before.get(k) != os.environ.get(k))
import torch
start = mallinfo2().hblkhd
block = torch.empty(16 * 1024 * 1024, dtype=torch.uint8)
print(json.dumps({"changed": changed, "at_torch": at_torch, "mmap": mallinfo2().hblkhd - start,
                  "ours": {k: os.environ.get(k) for k in OURS}}))
"""
)


def probe(code: str, **extra: str) -> dict:
    """Run `code` in a fresh interpreter without our variables, any display or opt-out."""
    dropped = (*OURS, "DISPLAY", "WAYLAND_DISPLAY", runtime.SWITCH, "MAML_RL_MALLOC")
    env = {k: v for k, v in os.environ.items() if k not in dropped} | extra
    out = subprocess.run(
        [sys.executable, "-c", PROBE, code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallinfo2 is glibc's")
def test_importing_maml_rl_changes_nothing() -> None:
    result = probe(
        "import maml_rl, maml_rl_envs\n"
        "assert 'torch' not in sys.modules  # the top-level names load on first use\n"
        "maml_rl.Config, maml_rl.train, maml_rl.evaluate\n"
        "import maml_rl.cli, maml_rl.train, maml_rl.evaluate, maml_rl.api"
    )
    # third-party modules may set their own (Gymnasium: PYGAME_HIDE_SUPPORT_PROMPT); never ours
    assert not set(result["changed"]) & set(OURS), result
    assert result["ours"] == dict.fromkeys(OURS)
    assert result["mmap"] >= 16 * 1024 * 1024  # glibc's own thresholds: still from mmap
    only_maml_rl = probe("import maml_rl, maml_rl_envs")
    assert only_maml_rl["changed"] == []


@pytest.mark.skipif(not GLIBC, reason="mallinfo2 is glibc's")
def test_the_cli_applies_the_settings_before_it_imports_torch() -> None:
    result = probe("from maml_rl.cli import main\nassert main(['check', 'navigation']) == 0")
    wanted = {"MKL_CBWR": "AUTO,STRICT", "OMP_WAIT_POLICY": "PASSIVE", "MUJOCO_GL": "egl"}
    assert result["at_torch"] == wanted, "torch was imported before the settings (or never)"
    assert result["ours"] == wanted
    assert result["mmap"] == 0  # the allocator keeps the block in the heap

    opted_out = probe(
        "from maml_rl.cli import main\nassert main(['check', 'navigation']) == 0",
        MAML_RL_PROCESS_SETTINGS="off",
    )
    assert opted_out["ours"] == dict.fromkeys(OURS) and opted_out["mmap"] >= 16 * 1024 * 1024


@pytest.mark.skipif(not GLIBC, reason="mallinfo2 is glibc's")
def test_python_api_applies_them_and_the_allocator_even_after_torch() -> None:
    result = probe("import torch\nfrom maml_rl import configure_process\nconfigure_process()")
    assert result["ours"]["OMP_WAIT_POLICY"] == "PASSIVE" and result["mmap"] == 0


def test_configure_process_keeps_user_values_and_has_opt_outs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    applied: list[bool] = []

    def configure_from_environment() -> bool:
        applied.append(True)
        return True

    monkeypatch.setattr(runtime, "configure_from_environment", configure_from_environment)
    monkeypatch.setattr(os, "environ", {"OMP_WAIT_POLICY": "ACTIVE"})
    settings = runtime.configure_process()
    assert settings == runtime.ProcessSettings(
        {"MKL_CBWR": "AUTO,STRICT", "MUJOCO_GL": "egl"}, True
    )
    assert os.environ == {
        "OMP_WAIT_POLICY": "ACTIVE",
        "MKL_CBWR": "AUTO,STRICT",
        "MUJOCO_GL": "egl",
    }
    assert runtime.configure_process().environment == {}  # again: nothing left to set

    monkeypatch.setattr(os, "environ", {"DISPLAY": ":0"})  # a display: MuJoCo's default GL
    assert "MUJOCO_GL" not in runtime.configure_process().environment
    for off in ({runtime.SWITCH: "off"}, {runtime.SWITCH: "0"}):
        monkeypatch.setattr(os, "environ", dict(off))
        assert runtime.configure_process() == runtime.ProcessSettings()
        assert os.environ == off
    monkeypatch.setattr(os, "environ", {})
    assert runtime.configure_process(enabled=False) == runtime.ProcessSettings()
    assert os.environ == {} and len(applied) == 3


def test_ray_actors_get_the_drivers_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "environ", {"MKL_CBWR": "AUTO,STRICT", runtime.SWITCH: "off"})
    env = _actor_environment()
    assert env["MKL_CBWR"] == "AUTO,STRICT" and env[runtime.SWITCH] == "off"
    assert "OMP_WAIT_POLICY" not in env and "PYTHONPATH" in env


def test_worker_signals_leave_the_main_process_alone() -> None:
    """Gymnasium's AsyncVectorEnv calls the worker's environment factory once in the main
    process (for the spaces): there it must not take Ctrl-C or SIGTERM from the run."""
    import signal

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    runtime.configure_worker_signals()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
