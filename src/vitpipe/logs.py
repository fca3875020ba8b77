"""Logging set-up and the error boundary shared by the console script and the stage scripts."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from vitpipe.errors import VitpipeError

logger = logging.getLogger("vitpipe")


def setup_logging(verbose: bool = False) -> None:
    """Configures the root logger once, in an entry point (never in library code)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("PIL", "matplotlib", "urllib3", "fsspec", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def one_line(exc: VitpipeError) -> str:
    """The message of ``exc``; raised in a DataLoader worker, torch re-raises it with the worker's
    traceback in the message, and the message is its last line."""
    text = str(exc)
    if "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        text = last.split(": ", 1)[1] if last.startswith(("VitpipeError: ", "vitpipe.errors.VitpipeError: ")) else last
    return text


def run_guarded(main: Callable[[], int | None]) -> int:
    """Runs ``main``; a :class:`VitpipeError` becomes one ``error:`` line and exit status 2."""
    try:
        return int(main() or 0)
    except VitpipeError as exc:
        logger.error("%s", one_line(exc))
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130


def run_stage(main: Callable[[], int | None]) -> int:
    """What a stage script's ``__main__`` calls: logging set-up, then :func:`run_guarded`."""
    setup_logging()
    return run_guarded(main)
