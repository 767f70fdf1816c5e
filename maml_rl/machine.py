"""The machine a figure was measured on, in one line, for the benchmarks' outputs.

A timing means little without its hardware, and one project's figures may come from different
machines: every script under ``benchmarks/`` prints `describe` first, so its output records
the CPU model, the CPUs the process may use, the memory, the torch build and its threads.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from maml_rl.memory import MEMINFO, meminfo_bytes
from maml_rl.threads import allowed_cpus

CPUINFO = Path("/proc/cpuinfo")


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


def describe() -> str:
    """One line: 'AMD EPYC, 2 CPUs, 24 GiB, torch 2.13.0+cpu (torch threads 2), no CUDA'."""
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
