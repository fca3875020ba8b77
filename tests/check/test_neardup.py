"""Near-duplicate images (vitpipe.check.neardup) in the split-check, on real butterfly photos."""

from __future__ import annotations

import dataclasses
import io
import itertools
from pathlib import Path

import numpy as np
import pytest
from conftest import BUTTERFLIES
from PIL import Image

from vitpipe.check import imagescan
from vitpipe.check.datacheck import check_dataset, format_report, run_split_check
from vitpipe.check.neardup import near_duplicates, perceptual_hash
from vitpipe.errors import VitpipeError
from vitpipe.params import DataParams

DATA = DataParams(min_class_images=2)


def _need_butterflies() -> None:
    if not BUTTERFLIES.is_dir():
        pytest.skip(f"{BUTTERFLIES} not present")


def _altered(photo: Path) -> bytes:
    """The photo cropped by 2-5 pixels per side, resized to 80% and re-encoded at JPEG quality 60."""
    image = Image.open(photo).convert("RGB")
    w, h = image.size
    image = image.crop((3, 2, w - 5, h - 4)).resize((int(w * 0.8), int(h * 0.8)), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=60)
    return out.getvalue()


def _real_dataset(root: Path) -> Path:
    """Two species, real photos: 4 train, 1 valid, 1 test image each (distinct photos)."""
    _need_butterflies()
    for name in ("MONARCH", "ADONIS"):
        photos = sorted((BUTTERFLIES / "train" / name).glob("*.jpg"))[20:26]
        for split, chosen in (("train", photos[:4]), ("valid", photos[4:5]), ("test", photos[5:6])):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for p in chosen:
                (root / split / name / p.name).write_bytes(p.read_bytes())
    return root


def test_an_altered_copy_in_another_split_is_found_with_both_paths_and_the_distance(tmp_path):
    root = _real_dataset(tmp_path)
    source = root / "train" / "MONARCH" / "021.jpg"
    (root / "test" / "MONARCH" / "copy.jpg").write_bytes(_altered(source))
    result = check_dataset(root, DATA)
    assert result.accepted, result.errors  # reported, not refused, by default
    near = result.report["near_duplicates"]
    assert (near["cross_split"], near["within_split"], near["max_distance"]) == (1, 0, 6)
    pair = near["pairs"][0]
    assert (pair["a"], pair["b"]) == ("test/MONARCH/copy.jpg", "train/MONARCH/021.jpg")
    assert 0 < pair["distance"] <= 6
    assert [m for m in result.warnings if "near-duplicates" in m] == [
        f"near-duplicates across splits test and train (leaks into scoring), pHash distance {pair['distance']}: "
        f"test/MONARCH/copy.jpg ~ train/MONARCH/021.jpg."]
    assert result.report["duplicates"]["cross_split"] == 0  # not identical files


def test_strict_refuses_a_cross_split_near_duplicate_in_one_line(tmp_path):
    root = _real_dataset(tmp_path / "raw")
    (root / "valid" / "ADONIS" / "copy.jpg").write_bytes(_altered(root / "train" / "ADONIS" / "021.jpg"))
    with pytest.raises(VitpipeError) as info:
        run_split_check(root, dataclasses.replace(DATA, strict=True), index_path=tmp_path / "index.json",
                        report_path=tmp_path / "data.json")
    message = str(info.value)
    assert "\n" not in message and "1 near-duplicate pair across splits" in message
    assert "train/ADONIS/021.jpg ~ valid/ADONIS/copy.jpg" in message and "data.strict: false" in message
    assert not (tmp_path / "index.json").exists()


def test_within_a_split_near_duplicates_are_warnings_even_when_strict(tmp_path):
    root = _real_dataset(tmp_path)
    (root / "train" / "ADONIS" / "copy.jpg").write_bytes(_altered(root / "train" / "ADONIS" / "021.jpg"))
    result = check_dataset(root, dataclasses.replace(DATA, strict=True))
    assert result.accepted, result.errors
    assert result.report["near_duplicates"]["within_split"] == 1
    assert "Near-duplicate images: 0 errors, 1 warning" in format_report(result)


