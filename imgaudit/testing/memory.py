"""Memory of a process tree, from /proc (Linux): what tests and bench/memory.py measure a command by.

``ru_maxrss`` of RUSAGE_CHILDREN gives only the largest single descendant; imgaudit runs decode workers
beside the main process, so what counts is the sum over the tree, sampled while it runs.
"""

from __future__ import annotations

import os
import subprocess
import threading


def _children_map() -> dict[int, list[int]]:
    """Every process's children, from /proc/*/stat (no /proc/PID/task/*/children on every kernel)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # ended meanwhile
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def rss_of(pid: int) -> int:
    """VmRSS in bytes; 0 for a process that ended (or a zombie, which has none)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakSampler(threading.Thread):
    """The largest sum of RSS over ``proc`` and its descendants, sampled every ``interval`` seconds."""

    def __init__(self, proc: subprocess.Popen[bytes] | subprocess.Popen[str], interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.proc, self.interval = proc, interval
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set() and self.proc.poll() is None:
            self.peak = max(self.peak, sum(rss_of(pid) for pid in process_tree(self.proc.pid)))
            self._done.wait(self.interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak
