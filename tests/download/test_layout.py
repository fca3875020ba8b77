"""Split-root detection and the deterministic, stratified carving of missing splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitpipe.download.layout import (
    SPLITS,
    carve,
    carve_counts,
    find_split_root,
    materialise,
)
from vitpipe.errors import VitpipeError


def test_split_names_match_the_dataset_index() -> None:
    from vitpipe.data.index import SPLITS as INDEX_SPLITS

    assert SPLITS == INDEX_SPLITS


def _tree(root: Path, layout: dict[str, int]) -> Path:
    """``{"a/b/cls": 3}`` -> three small files in root/a/b/cls/ with distinct bytes."""
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / folder / f"img_{i:03d}.jpg").write_bytes(f"{folder}/{i}".encode())
    return root


@pytest.mark.parametrize(("n", "val", "test", "expected"), [
    (10, 0.1, 0.1, (1, 1)),
    (100, 0.15, 0.15, (15, 15)),
    (25, 0.1, 0.1, (3, 3)),     # 2.5 rounds half up
    (5, 0.1, 0.1, (1, 1)),      # 0.5 rounds half up
    (3, 0.1, 0.1, (1, 1)),      # at least one each from 3 images
    (4, 0.49, 0.49, (1, 2)),    # 2 + 2 would leave train empty: the larger shrinks (ties: valid first)
    (20, 0.2, 0.0, (4, 0)),     # a zero fraction carves nothing
    (2, 0.4, 0.4, (0, 0)),      # under 3 images: all train
])
def test_carve_counts(n: int, val: float, test: float, expected: tuple[int, int]) -> None:
    assert carve_counts(n, val, test) == expected
    assert n - sum(expected) >= 1


def test_carve_is_deterministic_and_per_class(tmp_path: Path) -> None:
    files = [tmp_path / f"{i:02d}.jpg" for i in range(20)]
    first = carve(files, class_name="MONARCH", val_fraction=0.2, test_fraction=0.1, seed=7)
    again = carve(list(reversed(files)), class_name="MONARCH", val_fraction=0.2, test_fraction=0.1, seed=7)
    other_seed = carve(files, class_name="MONARCH", val_fraction=0.2, test_fraction=0.1, seed=8)
    other_class = carve(files, class_name="ADONIS", val_fraction=0.2, test_fraction=0.1, seed=7)
    assert first == again  # input order does not matter
    assert [len(first[s]) for s in ("train", "valid", "test")] == [14, 4, 2]
    assert sorted(sum(first.values(), [])) == sorted(files)  # a partition
    assert first["valid"] != other_seed["valid"] and first["valid"] != other_class["valid"]


def test_fifty_species_layout_is_found_one_level_down(tmp_path: Path) -> None:
    _tree(tmp_path, {"butterflies/train/adonis": 2, "butterflies/valid/adonis": 1, "butterflies/test/adonis": 1})
    (tmp_path / "butterflies" / "50 species.csv").write_text("x")
    found = find_split_root(tmp_path, label="src")
    assert found.root == tmp_path / "butterflies"
    assert set(found.splits) == {"train", "valid", "test"}
    assert found.ignored == ("50 species.csv",)


def test_split_names_are_normalised_case_insensitively(tmp_path: Path) -> None:
    _tree(tmp_path, {"Train/ADONIS": 2, "Validation/ADONIS": 1, "TEST/ADONIS": 1, "extra_model_dir/x": 0})
    found = find_split_root(tmp_path, label="src")
    assert {k: v.name for k, v in found.splits.items()} == {"train": "Train", "valid": "Validation",
                                                             "test": "TEST"}
    assert found.layout == "split folders Train/ as train, Validation/ as valid, TEST/ as test"


def test_class_folders_in_a_wrapping_folder_are_train_only(tmp_path: Path) -> None:
    _tree(tmp_path, {"my photos/cat": 3, "my photos/dog": 3})
    found = find_split_root(tmp_path, label="src")
    assert found.root == tmp_path / "my photos" and found.splits == {"train": tmp_path / "my photos"}
    assert found.layout == "class folders only (taken as train)"


def test_two_val_aliases_are_refused(tmp_path: Path) -> None:
    _tree(tmp_path, {"train/a": 2, "val/a": 1, "valid/a": 1})
    with pytest.raises(VitpipeError, match="both val/ and valid/"):
        find_split_root(tmp_path, label="src")


def test_ambiguous_roots_are_refused(tmp_path: Path) -> None:
    _tree(tmp_path, {"v1/train/a": 2, "v2/train/a": 2})
    with pytest.raises(VitpipeError, match=r"several candidate .*v1, v2"):
        find_split_root(tmp_path, label="src")


def test_nothing_found_names_the_source_and_the_expected_layout(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "loose.jpg").write_bytes(b"x")  # images without class folders
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(VitpipeError) as err:
        find_split_root(tmp_path, label="my-source")
    assert str(err.value).startswith("my-source: found no train/<class>/") and "\n" not in str(err.value)


def test_a_missing_test_split_is_carved_off_train(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"train/a": 10, "train/b": 20, "valid/a": 2, "valid/b": 2})
    out = tmp_path / "out"
    counts = materialise(find_split_root(src, label="src"), out, val_fraction=0.3, test_fraction=0.1,
                         seed=0, move=False)
    assert counts == {"train": {"a": 9, "b": 18}, "valid": {"a": 2, "b": 2}, "test": {"a": 1, "b": 2}}
    assert sorted(p.name for p in (out / "valid" / "a").iterdir()) == ["img_000.jpg", "img_001.jpg"]
    assert len(list((src / "train" / "a").iterdir())) == 10  # copied, not moved


def test_tiny_classes_stay_in_train_and_empty_splits_exist(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"a": 2, "b": 2})
    out = tmp_path / "out"
    counts = materialise(find_split_root(src, label="src"), out, val_fraction=0.1, test_fraction=0.1,
                         seed=0, move=True)
    assert counts == {"train": {"a": 2, "b": 2}, "valid": {}, "test": {}}
    assert (out / "valid").is_dir() and (out / "test").is_dir()
    assert not list((src / "a").iterdir())  # moved
