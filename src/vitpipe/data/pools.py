"""Process pools for the data work (image checks, synthetic images): the start method that is safe here."""

from __future__ import annotations

import multiprocessing
import threading


def pool_context() -> multiprocessing.context.BaseContext:
    """fork where there is one, from a process running one Python thread (as torch's DataLoader forks its
    workers: the pool's work uses neither torch nor CUDA, so their native threads and state do not matter
    to it); otherwise forkserver (or spawn), whose workers import afresh, a second or so on 2 cores."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
