"""Process pools for the data work (image checks, synthetic images): the start method that is safe here."""

from __future__ import annotations

import multiprocessing
import sys
import threading


def pool_context() -> multiprocessing.context.BaseContext:
    """fork where it is safe and fastest (Linux, a single-threaded process that has not imported torch: the
    download and split-check stages); otherwise forkserver (or spawn), whose workers import afresh."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and "torch" not in sys.modules and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
