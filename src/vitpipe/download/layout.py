"""Finding the split root inside whatever a source delivers, and carving missing splits off train.

A *split root* is the shallowest directory (searched a few levels deep) that holds a ``train``
folder of class folders with images; ``Train``, ``training``, ``val``, ``validation``, ``testing``
and so on are normalised to train/valid/test. A directory whose subfolders hold images directly
(``<class>/*.jpg``, a user's own photos) is taken as train only. Splits that are missing are
carved off train per class, deterministically (see :func:`carve_counts` for the rounding).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitpipe.data.images import is_image_file
from vitpipe.data.index import SPLITS
from vitpipe.errors import VitpipeError

logger = logging.getLogger(__name__)

SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "validation": "valid",
                 "val": "valid", "test": "test", "testing": "test"}
_JUNK = {".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX"}


@dataclass(frozen=True)
class SplitRoot:
    """Where the splits were found: ``splits`` maps train/valid/test to the folders present."""

    root: Path
    splits: dict[str, Path]
    ignored: tuple[str, ...] = ()
    top: Path | None = None  # the folder searched; files may not resolve outside it (links)

    @property
    def layout(self) -> str:
        """A few words on what was found, for the log."""
        if self.splits.get("train") == self.root:
            return "class folders only (taken as train)"
        names = [f"{p.name}/" + ("" if p.name == s else f" as {s}") for s, p in sorted(
            self.splits.items(), key=lambda item: SPLITS.index(item[0]))]
        return "split folders " + ", ".join(names)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in _JUNK


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and _visible(p))


def _has_images(path: Path) -> bool:
    return any(p.is_file() and is_image_file(p) and _visible(p) for p in path.iterdir())


def _holds_classes(path: Path) -> bool:
    return any(_has_images(c) for c in _subdirs(path))


def _split_dirs(path: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for child in _subdirs(path):
        split = SPLIT_ALIASES.get(child.name.lower())
        if split is None:
            continue
        if split in found:
            raise VitpipeError(f"{path}: both {found[split].name}/ and {child.name}/ look like the {split} "
                               f"split; keep one of them.")
        found[split] = child
    return found


def find_split_root(top: Path, *, label: str, max_depth: int = 3) -> SplitRoot:
    """Searches ``top`` breadth-first for the split root; ``label`` names the source in errors."""
    level = [Path(top)]
    for _ in range(max_depth + 1):
        with_splits = [(d, s) for d in level if (s := _split_dirs(d)) and "train" in s
                       and _holds_classes(s["train"])]
        with_classes = [d for d in level if not _split_dirs(d) and _holds_classes(d)]
        hits = [SplitRoot(d, s) for d, s in with_splits] or [SplitRoot(d, {"train": d}) for d in with_classes]
        if len(hits) > 1:
            where = ", ".join(str(h.root.relative_to(top)) for h in hits)
            raise VitpipeError(f"{label}: several candidate dataset folders at the same depth ({where}); "
                               f"set data.source to the one you want.")
        if hits:
            return dataclasses.replace(_with_ignored(hits[0]), top=Path(top))
        level = [c for d in level for c in _subdirs(d)]
    raise VitpipeError(f"{label}: found no train/<class>/ or <class>/ folders with images (searched "
                       f"{max_depth} levels deep); expected train/<class>/*.jpg (optionally with valid/ "
                       f"and test/) or <class>/*.jpg.")


def _with_ignored(found: SplitRoot) -> SplitRoot:
    if found.splits["train"] == found.root:
        return found
    used = {p.name for p in found.splits.values()}
    ignored = tuple(sorted(p.name for p in found.root.iterdir() if _visible(p) and p.name not in used))
    return SplitRoot(found.root, found.splits, ignored)


def carve_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Images of a class of ``n`` that go to (valid, test).

    Each count is ``n * fraction`` rounded half up. A class of 3 or more images gives at least
    one image to every split whose fraction is > 0, and always keeps at least one for train (the
    larger of the two carved counts shrinks first). A class of fewer than 3 stays in train.
    """
    if n < 3:
        return 0, 0
    counts = [math.floor(n * f + 0.5) for f in (val_fraction, test_fraction)]
    counts = [max(1, c) if f > 0 else 0 for c, f in zip(counts, (val_fraction, test_fraction))]
    while sum(counts) > n - 1:
        counts[counts.index(max(counts))] -= 1
    return counts[0], counts[1]


