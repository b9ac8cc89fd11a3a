"""The machine side of training: device choice, CPU threads, memory figures and release,
and what counts as running out of memory."""

from __future__ import annotations

import gc
import math
import os
import re
from dataclasses import dataclass

import torch

from refdet.engine.health import Verdict

GB = 1024**3


# A failed CPU allocation is a RuntimeError from torch's allocator, not a MemoryError.
CPU_OOM_MESSAGES = ("can't allocate memory", "not enough memory", "out of memory")
# A DataLoader worker SIGKILLed (in practice the kernel's OOM killer), as torch's SIGCHLD handler
# says it (the trainer says it so too where that handler cannot run: Trainer.batches).
LOADER_KILLED = re.compile(r"DataLoader worker \(pid.*killed by signal: Killed", re.S)
# The size a failed allocation asked for, as torch (CUDA: "Tried to allocate 2.00 GiB", or with
# throw_on_cudamalloc_oom "Requested size: 2.00 GiB", cudaMallocAsync "Requested   : 2.00 GiB";
# CPU: "you tried to allocate 123 bytes") and numpy ("Unable to allocate 1.5 PiB") say it.
REQUEST = re.compile(r"(?i)(?:allocate|requested(?: size)?\s*:)\s*([\d.]+) ?(bytes|[KMGTPE]i?B)")
UNITS = {"bytes": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "pb": 1e15, "eb": 1e18, "kib": 2**10,
         "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50, "eib": 2**60}
AT_SHARE = 0.95  # a run using this much of its share when memory ran out used its share


class MemoryPushedOver(RuntimeError):
    """Memory ran out while this run used less than its share of a device or node it shares
    with other runs: another run pushed it over. Not a verdict on this run's configuration; a
    search retries the trial from its last checkpoint (Tune's FailureConfig)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, Python's MemoryError, torch's CPU allocator running out, or a loader worker
    killed by SIGKILL (the kernel's OOM killer). Not MemoryPushedOver: that one is decided."""
    if isinstance(exc, MemoryPushedOver):
        return False
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and (any(m in str(exc) for m in CPU_OOM_MESSAGES)
                                              or LOADER_KILLED.search(str(exc)) is not None)


def oom_verdict(exc: BaseException, step: int, used: str = "") -> Verdict:
    """An out-of-memory error as a verdict: deterministic for a config, never retried."""
    values = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    if used:
        values["used"] = used
    return Verdict("oom", "oom", step, values)


@dataclass(frozen=True)
class MemoryShare:
    """What a run may use where it shares its machine. `device_share`: its share of the CUDA
    device (a trial's resources.gpu; enforced by the allocator, see limit_cuda_memory);
    `host_share`: its share of the node's host memory (a trial's packing fraction of the node,
    tune/trainable.py); `host_budget_gb`: health.mem_budget_gb. 1.0: the run has it alone."""

    device_share: float = 1.0
    host_share: float = 1.0
    host_budget_gb: float = math.inf


def requested_gb(exc: BaseException) -> float:
    """The size the failed allocation asked for, in GB, when the message says it (else 0)."""
    m = REQUEST.search(str(exc))
    return float(m.group(1)) * UNITS[m.group(2).lower()] / GB if m else 0.0


def judge_oom(exc: BaseException, step: int, device: torch.device, share: MemoryShare) -> Verdict:
    """An out-of-memory error: the `oom` verdict when the run itself used its share (what it
    held plus what it asked for; or it had the device/node to itself); raises
    MemoryPushedOver when it ran out within its share -- a neighbour's doing, not the
    configuration's. Call before freeing memory: it reads what the run holds."""
    # torch raises most CUDA OOMs as OutOfMemoryError, some (a library's own cudaMalloc) as a
    # plain "CUDA error: out of memory": both ran out on the device, not on the host.
    if device.type == "cuda" and (isinstance(exc, torch.OutOfMemoryError) or "CUDA" in str(exc)):
        where = f"CUDA device {device}"
        held = torch.cuda.memory_reserved(device) / GB if torch.cuda.is_available() else 0.0
    else:
        where, held = "host", run_rss_gb()
    need = held + requested_gb(exc)
    used = uses_its_share(need, share, where, device)
    if used is not None:
        return oom_verdict(exc, step, used)
    raise MemoryPushedOver(f"memory ran out at step {step} while this run held {need:.2f} GB, within its share "
                           f"of the {where} ({type(exc).__name__}: {str(exc)[:160]}): another run on the same "
                           "device or node pushed it over; not a verdict on this configuration") from exc


def uses_its_share(need_gb: float, share: MemoryShare, where: str, device: torch.device | None = None) -> str | None:
    """'X GB of its Y GB share of the <where>' when a run needing `need_gb` used its share
    (at least AT_SHARE of it, or it has the device/node to itself), else None."""
    if where == "host":
        fraction = share.host_share
        limit = min(share.host_budget_gb, fraction * host_total_gb())
    else:
        fraction = share.device_share
        total = torch.cuda.get_device_properties(device).total_memory / GB if torch.cuda.is_available() else math.inf
        limit = fraction * total
    if fraction >= 1.0 or need_gb >= AT_SHARE * limit:
        return f"{need_gb:.2f} GB of its {limit:.2f} GB share of the {where}"
    return None


def cuda_total_gb(device: torch.device) -> float:
    """The device's memory in GB; 0 for a CPU."""
    return torch.cuda.get_device_properties(device).total_memory / GB if device.type == "cuda" else 0.0


def cuda_budget_gb(cfg, total_gb: float) -> float:
    """A run's CUDA budget, the memory_budget rule's limit: health.cuda_mem_fraction x its share
    of the device (device_share: a trial's resources.gpu) x the device's memory. Its share is
    all the allocator will give it (limit_cuda_memory), so the rule fires before the
    allocator refuses. 0 on a CPU (no CUDA check)."""
    return cfg.health.cuda_mem_fraction * cfg.device_share * total_gb


def limit_cuda_memory(device: torch.device, device_share: float) -> None:
    """Hold a run that shares its GPU to its share: the caching allocator refuses beyond
    `device_share` of the device, so a run can only exceed its own share, and an OOM within
    it is another process's doing (judge_oom)."""
    if device.type == "cuda" and device_share < 1.0:
        torch.cuda.set_per_process_memory_fraction(device_share, device)


def host_total_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return math.inf


def run_rss_gb() -> float:
    """This process's anonymous RSS plus its child processes' (loader workers), in GB."""
    total = host_rss_gb()
    me = str(os.getpid())
    for stat in _child_stats(me):
        total += host_rss_gb(stat)
    return total


def _child_stats(ppid: str) -> list[str]:
    out = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for pid in filter(str.isdigit, entries):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields_after_name = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields_after_name[1] == ppid:  # field 4 of stat: the parent pid
            out.append(f"/proc/{pid}/status")
    return out


def host_rss_gb(status: str = "/proc/self/status") -> float:
    """Resident anonymous memory of this process (or the one whose /proc status file is
    given) in GB (Linux RssAnon): the heap, tensors, Python objects -- what grows in a leak and
    what the OOM killer counts. File-backed pages (the memory-mapped frame cache, shared by
    the trials of a node and reclaimable) are left out: touching more cached frames is not a
    leak. Falls back to the total RSS, then to the peak RSS, where /proc is not there."""
    if status != "/proc/self/status":
        try:
            with open(status) as fh:
                return next((int(x.split()[1]) * 1024 / GB for x in fh if x.startswith("RssAnon:")), 0.0)
        except OSError:  # the process ended meanwhile
            return 0.0
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
