"""The synthetic butterfly set: layout, determinism, decodability and a learnability sanity check."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from vitpipe.data.images import load_rgb
from vitpipe.download.synthetic import SPECIES, class_names, generate
from vitpipe.params import SyntheticParams

TINY = SyntheticParams(classes=3, train_per_class=3, valid_per_class=2, test_per_class=1, image_size=48)


def _make(root: Path, params: SyntheticParams = TINY, seed: int = 0) -> Path:
    root.mkdir()
    generate(root, params, seed=seed)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vitpipe.download.synthetic"):
        root = _make(tmp_path / "data")
    names = class_names(3)
    assert sorted(p.name for p in root.iterdir()) == ["test", "train", "valid"]
    for split, count in (("train", 3), ("valid", 2), ("test", 1)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(names)
        for name in names:
            files = sorted(p.name for p in (root / split / name).iterdir())
            assert files == [f"{i:04d}.jpg" for i in range(count)]
    assert "wrote 18 images of 3 classes" in caplog.text


def test_images_decode_to_the_right_size(tmp_path: Path) -> None:
    root = _make(tmp_path / "data")
    for path in root.rglob("*.jpg"):
        img = load_rgb(path)
        assert img.size == (48, 48) and img.mode == "RGB"
        assert np.asarray(img).std() > 5  # a picture, not a flat fill


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first, second = _files(_make(tmp_path / "a")), _files(_make(tmp_path / "b"))
    assert len(first) == 18
    assert first == second


def test_different_seed_gives_different_images(tmp_path: Path) -> None:
    first, other = _files(_make(tmp_path / "a")), _files(_make(tmp_path / "b", seed=1))
    assert first.keys() == other.keys()
    assert all(first[k] != other[k] for k in first)


def test_images_of_one_split_do_not_depend_on_another_splits_count(tmp_path: Path) -> None:
    more_train = SyntheticParams(classes=3, train_per_class=5, valid_per_class=2, test_per_class=1, image_size=48)
    small, large = _files(_make(tmp_path / "a")), _files(_make(tmp_path / "b", more_train))
    assert len(large) == len(small) + 6
    assert all(large[k] == v for k, v in small.items())


def test_generate_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "stray.txt").write_text("x")
    with pytest.raises(ValueError, match="empty"):
        generate(tmp_path, TINY, seed=0)


def test_class_names_are_unique_readable_and_bounded() -> None:
    names = class_names(26)
    assert len(set(names)) == 26
    assert all(n == n.upper() and " " in n and n.strip() == n for n in names)
    assert class_names(8) == names[:8]
    for bad in (0, 27):
        with pytest.raises(ValueError):
            class_names(bad)


def test_every_species_looks_different_but_colours_are_shared() -> None:
    looks = {(s.base, s.shape, s.pattern) for s in SPECIES}
    assert len(looks) == len(SPECIES)
    # The default 8 come in pairs of one base colour: colour alone cannot name the class.
    bases = [s.base for s in SPECIES[:8]]
    assert all(bases.count(b) == 2 for b in bases)


def _centre_hist(img: np.ndarray) -> np.ndarray:
    """4x4x4 RGB histogram of the central half of the image (where the butterfly mostly is)."""
    s = img.shape[0]
    q = img[s // 4: 3 * s // 4, s // 4: 3 * s // 4].reshape(-1, 3) // 64
    return np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64) / len(q)


def _border_hist(img: np.ndarray) -> np.ndarray:
    """The same histogram over the outer tenth of the image: mostly background."""
    b = img.shape[0] // 10
    ring = np.concatenate([img[:b].reshape(-1, 3), img[-b:].reshape(-1, 3),
                           img[b:-b, :b].reshape(-1, 3), img[b:-b, -b:].reshape(-1, 3)]) // 64
    return np.bincount(ring[:, 0] * 16 + ring[:, 1] * 4 + ring[:, 2], minlength=64) / len(ring)


def _nearest_mean_accuracy(root: Path, names: list[str],
                           feature: Callable[[np.ndarray], np.ndarray]) -> float:
    """Test accuracy of a nearest-class-mean classifier on ``feature`` of each image."""
    def load(split: str) -> tuple[np.ndarray, np.ndarray]:
        rows = [(feature(np.asarray(load_rgb(p))), label) for label, name in enumerate(names)
                for p in sorted((root / split / name).iterdir())]
        return np.stack([r[0] for r in rows]), np.array([r[1] for r in rows])

    (x_train, y_train), (x_test, y_test) = load("train"), load("test")
    means = np.stack([x_train[y_train == c].mean(0) for c in range(len(names))])
    pred = np.argmin(((x_test[:, None] - means[None]) ** 2).sum(-1), axis=1)  # (N,)
    return float((pred == y_test).mean())


def test_classes_are_learnable_but_not_trivial_and_backgrounds_say_nothing(tmp_path: Path) -> None:
    # Seen with seeds 0-3: centre histograms 0.55-0.65, border histograms 0.13-0.17 (chance 0.125).
    params = SyntheticParams(classes=8, train_per_class=24, valid_per_class=1, test_per_class=24, image_size=64)
    root, names = _make(tmp_path / "data", params), class_names(8)
    chance = 1 / 8
    centre = _nearest_mean_accuracy(root, names, _centre_hist)
    border = _nearest_mean_accuracy(root, names, _border_hist)
    assert chance + 0.2 < centre < 0.9, centre
    assert border < chance + 0.12, border


def test_drawn_in_processes_the_files_are_the_same_bytes(tmp_path):
    params = SyntheticParams(classes=3, train_per_class=6, valid_per_class=2, test_per_class=2, image_size=48)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    generate(tmp_path / "one", params, seed=3)
    generate(tmp_path / "two", params, seed=3, processes=2)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.jpg"))
    assert len(files) == 30
    assert files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*.jpg"))
    assert all((tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes() for f in files)
