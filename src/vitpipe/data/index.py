"""The checked dataset index (``data/index.json``): one class map and the samples of each split.

split-check writes the index: ONE class-to-index map built from train and used for every split,
and per split the images that passed the checks, with their content hashes. train and evaluate
read images only through it, so a label can never depend on which folders a split happens to hold.
This module imports no torch: the download and split-check stages use it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitpipe.errors import VitpipeError
from vitpipe.fileio import read_json, write_json

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Sample:
    """One image: its path relative to the dataset root (POSIX), class index and content hash."""

    path: str
    label: int
    sha256: str


def samples_digest(samples: Sequence[Sample], *, labels: bool = False, seed: str = "") -> str:
    """SHA-256 over the ordered (path, content hash[, label]) of ``samples``, after ``seed``.

    The one way vitpipe identifies a list of images: the dataset index, the feature cache and the
    decoded-image store all key on it, so a renamed, edited, added or removed image changes it.
    """
    digest = hashlib.sha256(seed.encode())
    for s in samples:
        digest.update(f"{s.path}\0{s.sha256}{f'{chr(0)}{s.label}' if labels else ''}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class DatasetIndex:
    """Classes (index = label) and the samples of each split, relative to ``root``."""

    root: Path
    classes: tuple[str, ...]
    splits: dict[str, tuple[Sample, ...]]
    class_aliases: dict[str, str] = field(default_factory=dict)  # folder name -> class (data.class_aliases)
    dropped_classes: tuple[str, ...] = ()  # classes left out of every split (data.drop_classes)

    def samples(self, split: str) -> tuple[Sample, ...]:
        """The samples of ``split``; an unknown split is a :class:`VitpipeError`."""
        if split not in self.splits:
            raise VitpipeError(f"split {split!r} is not in the dataset index (has: {', '.join(self.splits)}).")
        return self.splits[split]

    def fingerprint(self, split: str) -> str:
        """Hash of the ordered (path, label, content) list of ``split``: it changes when any image does."""
        return samples_digest(self.samples(split), labels=True)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to ``data/index.json``."""
        return {
            "root": self.root.as_posix(),
            "classes": list(self.classes),
            "class_aliases": dict(sorted(self.class_aliases.items())),
            "dropped_classes": list(self.dropped_classes),
            "splits": {name: [[s.path, s.label, s.sha256] for s in samples]
                       for name, samples in self.splits.items()},
        }

    def save(self, path: Path | str) -> None:
        """Writes the index atomically."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path | str) -> DatasetIndex:
        """Reads an index written by :meth:`save`."""
        path = Path(path)
        try:
            raw = read_json(path)
            return cls(
                root=Path(raw["root"]),
                classes=tuple(raw["classes"]),
                splits={name: tuple(Sample(p, int(lbl), h) for p, lbl, h in rows)
                        for name, rows in raw["splits"].items()},
                class_aliases=dict(raw.get("class_aliases", {})),
                dropped_classes=tuple(raw.get("dropped_classes", ())),
            )
        except FileNotFoundError:
            raise VitpipeError(f"{path}: not found. Run the split-check stage first "
                               f"(`dvc repro split-check`).") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise VitpipeError(f"{path}: not a vitpipe dataset index ({exc}). "
                               f"Regenerate it with `dvc repro --force split-check`.") from None
