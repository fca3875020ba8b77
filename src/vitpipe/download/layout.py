"""Writing what a source delivers as ``data/raw/{train,valid,test}/<class>/``, missing splits carved.

The split root and the carve are :mod:`vitpipe.data.layout`'s, shared with the split-check, so
``vitpipe check-data`` on a source folder reports exactly what this stage will write.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from vitpipe.data.index import SPLITS
from vitpipe.data.layout import (
    JUNK,
    SplitRoot,
    carve,
    carve_fractions,
    refuse_link_out,
    visible,
)
from vitpipe.errors import VitpipeError

logger = logging.getLogger(__name__)


def class_files(class_dir: Path) -> list[Path]:
    """The visible files of a class folder, sorted by name (sub-folders are not read)."""
    return sorted((p for p in class_dir.iterdir() if p.is_file() and visible(p)), key=lambda p: p.name)


def _warn_hidden(folder: Path, what: str, *, dirs: bool) -> None:
    """Logs the hidden entries of ``folder`` that are skipped (macOS and Windows litter aside)."""
    hidden = sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.is_dir() == dirs
                    and p.name not in JUNK and not p.name.startswith("._"))
    if hidden:
        logger.warning("%s: %d %s: %s; rename them if they are meant to be used", folder, len(hidden), what,
                       ", ".join(hidden[:10]) + (", ..." if len(hidden) > 10 else ""))


def plan(found: SplitRoot, *, val_fraction: float, test_fraction: float,
         seed: int) -> dict[str, dict[str, list[Path]]]:
    """split -> class -> files, carving the missing valid/test splits off train image by image."""
    out: dict[str, dict[str, list[Path]]] = {s: {} for s in SPLITS}
    for split, folder in found.splits.items():
        _warn_hidden(folder, "hidden folder(s) skipped, not used as classes", dirs=True)
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and visible(p)):
            _warn_hidden(class_dir, "hidden file(s) skipped", dirs=False)
            if any(p.is_dir() and visible(p) for p in class_dir.iterdir()):
                logger.warning("%s: sub-folders are ignored; only files directly in it are used", class_dir)
            files = class_files(class_dir)
            if found.top is not None:  # before the carve reads a file to hash it
                for path in files:
                    refuse_link_out(path, found.top)
            if not files and split == "train":  # the split-check refuses it too: no class without images
                raise VitpipeError(f"{class_dir}: empty train class folder; add its images or remove the folder.")
            if not files:
                logger.warning("%s: empty class folder skipped", class_dir)
                continue
            out[split][class_dir.name] = files
    if found.missing:
        val, test = carve_fractions(found, val_fraction, test_fraction)
        for name, files in list(out["train"].items()):
            parts = carve(files, val_fraction=val, test_fraction=test, seed=seed)
            for split in ("train", *found.missing):
                out[split][name] = parts[split]
    return out


def _copy(src: Path, target: Path, *, move: bool) -> None:
    try:
        if move:
            shutil.move(src, target)
        else:
            shutil.copyfile(src, target)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS):  # the write failed
            raise OSError(exc.errno, exc.strerror, str(target)) from None  # the download's folder names it
        if exc.filename is not None and Path(os.fsdecode(exc.filename)) == src:
            raise VitpipeError(f"{src}: could not read it ({exc.strerror or exc}); fix its permissions or "
                               f"remove it from the source.") from None
        raise


def materialise(found: SplitRoot, out: Path, *, val_fraction: float, test_fraction: float, seed: int,
                move: bool) -> dict[str, dict[str, int]]:
    """Writes ``out/{train,valid,test}/<class>/<file>``; returns the image count per split and class.

    Files are moved when ``move`` (a scratch extraction) and otherwise copied byte for byte, never
    linked, so DVC caches real files. Missing valid/test splits are carved off train per image.
    """
    layout = plan(found, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    counts: dict[str, dict[str, int]] = {}
    for split, classes in layout.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        counts[split] = {}
        for name, files in classes.items():
            if not files:
                continue
            (out / split / name).mkdir()
            for src in files:
                _copy(src, out / split / name / src.name, move=move)
            counts[split][name] = len(files)
    for split in ("valid", "test"):
        unknown = sorted(set(counts[split]) - set(counts["train"]))
        if unknown:
            logger.warning("%s has classes that train lacks: %s", split, ", ".join(unknown))
        if not counts[split]:
            logger.warning("the %s split is empty", split)
    return counts
