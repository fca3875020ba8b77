"""Where a dataset's splits are, and which split each image of a train-only class goes to.

Shared by the download stage (which copies what it finds into ``data/raw``) and the split-check
(``vitpipe check-data`` on a source folder), so both accept the same layouts and carve the same way.

A *split root* is the shallowest directory (searched a few levels deep) that holds a ``train``
folder of class folders with images; ``Train``, ``training``, ``val``, ``validation``, ``testing``
and so on are normalised to train/valid/test. A directory whose subfolders hold images directly
(``<class>/*.jpg``, a user's own photos) is taken as train only.

Missing valid/test splits are carved off train image by image (:func:`split_of`): each image's
split is decided by a hash of ``data.seed`` and its content alone, so adding or removing other
images never moves it, and identical files always land in the same split. The fractions hold in
expectation, not exactly per class. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vitpipe.data.images import is_image_file
from vitpipe.data.index import SPLITS
from vitpipe.errors import VitpipeError
from vitpipe.fileio import file_sha256

SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "validation": "valid",
                 "val": "valid", "test": "test", "testing": "test"}
JUNK = {".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX"}  # OS litter, never data


class NoSplitRootError(VitpipeError):
    """No folder with ``train/<class>/`` or ``<class>/`` images was found."""


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

    @property
    def missing(self) -> tuple[str, ...]:
        """The splits carved off train: valid and/or test when the source lacks them."""
        return tuple(s for s in ("valid", "test") if s not in self.splits)


def visible(path: Path) -> bool:
    """False for hidden entries and OS litter (``.DS_Store``, ``Thumbs.db``, ``__MACOSX``)."""
    return not path.name.startswith(".") and path.name not in JUNK


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and visible(p))


def _has_images(path: Path) -> bool:
    return any(p.is_file() and is_image_file(p) and visible(p) for p in path.iterdir())


def _holds_classes(path: Path) -> bool:
    return any(_has_images(c) for c in _subdirs(path))


def split_dirs(path: Path) -> dict[str, Path]:
    """The split folders directly in ``path`` (any casing or alias), keyed train/valid/test."""
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
    """Searches ``top`` breadth-first for the split root; ``label`` names the source in errors.

    Raises:
        NoSplitRootError: nothing that looks like a dataset within ``max_depth`` levels.
        VitpipeError: two candidates at the same depth, or two folders for one split.
    """
    level = [Path(top)]
    for _ in range(max_depth + 1):
        with_splits = [(d, s) for d in level if (s := split_dirs(d)) and "train" in s
                       and _holds_classes(s["train"])]
        with_classes = [d for d in level if not split_dirs(d) and _holds_classes(d)]
        hits = [SplitRoot(d, s) for d, s in with_splits] or [SplitRoot(d, {"train": d}) for d in with_classes]
        if len(hits) > 1:
            where = ", ".join(str(h.root.relative_to(top)) for h in hits)
            raise VitpipeError(f"{label}: several candidate dataset folders at the same depth ({where}); "
                               f"set data.source to the one you want.")
        if hits:
            return dataclasses.replace(_with_ignored(hits[0]), top=Path(top))
        level = [c for d in level for c in _subdirs(d)]
    raise NoSplitRootError(f"{label}: found no train/<class>/ or <class>/ folders with images (searched "
                           f"{max_depth} levels deep); expected train/<class>/*.jpg (optionally with valid/ "
                           f"and test/) or <class>/*.jpg.")


def _with_ignored(found: SplitRoot) -> SplitRoot:
    if found.splits["train"] == found.root:
        return found
    used = {p.name for p in found.splits.values()}
    ignored = tuple(sorted(p.name for p in found.root.iterdir() if visible(p) and p.name not in used))
    return SplitRoot(found.root, found.splits, ignored)


def refuse_link_out(path: Path, top: Path) -> None:
    """Refuses a file that resolves outside ``top`` (a link out) before anything reads it.

    A ``secret.jpg -> /etc/passwd`` link in a source folder would otherwise be read, copied into
    ``data/raw`` and the DVC cache, and published by ``dvc push``.
    """
    real = path.resolve()
    if not real.is_relative_to(top.resolve()):
        raise VitpipeError(f"{path}: a link to {real}, outside the source folder {top}; vitpipe reads only "
                           f"files inside it (a link out would put that file in data/raw and the DVC cache). "
                           f"Replace the link by the file, or remove it.")


def split_of(content_sha256: str, *, seed: int, val_fraction: float, test_fraction: float) -> str:
    """The split an image of a train-only class goes to: ``valid``, ``test`` or ``train``.

    ``u = sha256(seed, content)`` read as a number in [0, 1): ``u < val_fraction`` is valid, the
    next ``test_fraction`` is test, the rest train. The image alone decides, so the split of an
    image never changes when others are added or removed, on any machine.
    """
    digest = hashlib.sha256(f"vitpipe-split\0{seed}\0{content_sha256}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < val_fraction:
        return "valid"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"


def carve(files: Sequence[Path], *, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[Path]]:
    """Splits one class's files into train/valid/test by :func:`split_of` of each image's content.

    Files that are not images (by suffix) stay in train, where the split-check reports them.
    Each list is sorted by name.
    """
    parts: dict[str, list[Path]] = {"train": [], "valid": [], "test": []}
    for path in sorted(files, key=lambda p: p.name):
        split = "train"
        if is_image_file(path):
            split = split_of(file_sha256(path), seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
        parts[split].append(path)
    return parts


def carve_fractions(found: SplitRoot, val_fraction: float, test_fraction: float) -> tuple[float, float]:
    """(valid, test) fractions to carve: a split the source already has is not carved (0)."""
    return (val_fraction if "valid" in found.missing else 0.0,
            test_fraction if "test" in found.missing else 0.0)
