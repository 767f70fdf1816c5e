"""allocator.py: freed tensor memory stays in the heap (glibc), and the opt-out works."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
from malloc_probe import MALLINFO2

from maml_rl.allocator import configure_from_environment

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# How many bytes of a fresh tensor of argv[1] MiB glibc served from mmap (mallinfo2's hblkhd
# grows by the block when it does): 0 once the mmap threshold is above its size.
PROBE = (
    MALLINFO2
    + """
import sys, torch
from maml_rl.runtime import configure_process

configure_process()  # where a run starts; applies the setting unless MAML_RL_MALLOC=system
before = mallinfo2().hblkhd
block = torch.empty(int(sys.argv[1]) * 1024 * 1024, dtype=torch.uint8)
print(mallinfo2().hblkhd - before)
"""
)


def probe(setting: str | None, mib: int) -> int:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MAML_RL_MALLOC", "MAML_RL_PROCESS_SETTINGS")
    }
    if setting is not None:
        env["MAML_RL_MALLOC"] = setting
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(mib)], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")
def test_large_tensors_come_from_the_heap_unless_opted_out() -> None:
    assert probe(None, 16) == 0
    assert probe("system", 16) >= 16 * 1024 * 1024
    assert probe(None, 600) >= 600 * 1024 * 1024  # above the threshold: mmap as before


def test_configure_from_environment_applies_unless_opted_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAML_RL_MALLOC", "system")
    assert not configure_from_environment()
    monkeypatch.delenv("MAML_RL_MALLOC")
    assert configure_from_environment() == GLIBC
