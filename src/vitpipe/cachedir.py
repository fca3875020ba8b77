"""vitpipe's one cache folder: ``$VITPIPE_CACHE_DIR``, else ``~/.cache/vitpipe``.

Everything vitpipe caches lives in a subfolder of it (``features/``, ``decoded/``, ...), asked for
with :func:`cache_subdir`, so the user names one folder and ``vitpipe cache --clear`` touches
nothing else. Outside the repository on purpose: queued ``dvc exp run`` experiments run in
temporary copies of the repo and share it; entries are content-addressed, so sharing is safe.

When vitpipe creates the folder (or finds it empty) it writes a ``CACHEDIR.TAG``
(https://bford.info/cachedir/: backup tools skip such folders) that names vitpipe, and it clears
only a folder holding that tag, so a folder the user already had is never deleted; and only when it
holds nothing but vitpipe's own subfolders (:data:`SUBDIRS`) and tag, so a file the user put in an
adopted folder is never deleted either. ``VITPIPE_CACHE_DIR`` set but empty is an error, never the default.
No torch here: the CLI reads it without loading a model.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from vitpipe.errors import VitpipeError

logger = logging.getLogger(__name__)

ENV = "VITPIPE_CACHE_DIR"
TAG = "CACHEDIR.TAG"
_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
_OWNER_LINE = "# This file is a cache directory tag created by vitpipe."
# Every subfolder vitpipe writes into the cache root: all `vitpipe cache --clear` deletes, with the tag.
SUBDIRS = ("features", "decoded", "checkpoints", "onnx")
_TAG_TEXT = (f"{_SIGNATURE}\n{_OWNER_LINE}\n# `vitpipe cache --clear` may delete this folder; "
             f"everything in it is recomputed when needed.\n")


def cache_root() -> Path:
    """``$VITPIPE_CACHE_DIR``, else ``$XDG_CACHE_HOME/vitpipe`` (``~/.cache/vitpipe``); nothing is created.

    Raises:
        VitpipeError: ``$VITPIPE_CACHE_DIR`` is set but empty (a script's unset variable: falling back to
            the default folder would clear or fill a folder the user did not name).
    """
    if ENV in os.environ:
        if not os.environ[ENV].strip():
            raise VitpipeError(f"{ENV} is set but empty; set it to a folder for vitpipe's cache, or unset it "
                               f"(`unset {ENV}`) for the default ~/.cache/vitpipe.")
        return Path(os.environ[ENV]).expanduser().absolute()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base.expanduser().absolute() / "vitpipe"


def is_vitpipes(root: Path) -> bool:
    """True when ``root`` holds the CACHEDIR.TAG that vitpipe writes."""
    try:
        lines = (Path(root) / TAG).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    return bool(lines) and lines[0] == _SIGNATURE and _OWNER_LINE in lines


def make_cache_dir(path: Path) -> Path:
    """Creates ``path`` (a folder inside the cache); a new or empty cache root gets vitpipe's tag first.

    Raises:
        OSError: the folder cannot be made (read-only or full disk); callers say what they give up.
        VitpipeError: ``$VITPIPE_CACHE_DIR`` names a file.
    """
    path, root = Path(path), cache_root()
    if path == root or path.is_relative_to(root):
        if root.exists() and not root.is_dir():
            raise VitpipeError(f"{ENV}: {root} is a file, not a folder; set {ENV} to a folder for "
                               f"vitpipe's cache (or unset it for ~/.cache/vitpipe).")
        fresh = not root.exists() or not any(root.iterdir())
        root.mkdir(parents=True, exist_ok=True)
        if fresh:
            try:
                with open(root / TAG, "x", encoding="utf-8") as tag:
                    tag.write(_TAG_TEXT)
            except FileExistsError:  # another process marked it first
                pass
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_subdir(name: str) -> Path:
    """The path of the cache's subfolder ``name``, one of :data:`SUBDIRS` (created when first written, by
    :func:`make_cache_dir`)."""
    if name not in SUBDIRS:
        raise ValueError(f"{name!r} is not one of vitpipe's cache subfolders {SUBDIRS}; add it there")
    return cache_root() / name


def usage(root: Path | None = None) -> tuple[int, int]:
    """(files, bytes) under the cache root; links are counted, never followed."""
    root = cache_root() if root is None else root
    files = size = 0
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                size += os.lstat(os.path.join(folder, name)).st_size
                files += 1
            except OSError:  # removed meanwhile
                continue
    return files, size


def clear() -> tuple[Path, int, int]:
    """Deletes vitpipe's subfolders and tag in the cache root, then the root; returns (root, files, bytes) removed.

    Raises:
        VitpipeError: the folder holds no vitpipe CACHEDIR.TAG (vitpipe did not create it), holds anything
            but vitpipe's own subfolders (nothing is deleted then), is a file, or cannot be deleted.
    """
    root = cache_root()
    if not root.exists():
        return root, 0, 0
    if not root.is_dir():
        raise VitpipeError(f"{ENV}: {root} is a file, not vitpipe's cache folder; nothing cleared.")
    if not is_vitpipes(root):
        raise VitpipeError(f"{root}: not cleared: it holds no {TAG} written by vitpipe, so vitpipe did not "
                           f"create it (${ENV} names it). Delete what you no longer need by hand, or point "
                           f"{ENV} at a folder of its own.")
    try:
        foreign = _not_vitpipes(root)
    except OSError as exc:
        raise VitpipeError(f"{root}: cannot be listed ({exc.strerror or exc}); nothing cleared. Fix its "
                           f"permissions and run `vitpipe cache --clear` again.") from None
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise VitpipeError(f"{root}: not cleared: it holds {shown}, which vitpipe did not write (vitpipe writes "
                           f"only {', '.join(SUBDIRS)} and {TAG} there). Move them out, then run "
                           f"`vitpipe cache --clear` again.")
    files, size = usage(root)
    try:
        for name in SUBDIRS:
            if (root / name).is_dir():
                shutil.rmtree(root / name)
        (root / TAG).unlink()
        root.rmdir()
    except OSError as exc:
        raise VitpipeError(f"{root}: could not delete all of it ({exc.strerror or exc}: "
                           f"{exc.filename}); fix permissions there and run `vitpipe cache --clear` again.") from None
    return root, files, size


def _not_vitpipes(root: Path) -> list[str]:
    """The entries of ``root`` vitpipe did not write: anything but its subfolders (real folders, not
    links) and its tag (a file)."""
    out = []
    for entry in sorted(root.iterdir()):
        ours = (entry.name in SUBDIRS and entry.is_dir()) or (entry.name == TAG and entry.is_file())
        if not ours or entry.is_symlink():
            out.append(entry.name)
    return out
