"""Process-level settings that make CPU inference and training faster.

:func:`tune_allocator` - glibc's ``malloc`` on Linux
    By default glibc serves allocations from 128 KiB up with fresh ``mmap`` pages (the threshold
    then adapts) and gives free memory at the top of the heap back to the OS as soon as 128 KiB
    are free. A CNN forward allocates and frees activations of several MiB per layer and batch,
    so a fresh process takes a page fault for every page of every activation, every batch:
    measured on this project's 2-core machine, EfficientNet-Lite0 at batch 4 on 800 images runs
    at ~110 images/s with ~155,000 minor page faults per pass, and at ~205 images/s with none once
    the allocator keeps its memory (``benchmarks/README.md``). Long-lived processes (a Jupyter
    kernel that has run for a while) often reach the fast state by accident; this makes it the
    rule. It sets ``M_MMAP_THRESHOLD`` to 32 MiB (glibc's maximum; larger blocks are still
    mmapped) and ``M_TRIM_THRESHOLD`` to 1 GiB: freed memory stays in the process for reuse
    instead of being returned and faulted in again. The cost: up to that much free memory may
    stay resident after a peak (the peak itself does not grow).

    fusionkit calls it when it starts heavy work (feature extraction, training, robustness
    studies); it is process-wide, idempotent, and a no-op off glibc. ``FUSIONKIT_MALLOC_TUNING=0``
    turns it off. The same effect from outside: ``MALLOC_MMAP_THRESHOLD_=33554432
    MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment, or preloading jemalloc / tcmalloc.

:func:`available_cpus`, :func:`work_threads`, :func:`cpu_threads` - threads that fit the process
    ``available_cpus()`` is the number of cores this process may actually use: its CPU affinity
    (``os.sched_getaffinity``), capped by the cgroup CPU quota along its cgroup path (v2
    ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; a fractional quota rounds down,
    at least 1: a thread that outruns the quota is throttled for the rest of the period and stalls
    its peers at the next barrier) and, inside a Ray worker, by the CPUs Ray assigned to the task
    or trial (``ray.get_runtime_context().get_assigned_resources()["CPU"]``; Ray is only looked at
    when the process has already imported it). ``os.cpu_count()`` counts the machine's cores, and
    torch's default thread count follows the affinity only, so neither knows about a container's
    quota or a Ray trial's share.

    ``work_threads()`` is the intra-op thread count fusionkit's heavy work runs on (feature
    extraction, the tasks' training and evaluation, the robustness study's re-encoding; the
    comparison trainings keep ``TrainConfig.num_threads``): ``available_cpus()``, and no more than
    torch's current setting, so ``torch.set_num_threads(1)`` or ``OMP_NUM_THREADS=1`` still holds;
    inside a Ray worker exactly what Ray assigned (a worker is reused across trials, so its current
    setting may be a former trial's). ``with cpu_threads(n):`` applies it for a block and restores
    the previous count afterwards.

:func:`openmp_environment` - OpenMP threads that sleep instead of spinning
    torch runs its CPU kernels on OpenMP (libgomp in the pip wheels, MKL and oneDNN included). By
    default a thread that finishes its share of a parallel region spins for a while before it
    sleeps, which is right when the process owns its cores and disastrous when it does not: two
    processes with 2 threads each on 2 cores (two chains at once, or one chain next to anyone
    else's job) spend their time spinning while the thread they wait for is descheduled. Measured
    on this project's 2-core machine (benchmarks/README.md, ``concurrent_chains.py``): the smoke
    chain's VQA training took 5.2 s alone and 110 s each with two at once, burning 5x the CPU time
    (spinning); the smoke dataset's image features 2.2 s alone and 37 s each with two at once. With
    ``OMP_WAIT_POLICY=PASSIVE``, two at once: 5.2 s each (VQA) and 4.9 / 5.3 s (image features);
    next to another user's job, the image features alone took 36-38 s by default, 3.3-3.6 s passive.
    The price when a process is alone on its cores: waking a sleeping thread costs more than
    finding it spinning, about 30% of EfficientNet-Lite0's CPU forward at batch 4 (2.2 s -> 2.9 s
    for those image features); the small models of the tasks and the comparison do not notice.

    The policy is read once, when the OpenMP runtime loads (``import torch``), so it has to be in
    the environment before that: ``fusionkit run`` (the CLI and :func:`fusionkit.pipeline.run`,
    for the kernels it starts) calls ``openmp_environment()``, which sets ``OMP_WAIT_POLICY=PASSIVE``
    and ``OMP_NUM_THREADS=available_cpus()`` unless they are already set: set them yourself to
    choose otherwise (``OMP_WAIT_POLICY=ACTIVE`` for a machine you have to yourself). A Jupyter
    kernel started by hand does not get them (``make lab`` sets the policy).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import sys
from collections.abc import Iterator, MutableMapping
from pathlib import Path

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 1024 * 1024 * 1024

_state: dict[str, bool] = {}

#: where cgroup file systems are mounted, and the file naming this process's cgroups (tests point
#: them at fakes)
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
#: what :func:`openmp_environment` sets unless already set (``OMP_NUM_THREADS`` too)
OPENMP_WAIT_POLICY = "PASSIVE"

__all__ = [
    "allocator_tuned",
    "available_cpus",
    "cgroup_cpu_limit",
    "cpu_threads",
    "openmp_environment",
    "ray_cpus",
    "tune_allocator",
    "work_threads",
]


def tune_allocator() -> bool:
    """Apply the allocator settings above once per process; True when they are in effect."""
    if "tuned" in _state:
        return _state["tuned"]
    ok = False
    if os.environ.get("FUSIONKIT_MALLOC_TUNING", "1").strip().lower() not in ("0", "false", "no", "off"):
        ok = _mallopt()
    _state["tuned"] = ok
    return ok


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` has applied its settings in this process."""
    return _state.get("tuned", False)