def class_files(class_dir: Path) -> list[Path]:
    """The visible files of a class folder, sorted by name (sub-folders are not read)."""
    return sorted((p for p in class_dir.iterdir() if p.is_file() and _visible(p)), key=lambda p: p.name)


def carve(files: list[Path], *, class_name: str, val_fraction: float, test_fraction: float,
          seed: int) -> dict[str, list[Path]]:
    """Splits one class's files into train/valid/test; the same inputs always give the same split.

    Files are sorted by name and shuffled by a numpy Generator seeded from ``seed`` and the class
    name, so adding or removing another class never changes this one's split.
    """
    files = sorted(files, key=lambda p: p.name)
    n_val, n_test = carve_counts(len(files), val_fraction, test_fraction)
    class_key = int.from_bytes(hashlib.sha256(class_name.encode()).digest()[:8], "little")
    order = np.random.default_rng([seed, class_key]).permutation(len(files))
    shuffled = [files[i] for i in order]
    return {"valid": sorted(shuffled[:n_val]), "test": sorted(shuffled[n_val:n_val + n_test]),
            "train": sorted(shuffled[n_val + n_test:])}


def _warn_hidden(folder: Path, what: str, *, dirs: bool) -> None:
    """Logs the hidden entries of ``folder`` that are skipped (macOS and Windows litter aside)."""
    hidden = sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.is_dir() == dirs
                    and p.name not in _JUNK and not p.name.startswith("._"))
    if hidden:
        logger.warning("%s: %d %s: %s; rename them if they are meant to be used", folder, len(hidden), what,
                       ", ".join(hidden[:10]) + (", ..." if len(hidden) > 10 else ""))


def _plan(found: SplitRoot, *, val_fraction: float, test_fraction: float,
          seed: int) -> dict[str, dict[str, list[Path]]]:
    """split -> class -> files, carving the missing valid/test splits off train."""
    plan: dict[str, dict[str, list[Path]]] = {s: {} for s in SPLITS}
    for split, folder in found.splits.items():
        _warn_hidden(folder, "hidden folder(s) skipped, not used as classes", dirs=True)
        for class_dir in _subdirs(folder):
            _warn_hidden(class_dir, "hidden file(s) skipped", dirs=False)
            if any(p.is_dir() and _visible(p) for p in class_dir.iterdir()):
                logger.warning("%s: sub-folders are ignored; only files directly in it are used", class_dir)
            files = class_files(class_dir)
            if not files:
                logger.warning("%s: empty class folder skipped", class_dir)
                continue
            plan[split][class_dir.name] = files
    missing = [s for s in ("valid", "test") if s not in found.splits]
    if missing:
        fractions = {"valid": val_fraction if "valid" in missing else 0.0,
                     "test": test_fraction if "test" in missing else 0.0}
        for name, files in list(plan["train"].items()):
            parts = carve(files, class_name=name, val_fraction=fractions["valid"],
                          test_fraction=fractions["test"], seed=seed)
            if len(files) < 3:
                logger.warning("class %r has %d image(s): too few to split, all kept in train", name, len(files))
            for split in ("train", *missing):
                plan[split][name] = parts[split]
    return plan


def _refuse_links_out(plan: dict[str, dict[str, list[Path]]], top: Path) -> None:
    """Refuses a file that resolves outside ``top`` (a link out), before anything is copied."""
    inside = top.resolve()
    for classes in plan.values():
        for files in classes.values():
            for src in files:
                real = src.resolve()
                if not real.is_relative_to(inside):
                    raise VitpipeError(f"{src}: a link to {real}, outside the source folder {top}; vitpipe "
                                       f"copies only files inside it (a link out would put that file in "
                                       f"data/raw and the DVC cache). Replace the link by the file, or remove it.")


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
    linked, so DVC caches real files. Missing valid/test splits are carved off train per class.
    """
    plan = _plan(found, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    if found.top is not None:
        _refuse_links_out(plan, found.top)
    counts: dict[str, dict[str, int]] = {}
    for split, classes in plan.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        counts[split] = {}
        for name, files in classes.items():
            if not files:
                continue
            (out / split / name).mkdir()
            for src in files:
                target = out / split / name / src.name
                _copy(src, target, move=move)
            counts[split][name] = len(files)
    for split in ("valid", "test"):
        unknown = sorted(set(counts[split]) - set(counts["train"]))
        if unknown:
            logger.warning("%s has classes that train lacks: %s", split, ", ".join(unknown))
        if not counts[split]:
            logger.warning("the %s split is empty", split)
    return counts
