"""`maml_rl.machine`: the one line the benchmarks print about the hardware they ran on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maml_rl import machine


def test_cpu_model_is_the_first_model_name_of_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD   EPYC\n\n"
        "processor\t: 1\nmodel name\t: Other\n"
    )
    assert machine.cpu_model(cpuinfo) == "AMD EPYC"


def test_cpu_model_without_cpuinfo_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(machine.platform, "processor", lambda: "")
    assert machine.cpu_model(tmp_path / "missing") == "unknown CPU"
    (tmp_path / "empty").write_text("processor\t: 0\nmodel name\t:\n")
    assert machine.cpu_model(tmp_path / "empty") == "unknown CPU"


def test_total_memory_reads_memtotal_in_kib(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       25165824 kB\nMemFree:  1 kB\n")
    assert machine.total_memory_bytes(meminfo) == 24 * 2**30


def test_describe_names_the_cpu_memory_and_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "cpu_model", lambda: "Test CPU")
    monkeypatch.setattr(machine, "total_memory_bytes", lambda: 24 * 2**30)
    monkeypatch.setattr("maml_rl.threads.allowed_cpus", lambda: [0, 1])
    line = machine.describe()
    assert line.startswith("Test CPU, 2 CPUs, 24 GiB, torch ")
    assert torch.__version__ in line and f"torch threads {torch.get_num_threads()}" in line


def test_versions_come_from_metadata_without_importing_torch() -> None:
    """`maml-rl --version` stays fast: versions() is read from package metadata."""
    import subprocess
    import sys

    code = "import sys; from maml_rl.machine import versions; v = versions(); "
    code += "print(v['torch'], 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    version, imported = done.stdout.split()
    assert version == torch.__version__ and imported == "False"