def _mallopt() -> bool:
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


# ---------------------------------------------------------------------------------------- CPUs
def available_cpus() -> int:
    """The cores this process may use: affinity, cgroup quota and Ray's assignment (module docstring)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    for limit in (cgroup_cpu_limit(), ray_cpus()):
        if limit is not None:
            n = min(n, max(1, math.floor(limit)))
    return max(1, n)


def cgroup_cpu_limit() -> float | None:
    """Cores the cgroup CPU quota allows this process (quota / period), the smallest along its
    cgroup path, v2 or v1; None when there is no quota (or no cgroup file system)."""
    try:
        lines = PROC_SELF_CGROUP.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    limits: list[float] = []
    for line in lines:
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":  # cgroup v2 (unified)
            for mount in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
                limits += [q for d in _along(mount, path) if (q := _v2_limit(d / "cpu.max")) is not None]
        elif "cpu" in controllers.split(","):  # cgroup v1, cpu controller (often mounted as cpu,cpuacct)
            for mount in dict.fromkeys((CGROUP_ROOT / controllers, CGROUP_ROOT / "cpu")):
                limits += [q for d in _along(mount, path) if (q := _v1_limit(d)) is not None]
    if not lines:  # no /proc/self/cgroup: the mount points themselves
        for q in (_v2_limit(CGROUP_ROOT / "cpu.max"), _v1_limit(CGROUP_ROOT / "cpu")):
            if q is not None:
                limits.append(q)
    return min(limits) if limits else None


def _along(mount: Path, path: str) -> list[Path]:
    """``mount/path`` and each of its parents up to ``mount`` (a limit anywhere above applies too)."""
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    return [mount.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _v2_limit(path: Path) -> float | None:
    try:
        fields = path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    if not fields or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_limit(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text(encoding="ascii").strip())
        period = int((folder / "cpu.cfs_period_us").read_text(encoding="ascii").strip())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def ray_cpus() -> float | None:
    """The CPUs Ray assigned to the task / trial this process runs, when it is a Ray worker of an
    initialised Ray that the process has already imported (fusionkit never imports Ray); else None."""
    ray = sys.modules.get("ray")
    if ray is None:
        return None
    try:
        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # noqa: BLE001 - the driver (Ray asserts it is a worker), a Ray without this API
        return None
    return float(cpus) if cpus else None


def work_threads() -> int:
    """Intra-op threads for fusionkit's heavy work: :func:`available_cpus`, capped by torch's
    current setting, except in a Ray worker, which gets what Ray assigned (module docstring)."""
    import torch

    n = available_cpus()
    if ray_cpus() is None:
        n = min(n, torch.get_num_threads())
    return max(1, n)


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Temporarily run torch's CPU ops on ``n`` threads (no-op for None); the previous count is
    restored afterwards."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def openmp_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` and ``OMP_NUM_THREADS=available_cpus()`` in ``environ``
    (default ``os.environ``) where they are not set yet; returns what it set. Effective only for
    processes whose OpenMP runtime loads afterwards: child processes, or this one before
    ``import torch`` (module docstring)."""
    env = os.environ if environ is None else environ
    added = {}
    for key, value in (("OMP_WAIT_POLICY", OPENMP_WAIT_POLICY), ("OMP_NUM_THREADS", str(available_cpus()))):
        if key not in env:
            env[key] = added[key] = value
    return added
