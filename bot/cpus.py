"""How many CPUs this process may use (the ones it may run on, capped by a container's CPU
quota), and what they are (:func:`cpu_model`, which experiments record with their results).

``os.cpu_count()`` counts the host's CPUs: in a container limited to 2 CPUs on a 32-CPU host it
says 32, and 32 trainings (or inference threads) would share 2 CPUs. Training fan-out and the
replay's preparation size their pools with :func:`usable_cpus` instead.
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """The CPUs this process may run on (its affinity), at most the CPU quota of the cgroup
    mounted at ``cgroup`` rounded up (v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us``); at least 1. Inside a container that is the container's own quota;
    quotas set on parent cgroups are not read. An unreadable or absent quota caps nothing."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _quota(cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _quota(cgroup: Path) -> float | None:
    """The cgroup's CPU quota in CPUs, or None when there is none (or it cannot be read)."""
    try:
        v2 = cgroup / "cpu.max"
        if v2.is_file():
            limit, period = v2.read_text().split()[:2]
            return None if limit == "max" else int(limit) / int(period)
        v1 = cgroup / "cpu" / "cpu.cfs_quota_us"
        if v1.is_file():
            limit = int(v1.read_text())
            period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
            return None if limit <= 0 else limit / period
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return None


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else the platform's processor string."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
