"""Keep freed tensor memory in the process heap (glibc malloc), instead of handing it back to
the operating system after every tensor.

A meta-step allocates and frees tensors of 1–30 MB hundreds of times: a navigation CG product
alone makes about thirty [20 tasks, 2000 samples, 64] float32 temporaries (10 MB each). glibc
serves a block above its mmap threshold (128 KiB, raised dynamically after frees) with fresh
pages from `mmap` and unmaps it on `free`, and it returns the top of the heap to the system
once more than its trim threshold (128 KiB) is free; either way the next tensor of that size
starts on untouched pages, and every 4 KiB page costs a page fault on its first write. With
both thresholds raised, freed blocks are reused at once. Measured on this project's 2-core
machine (benchmarks/meta_step.py, navigation, 2 torch threads): a Gauss-Newton CG product
0.11 s → 0.06 s, the conjugate gradient 0.92–1.02 s → 0.60–0.64 s; raising only one of the
two thresholds gains nothing. The cost: up to `trim_threshold` of freed memory stays mapped
in each process.

Applied where a run starts (`maml_rl.runtime.configure_process`: the command line, the Python
API's `train` and `evaluate`), never on import, unless the environment sets
``MAML_RL_MALLOC=system`` (or ``MAML_RL_PROCESS_SETTINGS=off``); where the C library is not
glibc (macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 512 * 1024 * 1024
"""Blocks below this come from the heap (an ant meta-batch has 40 MB tensors)."""
MMAP_THRESHOLD_FALLBACK = 32 * 1024 * 1024
"""The largest mmap threshold older glibc accepts on 64-bit systems (HEAP_MAX_SIZE / 2)."""
TRIM_THRESHOLD = 1024 * 1024 * 1024


def _libc_function(name: str) -> ctypes._NamedFuncPointer | None:
    """The C library's function `name`, or None where there is none (not glibc, no libc)."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Hand the free memory the heap keeps (`retain_freed_memory`) back to the operating system
    (glibc's ``malloc_trim(0)``), so that what is allocated next is seen in the resident memory
    (`maml_rl.memory.environment_bytes` measures by it); False where there is no malloc_trim."""
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    trim(0)
    return True


def retain_freed_memory(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> bool:
    """Raise glibc's mmap and trim thresholds (bytes) with `mallopt` (an mmap threshold the C
    library refuses falls back to 32 MiB); False where there is no `mallopt` or a value is
    refused (then nothing or only part is changed)."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mmap_ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 or (
        mmap_threshold > MMAP_THRESHOLD_FALLBACK
        and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_FALLBACK) == 1
    )
    trim_ok = mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
    return mmap_ok and trim_ok


def configure_from_environment() -> bool:
    """`retain_freed_memory()` unless ``MAML_RL_MALLOC=system``; whether it was applied."""
    if os.environ.get("MAML_RL_MALLOC", "retain") == "system":
        return False
    return retain_freed_memory()
