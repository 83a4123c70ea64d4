"""How many CPUs this process may use: the affinity mask (taskset, `docker --cpuset-cpus`) and the cgroup CPU
quota (`docker --cpus`, Kubernetes limits), whichever is smaller. `os.cpu_count()` sees neither, and
`os.sched_getaffinity` does not exist on macOS."""
from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_quota(root: Path = CGROUP) -> float | None:
    """The CPU quota in CPUs (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`); None without one."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def affinity() -> int:
    """CPUs in this process's affinity mask; all CPUs where the platform has no mask (macOS, Windows)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def usable_cpus(root: Path = CGROUP) -> int:
    """min(affinity, ceil(cgroup quota)), at least 1: the threads or worker processes worth starting."""
    n = affinity()
    quota = cgroup_quota(root)
    if quota is not None and quota > 0:
        n = min(n, max(1, math.ceil(quota)))
    return n
