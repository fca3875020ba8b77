"""Split-root detection and the deterministic, stratified carving of missing splits."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vitpipe.data.layout import carve, find_split_root, split_of
from vitpipe.download.layout import materialise
from vitpipe.errors import VitpipeError

GOLDEN_SPLITS = "rrttrvtrrvrrrvtvtrrt"  # r: train, v: valid, t: test


def _tree(root: Path, layout: dict[str, int]) -> Path:
    """``{"a/b/cls": 3}`` -> three small files in root/a/b/cls/ with distinct bytes."""
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / folder / f"img_{i:03d}.jpg").write_bytes(f"{folder}/{i}".encode())
    return root


def _class(folder: Path, names: range) -> list[Path]:
    """Files ``img_<i>.jpg`` with distinct bytes in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in names:
        (folder / f"img_{i:04d}.jpg").write_bytes(f"photo {i}".encode())
    return sorted(folder.iterdir())


def _split_by_name(parts: dict[str, list[Path]]) -> dict[str, str]:
    return {p.name: split for split, files in parts.items() for p in files}


def test_no_image_changes_split_when_others_are_added_or_removed(tmp_path: Path) -> None:
    folder = tmp_path / "MONARCH"
    before = _split_by_name(carve(_class(folder, range(200)), val_fraction=0.1, test_fraction=0.1, seed=0))
    for p in sorted(folder.iterdir())[::4]:
        p.unlink()  # 50 removed ...
    after = _split_by_name(carve(_class(folder, range(200, 500)), val_fraction=0.1, test_fraction=0.1, seed=0))
    kept = set(before) & set(after)  # ... and 300 added
    assert len(kept) == 150 and len(after) == 450
    assert {name: after[name] for name in kept} == {name: before[name] for name in kept}
    assert {"valid", "test"} <= set(before.values())  # the comparison is not vacuous


def test_the_split_follows_the_content_not_the_name_or_the_order(tmp_path: Path) -> None:
    files = _class(tmp_path / "a", range(60))
    first = carve(files, val_fraction=0.2, test_fraction=0.1, seed=7)
    again = carve(list(reversed(files)), val_fraction=0.2, test_fraction=0.1, seed=7)
    assert first == again and sorted(sum(first.values(), [])) == files  # a partition, order-free
    renamed = tmp_path / "b"
    renamed.mkdir()
    for p in files:
        (renamed / ("copy-" + p.name)).write_bytes(p.read_bytes())
    moved = carve(sorted(renamed.iterdir()), val_fraction=0.2, test_fraction=0.1, seed=7)
    assert {s: [p.name for p in v] for s, v in moved.items()} == {s: ["copy-" + p.name for p in v]
                                                                 for s, v in first.items()}
    other_seed = carve(files, val_fraction=0.2, test_fraction=0.1, seed=8)
    assert first["valid"] != other_seed["valid"]


def test_identical_files_share_a_split_and_non_images_stay_in_train(tmp_path: Path) -> None:
    files = _class(tmp_path / "a", range(40))
    for p in files:
        (tmp_path / "a" / ("dup-" + p.name)).write_bytes(p.read_bytes())
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    parts = _split_by_name(carve(sorted((tmp_path / "a").iterdir()), val_fraction=0.3, test_fraction=0.3, seed=0))
    assert all(parts[p.name] == parts["dup-" + p.name] for p in files)
    assert parts["notes.txt"] == "train"


def test_split_of_is_pinned_so_every_machine_carves_alike() -> None:
    # The recipe (sha256 of seed and content) decides everyone's splits: changing it reshuffles them.
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20)]
    got = "".join({"train": "r", "valid": "v", "test": "t"}[split_of(d, seed=0, val_fraction=0.3, test_fraction=0.3)]
                  for d in digests)
    assert got == GOLDEN_SPLITS


def test_fractions_hold_in_expectation() -> None:
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20_000)]
    splits = [split_of(d, seed=3, val_fraction=0.15, test_fraction=0.05) for d in digests]
    assert abs(splits.count("valid") / 20_000 - 0.15) < 0.01
    assert abs(splits.count("test") / 20_000 - 0.05) < 0.01
    assert {split_of(d, seed=3, val_fraction=0.0, test_fraction=0.0) for d in digests} == {"train"}


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
    src = _tree(tmp_path / "src", {"train/a": 40, "train/b": 60, "valid/a": 2, "valid/b": 2})
    out = tmp_path / "out"
    counts = materialise(find_split_root(src, label="src"), out, val_fraction=0.3, test_fraction=0.2,
                         seed=0, move=False)
    assert counts["valid"] == {"a": 2, "b": 2}  # the source's own valid split: nothing carved into it
    for name, n in (("a", 40), ("b", 60)):
        assert counts["train"][name] + counts["test"][name] == n and counts["test"][name] > 0
        for p in (out / "test" / name).iterdir():  # each carved image is where split_of puts it
            assert split_of(hashlib.sha256(p.read_bytes()).hexdigest(), seed=0, val_fraction=0.0,
                            test_fraction=0.2) == "test"
    assert sorted(p.name for p in (out / "valid" / "a").iterdir()) == ["img_000.jpg", "img_001.jpg"]
    assert len(list((src / "train" / "a").iterdir())) == 40  # copied, not moved


def test_carving_moves_files_and_empty_splits_exist(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"a": 2, "b": 2})
    out = tmp_path / "out"
    counts = materialise(find_split_root(src, label="src"), out, val_fraction=0.0, test_fraction=0.0,
                         seed=0, move=True)
    assert counts == {"train": {"a": 2, "b": 2}, "valid": {}, "test": {}}
    assert (out / "valid").is_dir() and (out / "test").is_dir()
    assert not list((src / "a").iterdir())  # moved


def test_an_empty_train_class_folder_is_refused_by_name(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"a": 2, "b": 0})
    (src / "b" / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(VitpipeError, match=r"src/b: empty train class folder; add its images or remove"):
        materialise(find_split_root(src, label="src"), tmp_path / "out", val_fraction=0.1, test_fraction=0.1,
                    seed=0, move=False)
