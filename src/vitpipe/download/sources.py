"""The download stage's data sources: one string in ``data.source``, one dataset folder out.

Accepted forms: ``synthetic``; a local directory; a local ``.zip``/``.tar``/``.tar.gz``/``.tgz``;
an ``https://`` archive with ``data.sha256``; ``kaggle:OWNER/SLUG[@VERSION]``. Whatever arrives is
searched for its split root (:mod:`vitpipe.data.layout`), missing splits are carved off train, and the
result is swapped in for ``dest`` only when complete.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import urllib.parse
from pathlib import Path

from vitpipe.data.layout import SplitRoot, find_split_root
from vitpipe.download import archive, http_fetch
from vitpipe.download.layout import materialise
from vitpipe.errors import VitpipeError
from vitpipe.fileio import DISK_ERRNOS, atomic_dir
from vitpipe.params import DEFAULT_WATCH, DataParams
from vitpipe.setparam import set_strings_line

logger = logging.getLogger(__name__)

ACCEPTED = ("synthetic | path/to/dir | path/to/archive.(zip|tar|tar.gz|tgz) | "
            "https://host/file.(zip|tar|tar.gz) with data.sha256 | kaggle:OWNER/SLUG[@VERSION]")
_KAGGLE = re.compile(r"kaggle:([A-Za-z0-9][\w.-]*)/([A-Za-z0-9][\w.-]*)(?:@(\d+))?")
_SCRATCH = ".incoming"
# Written into every download; a destination holding it may be replaced by the next download.
MARKER = ".vitpipe-download"
_MARKER_TEXT = "Written by `vitpipe download`: the next download into this folder replaces all of it.\n"


def kaggle_handle(source: str) -> str:
    """``kaggle:owner/slug@3`` -> ``owner/slug/versions/3`` (the kagglehub handle)."""
    match = _KAGGLE.fullmatch(source.strip())
    if match is None:
        raise VitpipeError(f"data.source {source!r}: a Kaggle source reads kaggle:OWNER/SLUG or "
                           f"kaggle:OWNER/SLUG@VERSION, e.g. kaggle:gpiosenka/butterfly-images40-species@3.")
    owner, slug, version = match.groups()
    return f"{owner}/{slug}" + (f"/versions/{version}" if version else "")


def local_path(source: str) -> Path | None:
    """The path a local folder or archive source names; None for synthetic, URLs and Kaggle."""
    text = source.strip()
    if text == "synthetic" or text.startswith("kaggle:") or "://" in text:
        return None
    return Path(text).expanduser()


def check_watch(data: DataParams) -> None:
    """Refuses a ``data.watch`` that would hide the source's changes from DVC.

    dvc.yaml lists ``${data.watch}`` as a dep of the download stage, so DVC hashes it: it must be
    a local source's own path. Other sources are pinned by params (``data.sha256``, ``@VERSION``,
    ``data.synthetic``) and keep the default.
    """
    watch, local = data.watch.strip(), local_path(data.source)
    if watch.startswith("~"):
        raise VitpipeError(f"data.watch {watch!r}: DVC does not expand ~; write the full path, "
                           f"data.watch: {Path(watch).expanduser()}.")
    if local is None:
        if watch != DEFAULT_WATCH:
            raise VitpipeError(f"data.watch is {watch!r} but data.source {data.source!r} is not a local folder "
                               f"or archive (params pin it); set data.watch back to {DEFAULT_WATCH}.")
        return
    if Path(watch).resolve() != local.resolve():
        line = set_strings_line(data__source=data.source, data__watch=str(local))
        how = f"`{line}`" if line else f"data.watch: {json.dumps(str(local))} in params.yaml"
        raise VitpipeError(f"data.source is the local {data.source!r} but data.watch is {watch!r}, so DVC would "
                           f"not notice when its images change; set data.watch to the same path ({how}).")


def fetch(source: str, dest: Path, data: DataParams) -> None:
    """Materialises the dataset named by ``source`` at ``dest/{train,valid,test}/<class>/``.

    ``dest`` is replaced atomically: on any failure the previous ``dest`` is left untouched.

    Raises:
        VitpipeError: an unknown source form, an unreachable or corrupt source, no split root, or a
            ``data`` key set that this source does not use.
    """
    data.refuse_unused(source)
    local = local_path(source)
    dest = _check_dest(Path(dest), local if local is not None and local.exists() else None)
    with atomic_dir(dest) as out:
        _materialise(source, out, data)
        (out / MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
    logger.info("dataset written to %s", dest)


def _materialise(source: str, out: Path, data: DataParams) -> None:
    """Writes the dataset into the empty folder ``out``."""
    if source.strip() == "synthetic":
        from vitpipe.download.synthetic import generate

        generate(out, data.synthetic, seed=data.seed)
        logger.info("generated the synthetic dataset (seed %d)", data.seed)
        _log_counts(_count(out))
        return
    scratch = out / _SCRATCH
    found, move = _obtain(source, scratch, data)
    logger.info("%s: split root %s, %s", source, _shown(found.root, scratch), found.layout)
    if found.ignored:
        logger.info("%s: ignored beside the splits: %s", source, ", ".join(found.ignored))
    carved = found.missing
    if carved:
        logger.info("carving %s off train by a hash of each image (data.val_fraction=%g, "
                    "data.test_fraction=%g, data.seed=%d)", " and ".join(carved), data.val_fraction,
                    data.test_fraction, data.seed)
    counts = materialise(found, out, val_fraction=data.val_fraction, test_fraction=data.test_fraction,
                         seed=data.seed, move=move)
    shutil.rmtree(scratch, ignore_errors=True)
    _log_counts(counts)


def _check_dest(dest: Path, source: Path | None) -> Path:
    """``dest``, resolved, once it is safe to replace: absent, empty, or an earlier vitpipe download.

    Raises:
        VitpipeError: ``dest`` is a file, holds other files, holds the current folder, or is the
            source, inside it or around it (replacing it would delete what it copies).
    """
    target = dest.expanduser().resolve()
    if source is not None:
        src = source.resolve()
        if target == src or target.is_relative_to(src) or src.is_relative_to(target):
            relation = "is" if target == src else "is inside" if target.is_relative_to(src) else "holds"
            raise VitpipeError(f"{dest}: the destination {relation} the source {source}; choose a destination "
                               f"outside it (e.g. data/raw).")
    if Path.cwd().resolve().is_relative_to(target):
        raise VitpipeError(f"{dest}: the destination is the current folder (or holds it) and would be "
                           f"replaced; name a new folder, e.g. data/raw.")
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise VitpipeError(f"{dest}: exists and is not a folder; name a new folder for the dataset.")
        if any(target.iterdir()) and not (target / MARKER).is_file():
            raise VitpipeError(f"{dest}: holds files that are not an earlier vitpipe download (no {MARKER}), "
                               f"and the download replaces all of it; name a new or empty folder, or move "
                               f"those files away first.")
    return target


def _obtain(source: str, scratch: Path, data: DataParams) -> tuple[SplitRoot, bool]:
    """Brings the source's files within reach; returns its split root and whether files may be moved."""
    text = source.strip()
    max_bytes = int(data.max_extract_gb * 1e9)
    if text.startswith("kaggle:"):
        local = _kaggle_download(text)
        if local.is_file():
            return _unpack(local, scratch, text, max_bytes), True
        return find_split_root(local, label=text), False
    scheme = urllib.parse.urlsplit(text).scheme
    if scheme in ("https", "http"):
        return _unpack(_https_download(text, scratch, data, max_bytes), scratch, text, max_bytes), True
    if "://" in text:
        raise VitpipeError(f"data.source {source!r}: unsupported URL scheme {scheme!r}; use one of: {ACCEPTED}.")
    path = Path(text).expanduser()
    if path.is_dir():
        return find_split_root(path, label=text), False
    if path.is_file():
        if archive.archive_format(path) is None:
            raise VitpipeError(f"data.source {source!r} is a file but not a zip or tar archive; use one of: "
                               f"{ACCEPTED}.")
        return _unpack(path, scratch, text, max_bytes), True
    raise VitpipeError(f"data.source {source!r} is neither an existing directory or archive nor a known "
                       f"source; use one of: {ACCEPTED}.")


