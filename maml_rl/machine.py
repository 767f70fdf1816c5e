"""The machine and the software a figure or a run came from, for benchmarks and run records.

A timing means little without its hardware, and one project's figures may come from different
machines: every script under ``benchmarks/`` prints `describe` first, and every ``train`` call
records `versions` and `describe` in the run's ``run.json`` (`maml_rl.provenance`).
`versions` reads package metadata without importing torch (``maml-rl --version`` uses it).
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

from maml_rl.memory import MEMINFO, meminfo_bytes

CPUINFO = Path("/proc/cpuinfo")
PACKAGES = ("torch", "gymnasium", "mujoco", "numpy")
"""The libraries whose versions `versions` reports beside maml-rl and Python."""


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) Processor"): /proc/cpuinfo's first
    ``model name`` (Linux), else `platform.processor()`, else "unknown CPU"."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def total_memory_bytes(meminfo: Path = MEMINFO) -> int | None:
    """MemTotal from /proc/meminfo (Linux), else physical pages × page size; None if unknown."""
    return meminfo_bytes("MemTotal", meminfo)


def versions() -> dict[str, str]:
    """{"maml-rl": "0.1.0", "python": "3.11.7", "torch": "2.13.0+cpu", ...}: the installed
    versions of maml-rl, Python and `PACKAGES`, from metadata ("not installed" where absent)."""
    from maml_rl import __version__

    found = {"maml-rl": __version__, "python": ".".join(map(str, sys.version_info[:3]))}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def describe() -> str:
    """One line: 'AMD EPYC, 2 CPUs, 24 GiB, torch 2.13.0+cpu (torch threads 2), no CUDA'."""
    import torch

    from maml_rl.threads import allowed_cpus

    memory = total_memory_bytes()
    parts = [cpu_model(), f"{len(allowed_cpus())} CPUs"]
    if memory is not None:
        parts.append(f"{memory / 2**30:.0f} GiB")
    parts.append(f"torch {torch.__version__} (torch threads {torch.get_num_threads()})")
    if torch.cuda.is_available():
        parts.append(f"CUDA: {torch.cuda.get_device_name(0)}")
    else:
        parts.append("no CUDA")
    return ", ".join(parts)
