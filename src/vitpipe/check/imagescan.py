"""The file half of the split-check: list the dataset's folders, then read, hash and decode each image.

:func:`list_tree` finds the split root as the download stage does (:mod:`vitpipe.data.layout`), sorts
``<split>/<class>/<file>`` into images and stray entries, and carves missing splits the same way. In
:func:`scan_files`, one read per file feeds the SHA-256 (for the index and the duplicate search), the
full decode (:func:`vitpipe.data.images.decode_rgb`, the decode train and evaluate use), so a file that
passes here also loads there, and the perceptual hash of the decoded image (the near-duplicate
search, :mod:`vitpipe.check.neardup`).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from vitpipe.check.neardup import perceptual_hash
from vitpipe.data.images import BadImageError, decode_rgb, is_image_file
from vitpipe.data.index import SPLITS
from vitpipe.data.pools import pool_context
from vitpipe.data.layout import (
    NoSplitRootError,
    SplitRoot,
    carve,
    carve_fractions,
    find_split_root,
    refuse_link_out,
    split_dirs,
)
from vitpipe.errors import VitpipeError
from vitpipe.params import DataParams, usable_cores
from vitpipe.progress import track

logger = logging.getLogger(__name__)

# Below this many files a pool costs more than it saves.
_SERIAL_BELOW = 64


@dataclass
class DatasetTree:
    """The folders of a dataset as the download stage would write them (``split/class/file``).

    Every path is POSIX, relative to the root as ``data/raw`` would hold it, and sorted; ``files``
    says where each image and stray file really is (the same place for a ``data/raw`` folder).
    """

    splits: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # split -> class -> image paths
    stray: list[tuple[str, str]] = field(default_factory=list)  # (path, why it is not used); folders end in /
    other_dirs: list[str] = field(default_factory=list)  # folders beside the splits, not used
    files: dict[str, Path] = field(default_factory=dict)  # path above -> the file on disk
    layout: str = "split folders train/, valid/, test/"  # what was found, in a few words
    carved: tuple[str, ...] = ()  # splits carved off train (the source lacks them)


def _list_dir(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise VitpipeError(f"{path}: cannot list this folder ({exc.strerror}); check its permissions.") from None


def _stray_reason(entry: Path, in_class: bool) -> Optional[str]:
    """Why ``entry`` is not used as an image (or class folder), or None when it is."""
    if entry.name.startswith("."):
        return "hidden"
    if entry.is_dir():
        return "folder inside a class folder" if in_class else None
    if not entry.is_file():  # a FIFO would block the read, a device would never end
        return "not a regular file"
    if not in_class:
        return "not inside a class folder"
    return None if is_image_file(entry) else "not an image file type"


def locate(root: Path) -> SplitRoot:
    """The split root of ``root``: ``root`` itself when it holds split folders (so their problems are
    reported, not searched past), else what the download stage finds in it; with nothing found,
    ``root`` with no splits (reported as missing)."""
    splits = split_dirs(root)
    if splits:
        return SplitRoot(root, splits)
    try:
        return find_split_root(root, label=str(root))
    except NoSplitRootError:
        return SplitRoot(root, {})


def list_tree(root: Path, *, carve_with: Optional[DataParams] = None) -> DatasetTree:
    """Lists the dataset under ``root``: images per split and class, and everything else.

    The split root is found as the download stage finds it (:mod:`vitpipe.data.layout`). With
    ``carve_with``, valid/test splits the source lacks are carved off train exactly as the download
    stage carves them; without, they stay missing. Hidden entries, files directly in a split folder,
    folders inside a class folder and non-image files are stray: never used.
    """
    found = locate(Path(root))
    tree = DatasetTree(layout=found.layout if found.splits else "no split or class folders")
    used = set(found.splits.values())
    if found.root not in used:  # class folders only: they are the train split, nothing lies beside it
        tree.other_dirs = [e.name for e in _list_dir(found.root)
                           if e.is_dir() and e not in used and not e.name.startswith(".")]
    if found.root != Path(root):
        tree.layout += f" in {found.root.relative_to(root).as_posix()}/"
    for split in SPLITS:
        if split in found.splits:
            tree.splits[split] = _list_split(found.splits[split], split, tree, top=Path(root))
    if carve_with is not None and found.missing and "train" in found.splits:
        _carve(tree, found, carve_with)
    return tree


def _list_split(folder: Path, split: str, tree: DatasetTree, *, top: Path) -> dict[str, list[str]]:
    classes: dict[str, list[str]] = {}
    for entry in _list_dir(folder):
        rel = f"{split}/{entry.name}"
        why = _stray_reason(entry, in_class=False)
        if why is not None:
            tree.stray.append((rel + "/" * entry.is_dir(), why))
            tree.files[rel] = entry
            continue
        images = classes[entry.name] = []
        for f in _list_dir(entry):
            why = _stray_reason(f, in_class=True)
            tree.files[f"{rel}/{f.name}"] = f
            if why is None:
                refuse_link_out(f, top)  # as the download stage does: never read outside the dataset
                images.append(f"{rel}/{f.name}")
            else:
                tree.stray.append((f"{rel}/{f.name}" + "/" * f.is_dir(), why))
    return classes


def _carve(tree: DatasetTree, found: SplitRoot, data: DataParams) -> None:
    """Moves train images to the carved splits, as :func:`vitpipe.download.layout.plan` does."""
    val, test = carve_fractions(found, data.val_fraction, data.test_fraction)
    train = tree.splits["train"]
    for split in found.missing:
        tree.splits[split] = {}
    for name in list(train):
        parts = carve([tree.files[p] for p in train[name]], val_fraction=val, test_fraction=test, seed=data.seed)
        for split, files in parts.items():
            paths = [f"{split}/{name}/{f.name}" for f in files]
            tree.files.update(zip(paths, files))
            if paths:
                tree.splits[split][name] = paths
        if not parts["train"] and train[name]:  # all carved away (an empty folder stays: it is refused)
            del train[name]
    tree.carved = found.missing
    tree.layout += f"; {' and '.join(found.missing)} carved off train (data.val_fraction={data.val_fraction:g}, " \
                   f"data.test_fraction={data.test_fraction:g}, data.seed={data.seed})"


@dataclass(frozen=True)
class FileScan:
    """What one file turned out to be; ``error`` is None for a usable image."""

    path: str  # POSIX, relative to the dataset root
    sha256: str
    error: Optional[str] = None
    mode: str = ""  # Pillow mode before conversion to RGB
    orientation: int = 1  # EXIF orientation tag, 1 when absent
    width: int = 0  # after EXIF rotation
    height: int = 0
    phash: Optional[int] = None  # 64-bit perceptual hash of the decoded RGB image, when asked for

    @property
    def ok(self) -> bool:
        """Whether the file decoded to an image."""
        return self.error is None


def scan_file(root: Path, rel: str, *, path: Optional[Path] = None, phash: bool = False) -> FileScan:
    """Reads ``root/rel`` (or ``path``, reported as ``rel``) once, hashes its bytes, decodes them fully
    and, with ``phash``, hashes the image."""
    try:
        data = (path if path is not None else root / rel).read_bytes()
    except OSError as exc:
        return FileScan(rel, "", f"unreadable file ({exc.strerror or type(exc).__name__})")
    digest = hashlib.sha256(data).hexdigest()
    try:
        image, info = decode_rgb(data, rel)
    except BadImageError as exc:
        return FileScan(rel, digest, str(exc))
    return FileScan(rel, digest, None, info.mode, info.orientation, info.width, info.height,
                    perceptual_hash(image) if phash else None)


def resolve_workers(workers: int) -> int:
    """``data.workers``, with 0 meaning every CPU this process may use."""
    return workers if workers > 0 else usable_cores()


def _scan(root: Path, rel: str, path: Optional[Path], phash: bool) -> FileScan:
    return scan_file(root, rel, path=path, phash=phash)


def scan_files(root: Path, paths: Sequence[str], *, workers: int = 0,
               files: Optional[Mapping[str, Path]] = None, phash: bool = False) -> list[FileScan]:
    """Scans ``paths`` (relative to ``root``, or found in ``files``) in ``workers`` processes; results in
    the order of ``paths``, the same whatever the number of processes. With ``phash``, each decoded
    image also gets its perceptual hash.

    Processes, not threads: decoding releases the GIL, but converting, hashing and the perceptual hash
    hold it, so threads scaled 1.3-1.5x on 2 cores where processes scale with the cores (BENCHMARKS.md).

    Raises:
        VitpipeError: a worker process died (e.g. killed for memory).
    """
    root = Path(root)
    n_workers = min(resolve_workers(workers), max(1, len(paths)))
    start = time.perf_counter()
    files = files or {}
    located = [files.get(p) for p in paths]
    desc = f"scanning {root.name}"
    if n_workers == 1 or len(paths) < _SERIAL_BELOW:
        results = list(track((_scan(root, p, f, phash) for p, f in zip(paths, located)), desc=desc,
                             total=len(paths), unit="file"))
    else:
        # The first file here: it loads Pillow's decoders (and the hashes' first-call set-up) once, before the
        # workers fork, instead of once in each (measured: a fifth more CPU seconds with 2 processes).
        results = [_scan(root, paths[0], located[0], phash)]
        chunk = max(1, min(64, len(paths) // (n_workers * 8)))  # few round trips, balanced to the end
        try:
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=pool_context()) as pool:
                scans = pool.map(_scan, itertools.repeat(root), paths[1:], located[1:], itertools.repeat(phash),
                                 chunksize=chunk)
                results += track(scans, desc=desc, total=len(paths) - 1, unit="file")
        except BrokenProcessPool:
            raise VitpipeError(f"{root}: an image-check worker process died (killed for memory?); set "
                               f"data.workers to fewer processes (1: all in this one).") from None
    seconds = time.perf_counter() - start
    logger.info("%s: read, hashed and decoded %d files%s in %.1f s (%.0f files/s, %d processes)", root,
                len(paths), " (perceptual hashes too)" if phash else "", seconds, len(paths) / max(seconds, 1e-9),
                n_workers)
    return results