def _unpack(path: Path, scratch: Path, label: str, max_bytes: int) -> SplitRoot:
    extracted = scratch / "extracted"
    archive.extract(path, extracted, max_bytes=max_bytes, label=label)
    if path.is_relative_to(scratch):
        path.unlink()  # the downloaded archive is no longer needed: free its space now
    return find_split_root(extracted, label=label)


def _https_download(url: str, scratch: Path, data: DataParams, max_bytes: int) -> Path:
    if not data.sha256:
        raise VitpipeError(f"data.sha256 is required for {url}: download the file once, run "
                           f"`sha256sum FILE`, and set data.sha256 (or pass --sha256).")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", data.sha256.strip()):
        raise VitpipeError(f"data.sha256 (--sha256) {data.sha256!r} is not a SHA-256 (64 hex digits, as "
                           f"`sha256sum FILE` prints); fix it before anything is downloaded.")
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name.lower()
    suffix = next((s for s in archive.ARCHIVE_SUFFIXES if name.endswith(s)), ".download")
    scratch.mkdir(parents=True, exist_ok=True)
    target = scratch / f"archive{suffix}"
    http_fetch.download(url, target, sha256=data.sha256, max_bytes=max_bytes)
    return target


def _kaggle_download(source: str) -> Path:
    handle = kaggle_handle(source)
    import kagglehub
    from kagglehub import exceptions as kh

    kaggle_errors = (OSError, ValueError, kh.CredentialError, kh.BackendError, kh.NotFoundError,
                     kh.UnauthenticatedError, kh.DataCorruptionError, kh.KaggleEnvironmentError)
    name = handle.split("/versions/")[0]
    logger.info("downloading kaggle dataset %s through kagglehub", handle)
    try:
        local = Path(kagglehub.dataset_download(handle))
    except kaggle_errors as exc:  # requests' errors (offline: ConnectionError) are OSErrors
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            raise VitpipeError(f"could not store kaggle:{name} in kagglehub's cache ({_short(exc)}); free space "
                               f"there, or set KAGGLEHUB_CACHE to a folder with room.") from None
        raise VitpipeError(f"could not download kaggle:{name} ({_short(exc)}); needs network and Kaggle "
                           f"credentials (~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY), or set "
                           f"data.source to a local directory.") from None
    logger.info("kagglehub delivered %s", local)
    return local


def _short(exc: BaseException) -> str:
    """The innermost cause of ``exc`` as ``Type: first line``, at most 160 characters."""
    inner = exc
    while inner.__cause__ is not None or inner.__context__ is not None:
        inner = inner.__cause__ or inner.__context__  # type: ignore[assignment]
    text = " ".join(line.strip() for line in str(inner).splitlines() if line.strip())
    reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return reason if len(reason) <= 160 else reason[:157] + "..."


def _shown(root: Path, scratch: Path) -> str:
    """``root`` for the log: inside an extracted archive, relative to the archive's top."""
    if root.is_relative_to(scratch / "extracted"):
        inner = root.relative_to(scratch / "extracted").as_posix()
        return "at the archive's top level" if inner == "." else f"{inner}/ inside the archive"
    return str(root)


def _count(root: Path) -> dict[str, dict[str, int]]:
    return {split.name: {c.name: sum(1 for f in c.iterdir() if f.is_file()) for c in sorted(split.iterdir())
                         if c.is_dir()} for split in sorted(root.iterdir()) if split.is_dir()}


def _log_counts(counts: dict[str, dict[str, int]]) -> None:
    for split, classes in counts.items():
        logger.info("%s: %d images in %d classes", split, sum(classes.values()), len(classes))
