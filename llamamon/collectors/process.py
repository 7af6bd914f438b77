"""The recorded command's whole process tree, summed: CPU in cores, RSS, threads, processes, I/O rates.

Cost. ``psutil.Process.children(recursive=True)`` reads the parent of every process on the machine, so
its cost grows with what else runs there (psrecord's does, with every process the machine adds).
Here the ``psutil.Process`` objects are kept between samples and descendants are found through
``/proc/<pid>/task/<tid>/children`` (one small read per thread of a process already in the tree), so a
tick costs in proportion to the tree, not to the machine. Where the kernel lacks that file (it needs
CONFIG_PROC_CHILDREN) or there is no /proc, the psutil walk is the fallback.

On Linux each member is read straight from ``/proc/<pid>/stat`` (CPU, children's CPU, RSS, threads, parent
and start time in one read) and ``/proc/<pid>/io``: the same files psutil reads, without its per-call
wrappers and the ``Process`` object ``ppid()`` builds to rule out a reused pid (which cost more than the
reads themselves). A reused pid shows as a changed start time instead. bench/RESULTS.md, "Recorder CPU
per sample", measures the result against psrecord and a bare psutil loop.

Processes that start and end between two samples. Linux adds a reaped child's CPU time (and its own
reaped children's) to the parent's ``children_user``/``children_system``, and its I/O to the parent's
/proc/<pid>/io. So the tree's cumulative CPU is the sum over live members of
``user + system + children_user + children_system``: when a member dies and its tracked parent reaps it,
its total moves into the parent's ``children_*`` and the sum stays continuous. A member that disappears
is therefore subtracted with its last reading when its parent is still in the tree (the parent now carries
it), and not otherwise (an orphan reaped by init takes its last interval with it; nothing is counted twice).
A child the tree never saw — born and reaped between two samples — shows up whole in its parent's
``children_*`` growth.

Processes the tree once held stay tracked while they live, so a worker that double-forks away from its
parent (daemonises) is still counted. The root process gone and nothing left: ``collect()`` returns [].
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from llamamon.collectors.base import MetricsCollector, on_grid, wait_min_window
from llamamon.samples import Sample


@dataclass(slots=True)
class _Member:
    ppid: int
    cpu: float  # user + system + children_user + children_system, seconds
    io: tuple[int, int] | None  # (read_bytes, write_bytes), None where /proc/<pid>/io is not ours to read
    rss: int
    threads: int


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _read(path: str) -> bytes | None:
    """The file's bytes, or None where it cannot be read (the process is gone, or not ours)."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def read_stat(pid: int) -> tuple[_Member, int] | None:
    """(member without I/O, start time in clock ticks) from ``/proc/<pid>/stat``; None once it is gone."""
    data = _read(f"/proc/{pid}/stat")
    if data is None:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields that follow start after the last ")".
    fields = data[data.rindex(b")") + 2 :].split()
    # fields[0] is field 3 of proc(5): ppid 4, utime 14, stime 15, cutime 16, cstime 17, threads 20, start 22, rss 24
    cpu = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / _CLOCK_TICKS
    return _Member(int(fields[1]), cpu, None, int(fields[21]) * _PAGE_SIZE, int(fields[17])), int(fields[19])


def read_io(pid: int) -> tuple[int, int] | None:
    """(read_bytes, write_bytes) from ``/proc/<pid>/io``; None where it is not ours to read (setuid, zombie)."""
    data = _read(f"/proc/{pid}/io")
    if data is None:
        return None
    read = write = None
    for line in data.splitlines():
        if line.startswith(b"read_bytes:"):
            read = int(line[11:])
        elif line.startswith(b"write_bytes:"):
            write = int(line[12:])
    return (read, write) if read is not None and write is not None else None


def proc_children_supported(proc_root: Path = Path("/proc")) -> bool:
    """Whether this kernel lists a thread's children in /proc (CONFIG_PROC_CHILDREN)."""
    pid = os.getpid()
    return sys.platform.startswith("linux") and (proc_root / str(pid) / "task" / str(pid) / "children").exists()


