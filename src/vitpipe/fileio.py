"""Atomic writes: a reader (or a later stage) sees the old file or the complete new one, never half.

Temporary files and folders are named ``.<name>.<pid>.<random>.tmp`` beside their target (git
ignores ``.*.tmp``); one left behind by a killed process is removed by the next write of that
target. A write that fails for want of space or permission is a :class:`VitpipeError` naming the
target, not a traceback.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from vitpipe.errors import VitpipeError

# errno values that say the disk, not the program, refused a write.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM,
                         errno.EIO})


def disk_error_text(exc: BaseException, path: Path | str) -> str:
    """``PATH: No space left on device``: what failed, for a message that names the target, not a temp file."""
    reason = getattr(exc, "strerror", None) or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return f"{path}: {reason}"


def write_error(path: Path | str, exc: BaseException) -> VitpipeError:
    """The one-line error for a failed write of ``path``."""
    if getattr(exc, "errno", None) == errno.EISDIR:
        return VitpipeError(f"could not write {path}: it is a folder; give the path of a file there.")
    return VitpipeError(f"could not write {disk_error_text(exc, path)}. Free space or fix permissions "
                        f"there, then run again.")


def _is_disk_error(exc: OSError, tmp: Path, path: Path) -> bool:
    """True for a failed write of ``path`` or into ``tmp`` (not, say, an unreadable input read in the block)."""
    if exc.filename is None:
        return exc.errno in DISK_ERRNOS
    name = Path(os.fsdecode(exc.filename))
    return name in (path, path.parent) or name == tmp or name.is_relative_to(tmp)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temps(target: Path) -> None:
    """Removes ``.<name>.<pid>.*.tmp`` beside ``target`` left by a process that no longer runs."""
    try:
        entries = list(target.parent.glob(f".{target.name}.*.tmp"))
    except OSError:
        return
    for entry in entries:
        pid = entry.name[len(target.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def umask() -> int:
    """The process's umask, read without changing it (``os.umask`` sets it: another thread could
    create a file meanwhile); from /proc where it is there, else set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_mode(path: Path, *, folder: bool) -> None:
    """Gives ``path`` the permissions a plain ``open``/``mkdir`` would (the umask applied): ``mkstemp``
    and ``mkdtemp`` create them private (0600, 0700), and a rename keeps that."""
    os.chmod(path, (0o777 if folder else 0o666) & ~umask())


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` only if the block succeeds.

    Raises:
        VitpipeError: the folder cannot be written (full, read-only, no permission).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
        usual_mode(Path(tmp), folder=False)
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        if not _is_disk_error(exc, tmp_path, path):
            raise
        raise write_error(path, exc) from None
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yields an empty temporary directory beside ``path``; swaps it in for ``path`` on success.

    On failure the temporary directory is removed and any previous ``path`` stays untouched.

    Raises:
        VitpipeError: the temporary folder cannot be made, or the swap fails (full, read-only disk).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
        usual_mode(tmp, folder=True)
    except OSError as exc:
        raise write_error(path, exc) from None
    old = tmp.with_name(tmp.name.removesuffix(".tmp") + ".old.tmp")
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        if old.exists() and not path.exists():
            os.replace(old, path)  # put the previous one back
        if not _is_disk_error(exc, tmp, path):
            raise
        raise write_error(path, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: Path | str, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path | str, text: str) -> None:
    """Writes UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def _rounded(value: Any, digits: int) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, Mapping):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    return value


def _non_finite(value: Any, where: str = "") -> str | None:
    """Where in ``value`` a float is NaN or inf (``["loss"]``, ``row 3 ["confidence"]``); None when none is."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "a value"
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}[{json.dumps(key, ensure_ascii=False)}]")
        if found is not None:
            return found
    return None


def _refuse_non_finite(path: Path | str, data: Any) -> None:
    """No vitpipe output holds NaN or inf: the producer refuses first, naming the cause; this is the last guard."""
    where = _non_finite(data)
    if where is not None:
        raise VitpipeError(f"could not write {path}: {where} is not a finite number (NaN or inf), so the numbers "
                           f"it would hold are meaningless; nothing written. Rerun with train.precision: fp32 and "
                           f"a lower train.lr, and report it if it persists.")


def write_json(path: Path | str, data: Any, *, digits: int = 6) -> None:
    """Writes ``data`` as indented JSON with floats rounded, so equal results give equal bytes.

    Raises:
        VitpipeError: a float in ``data`` is NaN or inf (JSON has no such numbers).
    """
    _refuse_non_finite(path, data)
    write_text(path, json.dumps(_rounded(data, digits), indent=2, ensure_ascii=False) + "\n")


def write_csv(path: Path | str, rows: Sequence[Mapping[str, Any]], *, columns: Sequence[str],
              digits: int = 6) -> None:
    """Writes ``rows`` as CSV with a header of ``columns`` and floats rounded.

    Raises:
        VitpipeError: a float in ``rows`` is NaN or inf.
    """
    _refuse_non_finite(path, [{k: row[k] for k in columns} for row in rows])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _rounded(row[k], digits) for k in columns})
    write_text(path, buf.getvalue())


def read_json(path: Path | str) -> Any:
    """Reads a JSON file written by :func:`write_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def file_sha256(path: Path | str) -> str:
    """SHA-256 of the file's bytes, read in 1 MiB chunks (the digest the split-check indexes images by)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
