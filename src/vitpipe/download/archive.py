"""Safe extraction of zip and tar archives: nothing is ever written outside the target directory.

Every member name is checked before anything is written: absolute paths, ``..`` components,
links of any kind (image datasets have no use for them) and device files, FIFOs and sockets are
refused. Tar members also pass :func:`tarfile.data_filter`. A size cap applies twice: to the
sum of the sizes the headers declare (checked before the first byte is written) and to the
bytes actually written (so a lying header cannot fill the disk). macOS litter (``__MACOSX/``,
``.DS_Store``, ``._*`` AppleDouble files) is skipped. On any failure the target is removed.
"""

from __future__ import annotations

import logging
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Optional

from vitpipe.errors import VitpipeError

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
_CHUNK = 1 << 20


class _Refused(Exception):
    """A member that must not be extracted; the message says which and why."""

    fix = "Rebuild the archive without it."


class _TooBig(_Refused):
    """The archive unpacks to more than the size cap."""

    fix = "Raise data.max_extract_gb if an archive this large is expected."


def archive_format(path: Path) -> Optional[str]:
    """``"zip"`` or ``"tar"`` for an archive (by suffix, else by content), ``None`` otherwise."""
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    if not path.is_file():
        return None
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        return "tar" if tarfile.is_tarfile(path) else None
    except (OSError, EOFError, zlib.error):
        return None


def is_skipped(name: str) -> bool:
    """True for macOS litter that never belongs in a dataset."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    base = parts[-1] if parts else ""
    return "__MACOSX" in parts or base == ".DS_Store" or base.startswith("._")


def safe_member_path(name: str) -> PurePosixPath:
    """The relative path a member may be written to; raises ``_Refused`` for a dangerous name."""
    clean = name.replace("\\", "/")
    if not clean or "\0" in clean:
        raise _Refused(f"member {name!r} has an empty or NUL-containing name")
    if clean.startswith("/") or re.match(r"[A-Za-z]:/", clean):
        raise _Refused(f"member {name!r} has an absolute path")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _Refused(f"member {name!r} climbs out of the archive with '..'")
    if not parts:
        raise _Refused(f"member {name!r} names no file")
    return PurePosixPath(*parts)


def extract(archive: Path, target: Path, *, max_bytes: int, label: str | None = None) -> int:
    """Extracts ``archive`` into the new directory ``target``; returns the number of files.

    ``label`` names the archive in errors (the URL of a downloaded one, not its temporary path).

    Raises:
        VitpipeError: an unsafe member, a size over ``max_bytes`` or a corrupt/truncated archive.
            ``target`` is removed before the error propagates.
    """
    archive, target = Path(archive), Path(target)
    label = label or str(archive)
    kind = archive_format(archive)
    if kind is None:
        raise VitpipeError(f"{label}: not a zip or tar archive; use one of {', '.join(ARCHIVE_SUFFIXES)}.")
    target.mkdir(parents=True, exist_ok=False)
    try:
        count = (_extract_zip if kind == "zip" else _extract_tar)(archive, target, max_bytes)
    except _Refused as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise VitpipeError(f"{label}: refused to extract: {exc}. {exc.fix}") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError, RuntimeError,
            NotImplementedError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, OSError) and exc.errno is not None:  # disk full, permissions: not the archive
            raise VitpipeError(f"{label}: could not extract it ({reason}: {exc.filename or target}); "
                               f"free space or fix permissions there.") from None
        raise VitpipeError(f"{label}: corrupt, truncated or unreadable archive ({reason}); "
                           f"download or rebuild it.") from None
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    logger.info("extracted %d files from %s", count, label)
    return count


class _Budget:
    """Counts bytes written against the cap."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.used = max_bytes, 0

    def check_declared(self, total: int) -> None:
        if total > self.max_bytes:
            raise _TooBig(f"its members declare {total:,} bytes, over the cap of {self.max_bytes:,} "
                           f"(data.max_extract_gb)")

    def copy(self, src: IO[bytes], dest: Path, name: str) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as out:
            while chunk := src.read(_CHUNK):
                self.used += len(chunk)
                if self.used > self.max_bytes:
                    raise _TooBig(f"member {name!r} takes the extracted size over the cap of "
                                   f"{self.max_bytes:,} bytes (data.max_extract_gb)")
                out.write(chunk)


def _inside(target: Path, rel: PurePosixPath) -> Path:
    """``target / rel``, checked once more after resolving (an earlier member may be a directory)."""
    dest = target / rel
    if not dest.resolve().is_relative_to(target.resolve()):
        raise _Refused(f"member {str(rel)!r} resolves outside the target directory")
    return dest


def _zip_members(zf: zipfile.ZipFile) -> Iterator[tuple[zipfile.ZipInfo, PurePosixPath]]:
    for info in zf.infolist():
        if is_skipped(info.filename):
            continue
        rel = safe_member_path(info.filename)
        kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when made on Windows: a plain file
        if kind == stat.S_IFLNK:
            raise _Refused(f"member {info.filename!r} is a symbolic link")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise _Refused(f"member {info.filename!r} is a device file, FIFO or other special file")
        yield info, rel


def _extract_zip(archive: Path, target: Path, max_bytes: int) -> int:
    budget, count = _Budget(max_bytes), 0
    with zipfile.ZipFile(archive) as zf:
        members = list(_zip_members(zf))
        budget.check_declared(sum(info.file_size for info, _ in members))
        for info, rel in members:
            dest = _inside(target, rel)
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as src:
                budget.copy(src, dest, info.filename)
            count += 1
    return count


def _check_tar_member(member: tarfile.TarInfo, target: Path) -> PurePosixPath:
    rel = safe_member_path(member.name)
    if member.issym() or member.islnk():
        raise _Refused(f"member {member.name!r} is a link (to {member.linkname!r})")
    if not (member.isreg() or member.isdir()):
        raise _Refused(f"member {member.name!r} is a device file, FIFO or other special file")
    try:
        tarfile.data_filter(member, str(target))
    except tarfile.FilterError as exc:
        raise _Refused(f"member {member.name!r}: {exc}") from None
    return rel


def _extract_tar(archive: Path, target: Path, max_bytes: int) -> int:
    budget, count = _Budget(max_bytes), 0
    with tarfile.open(archive, "r:*") as tf:
        members = [(m, _check_tar_member(m, target)) for m in tf.getmembers() if not is_skipped(m.name)]
        budget.check_declared(sum(m.size for m, _ in members if m.isreg()))
        for member, rel in members:
            dest = _inside(target, rel)
            if member.isdir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            src = tf.extractfile(member)
            if src is None:  # pragma: no cover - isreg() members always have data
                raise _Refused(f"member {member.name!r} has no data")
            with src:
                budget.copy(src, dest, member.name)
            count += 1
    return count