class ProcessTreeCollector(MetricsCollector):
    """Sums over the process tree rooted at ``root_pid`` (group ``process``)."""

    name = "process"
    group = "process"

    def __init__(self, root_pid: int, clock: Callable[[], float] = time.monotonic, born: float | None = None) -> None:
        """``born``: when the caller started ``root_pid`` (on ``clock``), if it did; see ``open()``."""
        self.root_pid = root_pid
        self._clock = clock
        self._born = born
        self._procs: dict[int, psutil.Process] = {}
        self._members: dict[int, _Member] = {}
        self._at: float | None = None
        self._collected = False
        self._proc_children = proc_children_supported()
        self._started: dict[int, int] = {}  # start time (clock ticks after boot) per pid read from /proc

    # -- discovery -------------------------------------------------------------------------------

    def _children(self, pid: int) -> list[int]:
        """Direct children of ``pid`` from /proc, every thread included (any thread can fork)."""
        task_dir = f"/proc/{pid}/task"
        try:
            tids = os.listdir(task_dir)
        except OSError:
            return []
        found: list[int] = []
        for tid in tids:
            try:
                with open(f"{task_dir}/{tid}/children", "rb") as fh:
                    data = fh.read()
            except OSError:
                continue  # the thread ended between listdir and open
            if data:
                found.extend(int(child) for child in data.split())
        return found

    def _discover(self) -> tuple[list[int], set[int]]:
        """Pids of the tree now (root, everything below it, earlier members still alive), and which of
        them were found under a live parent in the tree rather than only remembered."""
        if not self._proc_children:
            try:
                below = [p.pid for p in psutil.Process(self.root_pid).children(recursive=True)]
            except psutil.Error:
                below = []
            descended = set(below)
            return list(dict.fromkeys([self.root_pid, *below, *self._members])), descended
        order: list[int] = []
        seen: set[int] = set()
        descended: set[int] = set()
        stack = [self.root_pid, *self._members]
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            order.append(pid)
            children = self._children(pid)
            descended.update(children)
            stack.extend(child for child in children if child not in seen)
        return order, descended

    def _process(self, pid: int, descended: bool) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is None:
            try:
                proc = psutil.Process(pid)
            except psutil.Error:
                return None
            self._procs[pid] = proc
        elif not descended and not proc.is_running():
            # Why only here: a pid found under a live member is in the tree by definition; the root and
            # remembered members that no parent lists any more might have ended and their pid been reused.
            del self._procs[pid]
            return None
        return proc

    def _read(self) -> dict[int, _Member]:
        order, descended = self._discover()
        if self._proc_children:
            return self._read_proc(order, descended)
        members: dict[int, _Member] = {}
        for pid in order:
            proc = self._process(pid, descended=pid in descended)
            if proc is None:
                continue
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss = proc.memory_info().rss
                    threads = proc.num_threads()
                    ppid = proc.ppid()
            except psutil.Error:
                # Gone (or not ours to read) since discovery: no row rather than a partial one.
                self._procs.pop(pid, None)
                continue
            try:
                counters = proc.io_counters()
                io: tuple[int, int] | None = (counters.read_bytes, counters.write_bytes)
            except (psutil.Error, AttributeError, NotImplementedError, OSError):
                io = None  # AccessDenied for a setuid child, zombies, or no per-process I/O on this OS
            cpu = times.user + times.system
            cpu += getattr(times, "children_user", 0.0) + getattr(times, "children_system", 0.0)
            members[pid] = _Member(ppid, cpu, io, rss, threads)
        for pid in set(self._procs) - set(members):
            del self._procs[pid]
        return members

    def _read_proc(self, order: list[int], descended: set[int]) -> dict[int, _Member]:
        members: dict[int, _Member] = {}
        started: dict[int, int] = {}
        for pid in order:
            found = read_stat(pid)
            if found is None:
                continue  # gone since discovery
            member, start = found
            known = self._started.get(pid)
            if known is not None and known != start and pid not in descended:
                continue  # the pid was reused by a process outside the tree
            member.io = read_io(pid)
            members[pid] = member
            started[pid] = start
        self._started = started
        return members

    # -- collector interface ---------------------------------------------------------------------

    def pids(self) -> set[int]:
        """Pids in the tree at the last reading (for attributing GPU memory to the job)."""
        return set(self._members)

    async def open(self) -> None:
        if self._born is not None:
            # A process just started had used no CPU and done no I/O at birth: the first window runs from
            # there, so the first sample has all of the job's start and no window left to wait out.
            self._members = {self.root_pid: _Member(ppid=0, cpu=0.0, io=(0, 0), rss=0, threads=0)}
            self._at = self._born
        else:
            self._members = self._read()
            self._at = self._clock()
        self._collected = False

    async def close(self) -> None:
        self._procs.clear()
        self._started.clear()
        self._members.clear()

    async def collect(self) -> list[Sample]:
        if self._at is None:
            await self.open()
        if not self._collected and any(map(psutil.pid_exists, self._members)):
            # (A tree already gone has nothing left to measure: its last reading is taken at once.)
            await wait_min_window(self._clock, self._at)  # type: ignore[arg-type]  # open() set it
        before, before_at = self._members, self._at
        now = self._read()
        at = self._clock()
        self._members, self._at, self._collected = now, at, True
        if not now:
            return []

        cpu = 0.0
        read = write = 0
        has_io = False
        for pid, member in now.items():
            prev = before.get(pid)
            cpu += member.cpu - (prev.cpu if prev is not None else 0.0)
            if member.io is not None:
                has_io = True
                prev_io = prev.io if prev is not None and prev.io is not None else (0, 0)
                read += member.io[0] - prev_io[0]
                write += member.io[1] - prev_io[1]
        for pid, gone in before.items():
            if pid in now or (gone.ppid not in now and gone.ppid not in before):
                continue
            # Its parent in the tree reaped it (or will): its total now lives in the parent's children_*.
            cpu -= gone.cpu
            if gone.io is not None:
                read -= gone.io[0]
                write -= gone.io[1]

        out = [
            Sample("process_memory_rss", float(sum(m.rss for m in now.values()))),
            Sample("process_threads", float(sum(m.threads for m in now.values()))),
            Sample("process_tree_size", float(len(now))),
        ]
        elapsed = at - before_at  # type: ignore[operator]
        if elapsed > 0:
            out.append(Sample("process_cpu_usage", max(0.0, cpu) / elapsed))
            if has_io:
                out.append(Sample("process_io_read_throughput", max(0, read) / elapsed))
                out.append(Sample("process_io_write_throughput", max(0, write) / elapsed))
        return on_grid(out)
