"""The machine side of training: device choice, CPU threads, memory figures and release,
and what counts as running out of memory."""

from __future__ import annotations

import gc
import math
import os

import torch

from refdet.engine.health import Verdict

GB = 1024**3


# A failed CPU allocation is a RuntimeError from torch's allocator, not a MemoryError.
CPU_OOM_MESSAGES = ("can't allocate memory", "not enough memory", "out of memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, Python's MemoryError, or torch's CPU allocator running out."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in CPU_OOM_MESSAGES)


def oom_verdict(exc: BaseException, step: int) -> Verdict:
    """An out-of-memory error as a verdict: deterministic for a config, never retried."""
    return Verdict("oom", "oom", step, {"error": f"{type(exc).__name__}: {str(exc)[:200]}"})


def host_rss_gb() -> float:
    """Resident anonymous memory of this process in GB (Linux RssAnon): the heap, tensors,
    Python objects -- what grows in a leak and what the OOM killer counts. File-backed pages
    (the memory-mapped frame cache, shared by the trials of a node and reclaimable) are left
    out: touching more cached frames is not a leak. Falls back to the total RSS, then to the
    peak RSS, where /proc is not there."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GB
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def release_memory(device: torch.device | None = None) -> None:
    """Give freed memory back: Python's garbage, the CUDA cache, and glibc's heap (without
    malloc_trim a process keeps its high-water mark, and a reused Ray actor would carry one
    trial's peak into the next trial's RSS)."""
    gc.collect()
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available on this machine")
    return dev


def cpu_threads(allotment: float | None = None) -> int:
    """CPU threads for torch: the CPUs this process may use, capped by an allotment (a Ray
    trial's resources.cpu, rounded down, at least 1)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        available = os.cpu_count() or 1
    if allotment is None:
        return available
    return max(1, min(available, int(math.floor(allotment)) or 1))
