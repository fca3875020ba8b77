"""``vitpipe bench --out``: the markdown file the rows are appended to, checked before any benchmarking."""

from __future__ import annotations

import os
from pathlib import Path

from vitpipe.errors import VitpipeError


def check_out(path: Path) -> None:
    """Refuses, before any benchmarking, an ``--out`` that :func:`vitpipe.bench.bench.append_rows` could not rewrite: a folder,
    a link, a device or FIFO, a file that is not UTF-8 text or not writable, or a path under a file or
    in a read-only folder (a 22 s run ended in IsADirectoryError, its results lost).

    Raises:
        VitpipeError: naming ``--out`` and the fix.
    """
    path = Path(path)
    fix = "give a markdown file to append to, e.g. --out BENCHMARKS.md"
    if path.is_symlink():
        raise VitpipeError(f"--out {path}: is a link; give the file itself (vitpipe does not write through links).")
    if path.exists():
        if path.is_dir():
            raise VitpipeError(f"--out {path}: is a folder; {fix}.")
        if not path.is_file():
            raise VitpipeError(f"--out {path}: is not a regular file (a FIFO or device); {fix}.")
        try:
            path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise VitpipeError(f"--out {path}: cannot be read ({reason}); {fix}.") from None
        if not _writable(path):
            raise VitpipeError(f"--out {path}: is read-only; make it writable (chmod u+w) or {fix}.")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise VitpipeError(f"--out {path}: {parent} is a file, not a folder; {fix}.")
    if not _writable(parent):
        raise VitpipeError(f"--out {path}: {parent} is read-only; {fix} in a writable folder.")


def _writable(path: Path) -> bool:
    """No write permission bit is read-only, even for root (who could write anyway)."""
    return bool(path.stat().st_mode & 0o222) and os.access(path, os.W_OK)
