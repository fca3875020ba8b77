"""Peak memory of a block of code, from Linux's /proc (no dependencies; zeros elsewhere)."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

PROC = Path("/proc")


def _kib(path: Path, key: str) -> int:
    """The ``key:  N kB`` line of a /proc file, in KiB; 0 when the file or line is missing."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (DataLoader workers), from /proc/<pid>/stat's ppid field."""
    out = []
    for entry in PROC.glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended meanwhile
        fields = stat.rsplit(")", 1)[-1].split()  # after "pid (comm)": state, ppid, ...
        if len(fields) > 1 and fields[1] == str(pid):
            out.append(int(entry.name))
    return out


def anon_with_children_kib(pid: int | None = None) -> int:
    """Anonymous memory (heap, tensors) of ``pid`` and its children, pages shared by fork counted once.

    The sum of each process's ``Pss_Anon``. Unlike PSS it leaves out shared libraries, whose
    share depends on whatever else runs on the machine.
    """
    pid = os.getpid() if pid is None else pid
    return sum(_kib(PROC / str(p) / "smaps_rollup", "Pss_Anon") for p in [pid, *_children(pid)])


def release_free_memory() -> None:
    """Collects garbage and returns glibc's free heap pages to the system (best effort)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """``with PeakMemory() as mem:`` records the block's peak memory in MiB.

    ``rss_mib``: this process's resident set (VmHWM, reset on entry where the kernel allows, and
    VmRSS sampled every ``interval`` seconds). ``anon_mib``: :func:`anon_with_children_kib`,
    sampled every ``children_every`` samples (1 s: reading smaps_rollup walks the page tables,
    about 10 ms for a 1 GiB process), so forked DataLoader workers count too.
    """

    def __init__(self, interval: float = 0.02, children_every: int = 50):
        self.interval, self.children_every = interval, children_every
        self._rss = self._anon = 0
        self._hwm_reset = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def rss_mib(self) -> float:
        return self._rss / 1024

    @property
    def anon_mib(self) -> float:
        return self._anon / 1024

    def _sample(self, with_children: bool) -> None:
        self._rss = max(self._rss, _kib(PROC / "self" / "status", "VmRSS"))
        if with_children:
            self._anon = max(self._anon, anon_with_children_kib())

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            self._sample(n % self.children_every == 0)

    def __enter__(self) -> PeakMemory:
        try:
            (PROC / "self" / "clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self._hwm_reset = True
        except OSError:
            logger.debug("cannot reset VmHWM; peak RSS from sampling only")
        self._sample(True)
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample(True)
        if self._hwm_reset:
            self._rss = max(self._rss, _kib(PROC / "self" / "status", "VmHWM"))
