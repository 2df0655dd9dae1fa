"""How many CPUs this process may use: its affinity mask, which a container or ``taskset`` narrows below
the machine's count."""

from __future__ import annotations

import os


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
