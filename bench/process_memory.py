"""This process's memory as the benches report it, in MB: resident now, and its peak so far."""

from __future__ import annotations

import resource
from pathlib import Path


def rss_mb() -> float:
    """Resident memory now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    """The largest resident memory this process has had."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
