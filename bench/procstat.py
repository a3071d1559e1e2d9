"""CPU time and memory of a process (all its threads) from ``/proc`` (Linux)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (every thread), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        # the command name (field 2) may contain spaces: split after its closing paren
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # fields 14 and 15 of stat(5)


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB (0 when unknown)."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


@dataclass
class CpuWindow:
    """CPU seconds used by a set of processes between :meth:`start` and :meth:`stop`."""

    pids: Sequence[int]
    _start: list[float] | None = None
    seconds: float = 0.0

    def start(self) -> CpuWindow:
        self._start = [cpu_seconds(p) for p in self.pids]
        return self

    def stop(self) -> float:
        assert self._start is not None
        self.seconds = sum(cpu_seconds(p) - s for p, s in zip(self.pids, self._start, strict=True))
        return self.seconds


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs (from every ``/proc/<n>/stat``'s parent PID)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        parents.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out.extend(children)
        todo.extend(children)
    return out


def total_rss_mib(pids: Sequence[int]) -> float:
    return sum(memory_kib(p)[0] for p in pids) / 1024


def max_rss_mib(pids: Sequence[int]) -> float:
    """The largest RSS of one process (the per-worker figure)."""
    return max((memory_kib(p)[0] for p in pids), default=0) / 1024