def test_the_threshold_is_a_param_and_minus_one_turns_the_check_off(tmp_path, monkeypatch):
    root = _real_dataset(tmp_path)
    (root / "test" / "MONARCH" / "copy.jpg").write_bytes(_altered(root / "train" / "MONARCH" / "021.jpg"))
    found = check_dataset(root, DATA).report["near_duplicates"]["pairs"][0]["distance"]
    tighter = check_dataset(root, dataclasses.replace(DATA, near_duplicate_distance=found - 1))
    assert tighter.report["near_duplicates"]["pairs"] == []
    monkeypatch.setattr(imagescan, "perceptual_hash", lambda image: pytest.fail("hashed with the check off"))
    off = check_dataset(root, dataclasses.replace(DATA, near_duplicate_distance=-1))
    assert off.accepted and off.report["near_duplicates"] == {
        "max_distance": -1, "within_split": 0, "cross_split": 0, "pairs": []}


def test_the_hash_comes_from_the_one_read_and_decode_of_the_checks(tmp_path, monkeypatch):
    root = _real_dataset(tmp_path)
    reads, opens = [], []
    real_read, real_open = Path.read_bytes, Image.open
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or real_read(self))
    monkeypatch.setattr(Image, "open", lambda *a, **k: opens.append(a) or real_open(*a, **k))
    scan = imagescan.scan_file(root, "train/MONARCH/021.jpg", phash=True)
    assert len(reads) == 1 and len(opens) == 1
    assert scan.phash == perceptual_hash(Image.open(root / "train/MONARCH/021.jpg").convert("RGB"))


def test_distinct_photos_of_one_species_are_not_flagged():
    """butterflies-10 holds 24 pairs of one photo cropped twice, judged by eye; every other pair of its
    1,301 photos (845,650 pairs) is two distinct photos, and none of them is flagged at distance 6."""
    _need_butterflies()
    result = check_dataset(BUTTERFLIES, DataParams())
    near = result.report["near_duplicates"]
    assert result.accepted and (near["within_split"], near["cross_split"]) == (22, 2)
    assert [(p["a"], p["b"]) for p in near["pairs"][:2]] == [
        ("test/CLODIUS PARNASSIAN/3.jpg", "train/CLODIUS PARNASSIAN/098.jpg"),
        ("test/PAPER KITE/2.jpg", "train/PAPER KITE/002.jpg")]
    flagged = {(p["a"], p["b"]) for p in near["pairs"]}
    distinct = [("train/CABBAGE WHITE/113.jpg", "valid/CABBAGE WHITE/2.jpg"),  # same species, same pose
                ("train/CABBAGE WHITE/109.jpg", "train/CABBAGE WHITE/113.jpg"),
                ("train/RED ADMIRAL/069.jpg", "train/RED ADMIRAL/084.jpg"),
                ("train/ZEBRA LONG WING/001.jpg", "train/ZEBRA LONG WING/026.jpg")]
    assert not flagged & set(distinct)


def _brute_force(hashes: list[int], max_distance: int) -> set[tuple[int, int]]:
    return {(i, j) for i, j in itertools.combinations(range(len(hashes)), 2)
            if bin(hashes[i] ^ hashes[j]).count("1") <= max_distance}


def test_the_blockwise_search_equals_brute_force_across_block_edges():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 40, dtype=np.int64).tolist()
    hashes = []
    for i in range(700):  # near copies of 40 hashes, so that many pairs are close
        flips = rng.choice(64, size=int(rng.integers(0, 12)), replace=False)
        hashes.append(base[i % 40] ^ int(sum(1 << int(b) for b in flips)) ^ (1 << 63 if i % 2 else 0))
    paths = [f"{'train' if i % 3 else 'test'}/c/{i:04d}.jpg" for i in range(700)]
    contents = [f"sha{i}" for i in range(700)]
    found = near_duplicates(paths, hashes, contents, max_distance=8)
    expected = _brute_force(hashes, 8)
    assert len(expected) > 1000
    assert {tuple(sorted((paths.index(p.a), paths.index(p.b)))) for p in found} == expected
    assert all(p.distance == bin(hashes[paths.index(p.a)] ^ hashes[paths.index(p.b)]).count("1") for p in found)
    first_within = next(k for k, p in enumerate(found) if not p.cross_split)
    assert all(p.cross_split for p in found[:first_within]) and not any(p.cross_split for p in found[first_within:])


def test_identical_files_are_left_to_the_exact_duplicate_check():
    pairs = near_duplicates(["test/a/1.jpg", "train/a/1.jpg", "train/a/2.jpg"], [5, 5, 7], ["x", "x", "y"],
                            max_distance=2)
    assert [(p.a, p.b, p.distance) for p in pairs] == [("test/a/1.jpg", "train/a/2.jpg", 1),
                                                       ("train/a/1.jpg", "train/a/2.jpg", 1)]
