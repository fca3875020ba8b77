"""The split-check (vitpipe.check.datacheck, vitpipe.check.imagescan) on crafted datasets and on the real butterflies."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import BUTTERFLIES  # noqa: E402
from PIL import Image

from vitpipe.check.datacheck import check_dataset, format_report, run_split_check
from vitpipe.check.imagescan import list_tree, scan_files
from vitpipe.cli import main
from vitpipe.data.images import decode_rgb, load_rgb
from vitpipe.data.index import DatasetIndex
from vitpipe.errors import VitpipeError
from vitpipe.fileio import write_json
from vitpipe.params import DataParams

DATA = DataParams(min_class_images=2)


def _photos(n: int) -> list[Path]:
    """``n`` real butterfly photos (224x224 RGB JPEG); skips the test without the shared set."""
    if not BUTTERFLIES.is_dir():
        pytest.skip(f"{BUTTERFLIES} not present")
    return sorted((BUTTERFLIES / "train" / "MONARCH").glob("*.jpg"))[:n]


def _noise(path: Path, seed: int, size: tuple[int, int] = (24, 16)) -> Path:
    """Writes a small random RGB image (unique content per seed) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def _dataset(root: Path, layout: dict[str, dict[str, int]], *, suffix: str = ".png") -> Path:
    """Builds ``root/<split>/<class>/<i><suffix>`` with distinct noise images; returns root."""
    seed = 0
    for split, classes in layout.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for name, n in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed += 1
                _noise(root / split / name / f"{i:03d}{suffix}", seed)
    return root


def _good(root: Path) -> Path:
    return _dataset(root, {"train": {"A": 3, "B": 3, "C": 3}, "valid": {"A": 1, "B": 1, "C": 1},
                           "test": {"A": 1, "B": 1, "C": 1}})


def _messages(result, check: str, level: str) -> list[str]:
    return [f.message for f in result.findings if f.check == check and f.level == level]


def test_good_dataset_is_accepted_with_one_class_map(tmp_path):
    result = check_dataset(_good(tmp_path), DATA)
    assert result.accepted and result.errors == [] and result.warnings == []
    index = result.index
    assert index.root == tmp_path and index.classes == ("A", "B", "C")
    assert [s.path for s in index.samples("train")] == sorted(f"train/{c}/{i:03d}.png" for c in "ABC" for i in range(3))
    for split in ("train", "valid", "test"):
        for s in index.samples(split):
            assert s.label == "ABC".index(s.path.split("/")[1])
            assert s.sha256 == hashlib.sha256((tmp_path / s.path).read_bytes()).hexdigest()
    assert result.report["splits"]["train"] == {
        "images": 9, "classes": {"A": 3, "B": 3, "C": 3}, "imbalance_ratio": 1.0,
        "size": {"min_w": 24, "max_w": 24, "min_h": 16, "max_h": 16}}
    assert result.report["n_classes"] == 3 and result.report["classes"] == ["A", "B", "C"]


def test_valid_with_a_class_subset_gets_the_train_labels(tmp_path):
    root = _dataset(tmp_path, {"train": {"ADONIS": 2, "MONARCH": 2, "ZEBRA": 2}, "valid": {"ZEBRA": 2},
                               "test": {"MONARCH": 1, "ZEBRA": 1}})
    result = check_dataset(root, DATA)
    assert result.accepted, result.errors
    assert {s.label for s in result.index.samples("valid")} == {2}  # ImageFolder on valid/ alone would say 0
    assert {s.path.split("/")[1]: s.label for s in result.index.samples("test")} == {"MONARCH": 1, "ZEBRA": 2}
    missing = _messages(result, "classes", "warning")
    assert any("valid/" in m and "ADONIS" in m for m in missing)
    assert any("valid/" in m and "MONARCH" in m for m in missing)
    assert any("test/" in m and "ADONIS" in m for m in missing)
    assert result.report["missing_classes"] == {"test": ["ADONIS"], "valid": ["ADONIS", "MONARCH"]}


def test_a_one_class_dataset_is_refused(tmp_path):
    """A classifier needs two classes: with one, accuracy, macro-F1 and top-5 would all be 1.0."""
    root = _dataset(tmp_path / "data", {"train": {"MONARCH": 3}, "valid": {"MONARCH": 1}, "test": {"MONARCH": 1}})
    result = check_dataset(root, DATA)
    assert not result.accepted and result.index is None
    assert _messages(result, "n_classes", "error") == [
        "train/: one class only (MONARCH); a classifier needs two at least (its accuracy, F1 and top-5 would "
        "all be 1.0)."]
    with pytest.raises(VitpipeError) as err:
        run_split_check(root, DATA, index_path=tmp_path / "index.json", report_path=tmp_path / "data.json")
    message = str(err.value)
    assert "\n" not in message and "one class only" in message and "add a folder of another class" in message
    assert not (tmp_path / "index.json").exists()


def test_class_sets_that_differ_name_every_class(tmp_path):
    root = _dataset(tmp_path, {"train": {"A": 2, "B": 2, "C": 2}, "valid": {"A": 1, "B": 1, "X": 1},
                               "test": {"A": 1, "C": 1, "Y": 1, "Z": 1}})
    result = check_dataset(root, DATA)
    assert not result.accepted and result.index is None
    errors = _messages(result, "classes", "error")
    assert len(errors) == 3
    for split, name in (("valid", "X"), ("test", "Y"), ("test", "Z")):
        assert any(m.startswith(f"{split}/{name}:") for m in errors), errors
    warnings = _messages(result, "classes", "warning")
    assert any("valid/" in m and "'C'" in m for m in warnings)
    assert any("test/" in m and "'B'" in m for m in warnings)
    assert all("train" in m for m in errors)  # says which split the class map comes from


def test_a_missing_train_split_is_refused(tmp_path):
    root = _good(tmp_path)
    for f in (root / "train").rglob("*.png"):
        f.unlink()
    for d in sorted((root / "train").iterdir()):
        d.rmdir()
    (root / "train").rmdir()
    result = check_dataset(root, DATA)
    assert not result.accepted
    assert [m for m in result.errors if m.startswith("no train/ split")] == result.errors


@pytest.mark.parametrize("split,key", [("valid", "val_fraction"), ("test", "test_fraction")])
def test_an_empty_valid_or_test_split_is_refused_at_check_time_naming_the_param(tmp_path, split, key):
    """Issue 22, case 12: `data.test_fraction: 0` passed the split-check; evaluate then refused with
    "Check data.source" (and an empty valid split reached train)."""
    from vitpipe.check.datacheck import refused

    carved = _dataset(tmp_path / "carved", {"train": {"A": 10, "B": 10}})
    result = check_dataset(carved, dataclasses.replace(DATA, **{key: 0.0}))
    message = str(refused(result))
    assert f"first: {split}/: no images" in message
    assert f"To fix: data.{key} is 0.0: set it above 0 (e.g. 0.1) to carve {split}/ off train/" in message
    own = _good(tmp_path / "own")
    for f in (own / split).rglob("*.png"):
        f.unlink()
    message = str(refused(check_dataset(own, DATA)))
    assert f"To fix: add images to {split}/ in data.source" in message


@pytest.mark.parametrize("missing", ["valid", "test"])
def test_a_missing_valid_or_test_split_is_carved_as_the_download_stage_does(tmp_path, missing):
    root = _dataset(tmp_path, {"train": {"A": 30, "B": 30}, "valid": {"A": 2, "B": 2}, "test": {"A": 2, "B": 2}})
    for f in sorted((root / missing).rglob("*.png")):
        f.unlink()
    for d in sorted((root / missing).iterdir()):
        d.rmdir()
    (root / missing).rmdir()
    data = dataclasses.replace(DATA, val_fraction=0.3, test_fraction=0.3)
    result = check_dataset(root, data)
    assert result.accepted, result.errors
    carved = result.index.samples(missing)
    assert carved and all(s.path.startswith("train/") for s in carved)  # the index names real files
    assert len(carved) + len(result.index.samples("train")) == 60
    assert f"{missing} carved off train" in result.layout and result.relocated
    assert "as data/raw will hold them" in format_report(result)


def test_train_without_class_folders_is_refused_once(tmp_path):
    root = _good(tmp_path)
    for f in (root / "train").rglob("*.png"):
        f.unlink()
    for d in (root / "train").iterdir():
        d.rmdir()
    result = check_dataset(root, DATA)
    assert result.errors == ["train/: no class folders (expected train/<class>/<images>)."]
    assert result.index is None


def _bad_files(root: Path) -> dict[str, bytes]:
    photo = _photos(1)[0].read_bytes()
    bad = {"train/A/empty.jpg": b"", "train/B/notes.jpg": b"this is a text file, not a JPEG\n",
           "valid/A/cut.jpg": photo[: len(photo) // 2]}
    for rel, data in bad.items():
        (root / rel).write_bytes(data)
    return bad


def test_unreadable_images_are_refused_by_name(tmp_path):
    root = _good(tmp_path)
    bad = _bad_files(root)
    result = check_dataset(root, DATA)
    assert not result.accepted and result.index is None
    errors = _messages(result, "unreadable", "error")
    assert len(errors) == 3
    assert any(m.startswith("train/A/empty.jpg: zero bytes") for m in errors)
    assert any(m.startswith("train/B/notes.jpg: not an image") for m in errors)
    assert any(m.startswith("valid/A/cut.jpg: undecodable") and "truncated" in m for m in errors)
    assert set(bad) == {m.split(":")[0] for m in errors}
    assert result.report["skipped_images"] == [] and result.report["n_skipped_images"] == 0


def test_a_thin_image_is_refused_at_check_time_by_name(tmp_path):
    """6000x1 pixels in ~100 bytes passes Pillow's bomb guard, but Resize(256) would make it
    1,536,000 x 256 (issue 10, item 9)."""
    root = _good(tmp_path)
    Image.new("RGB", (6000, 1)).save(root / "train" / "A" / "strip.png")
    Image.new("RGB", (2, 200)).save(root / "test" / "B" / "tall.png")
    Image.new("RGB", (400, 20)).save(root / "train" / "B" / "panorama.png")  # 20:1 is the limit: accepted
    assert (root / "train" / "A" / "strip.png").stat().st_size < 200
    result = check_dataset(root, DATA)
    errors = _messages(result, "unreadable", "error")
    assert not result.accepted and [m.split(":")[0] for m in errors] == ["train/A/strip.png", "test/B/tall.png"]
    assert "6000x1 pixels, sides in a ratio over 20:1" in errors[0]
    skipped = check_dataset(root, dataclasses.replace(DATA, bad_images="skip"))
    assert skipped.accepted and "train/B/panorama.png" in {s.path for s in skipped.index.samples("train")}


def test_a_fifo_named_like_an_image_is_stray_and_never_read(tmp_path):
    root = _good(tmp_path)
    os.mkfifo(root / "train" / "A" / "pipe.jpg")  # reading it would block forever
    result = check_dataset(root, DATA)
    assert result.accepted and "train/A/pipe.jpg: not a regular file; not used." in result.warnings


def test_unreadable_images_are_skipped_and_listed(tmp_path):
    root = _good(tmp_path)
    bad = _bad_files(root)
    result = check_dataset(root, dataclasses.replace(DATA, bad_images="skip"))
    assert result.accepted, result.errors
    indexed = {s.path for split in ("train", "valid", "test") for s in result.index.samples(split)}
    assert not indexed & set(bad) and len(indexed) == 15
    skipped = result.report["skipped_images"]
    assert [s["path"] for s in skipped] == ["train/A/empty.jpg", "train/B/notes.jpg", "valid/A/cut.jpg"]
    assert skipped[0]["reason"] == "zero bytes" and "truncated" in skipped[2]["reason"]
    assert result.report["n_skipped_images"] == 3
    assert len(_messages(result, "unreadable", "warning")) == 3
    assert result.report["splits"]["valid"]["classes"]["A"] == 1  # the truncated one is not counted


def _unusual(root: Path) -> dict[str, str]:
    """Real photos re-saved in every unusual-but-valid form; returns path -> expected kind."""
    photos = [Image.open(p).convert("RGB") for p in _photos(8)]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    made = {
        "train/A/cmyk.jpg": (photos[0].convert("CMYK"), {}, "cmyk"),
        "train/A/gray.jpg": (photos[1].convert("L"), {}, "grayscale"),
        "train/A/bilevel.png": (photos[2].convert("1"), {}, "grayscale"),
        "train/B/palette.png": (photos[3].convert("P", palette=Image.Palette.ADAPTIVE), {}, "palette"),
        "train/B/rgba.png": (photos[4].convert("RGBA"), {}, "alpha"),
        "train/B/la.png": (photos[5].convert("LA"), {}, "alpha"),
        "train/C/deep.png": (Image.fromarray(np.asarray(photos[6].convert("L")).astype(np.uint16) * 257), {}, "16bit"),
        "train/C/rotated.jpg": (photos[7].crop((0, 0, 224, 100)), {"exif": exif}, "exif_rotated"),
    }
    for rel, (img, kwargs, _) in made.items():
        img.save(root / rel, **kwargs)
    return {rel: kind for rel, (_, _, kind) in made.items()}


def test_unusual_but_valid_images_are_accepted_and_counted(tmp_path):
    root = _good(tmp_path)
    made = _unusual(root)
    assert Image.open(root / "train/C/deep.png").mode == "I;16"  # the file really is 16-bit
    assert Image.open(root / "train/A/cmyk.jpg").mode == "CMYK"
    result = check_dataset(root, DATA)
    assert result.accepted, result.errors
    assert set(made) <= {s.path for s in result.index.samples("train")}
    assert result.report["converted"] == {"16bit": 1, "alpha": 2, "cmyk": 1, "exif_rotated": 1,
                                          "grayscale": 2, "palette": 1}
    assert result.report["splits"]["train"]["size"] == {"min_w": 24, "max_w": 224, "min_h": 16, "max_h": 224}
    rotated = load_rgb(root / "train/C/rotated.jpg")
    assert rotated.size == (100, 224) and rotated.mode == "RGB"
    rgb, info = decode_rgb((root / "train/C/rotated.jpg").read_bytes())
    assert info.orientation == 6 and (info.width, info.height) == (100, 224)
    assert np.array_equal(np.asarray(rgb), np.asarray(rotated))  # one decode, same pixels as load_rgb
    assert "Converted to RGB" in format_report(result)


def test_duplicates_within_and_across_splits(tmp_path):
    root = _good(tmp_path)
    (root / "train/A/copy.png").write_bytes((root / "train/A/000.png").read_bytes())
    (root / "test/B/leak.png").write_bytes((root / "train/B/001.png").read_bytes())
    result = check_dataset(root, DATA)
    assert result.accepted
    warnings = _messages(result, "duplicates", "warning")
    assert len(warnings) == 2
    assert any("train/A/000.png" in m and "train/A/copy.png" in m and "within train" in m for m in warnings)
    assert any("test/B/leak.png" in m and "train/B/001.png" in m and "across splits" in m for m in warnings)
    assert result.report["duplicates"] == {
        "within_split": 1, "cross_split": 1,
        "groups": [["test/B/leak.png", "train/B/001.png"], ["train/A/000.png", "train/A/copy.png"]]}

    strict = check_dataset(root, dataclasses.replace(DATA, strict=True))
    assert not strict.accepted and strict.index is None
    assert len(_messages(strict, "duplicates", "error")) == 2
    assert "data.strict: false" in format_report(strict)


def test_a_duplicate_with_two_labels_names_both(tmp_path):
    root = _good(tmp_path)
    (root / "train/C/same.png").write_bytes((root / "train/A/002.png").read_bytes())
    (message,) = _messages(check_dataset(root, DATA), "duplicates", "warning")
    assert "train/A/002.png = train/C/same.png" in message and "labelled A and C" in message


def test_class_sizes(tmp_path):
    root = _dataset(tmp_path, {"train": {"A": 4, "B": 1, "C": 4}, "valid": {"A": 1, "B": 1, "C": 0},
                               "test": {"A": 1, "B": 1, "C": 1}})
    result = check_dataset(root, dataclasses.replace(DATA, min_class_images=3))
    assert result.accepted
    warnings = _messages(result, "class_sizes", "warning")
    assert any(m.startswith("train/B: only 1 images") and "min_class_images = 3" in m for m in warnings)
    assert any(m.startswith("valid/C: no usable images") for m in warnings)
    assert result.report["splits"]["train"]["imbalance_ratio"] == 4.0

    (root / "train/D").mkdir()
    (root / "train/D/.DS_Store").write_bytes(b"\0\0")
    empty = check_dataset(root, DATA)
    assert not empty.accepted
    assert any(m.startswith("train/D: no usable images") for m in _messages(empty, "class_sizes", "error"))


def test_stray_files_are_reported_and_never_indexed(tmp_path):
    root = _good(tmp_path)
    stray = ["train/A/.DS_Store", "train/labels.csv", "valid/B/notes.txt", "test/.cache/", "train/C/extra/"]
    (root / "train/A/.DS_Store").write_bytes(b"\0\1")
    (root / "train/labels.csv").write_text("file,label\n")
    (root / "valid/B/notes.txt").write_text("hello")
    _noise(root / "test/.cache/x.png", 99)
    _noise(root / "train/C/extra/y.png", 98)
    (root / "tset").mkdir()  # a misnamed split beside the real ones
    result = check_dataset(root, DATA)
    assert result.accepted
    assert sorted(result.report["stray_files"]) == sorted(stray) and result.report["n_stray_files"] == 5
    warnings = _messages(result, "stray", "warning")
    assert all(any(m.startswith(p + ":") for m in warnings) for p in stray)
    assert any(m.startswith("tset/: not a split folder") for m in _messages(result, "splits", "warning"))
    assert "tset/" not in result.report["stray_files"]
    indexed = {s.path for split in ("train", "valid", "test") for s in result.index.samples(split)}
    assert len(indexed) == 15 and not any("extra" in p or ".cache" in p for p in indexed)


def test_report_is_deterministic_and_holds_no_absolute_path(tmp_path):
    root = _good(tmp_path / "data")
    (root / "train/A/copy.png").write_bytes((root / "train/A/000.png").read_bytes())
    (root / "train/A/.DS_Store").write_bytes(b"x")
    first, second = tmp_path / "one.json", tmp_path / "two.json"
    write_json(first, check_dataset(root, DATA).report)
    write_json(second, check_dataset(root, dataclasses.replace(DATA, workers=1)).report)
    assert first.read_bytes() == second.read_bytes()
    text = first.read_text()
    assert str(tmp_path) not in text and json.loads(text)["n_warnings"] == 2


def test_the_scan_in_processes_equals_the_serial_scan_whatever_their_count(tmp_path, monkeypatch):
    from vitpipe.check import imagescan

    paths = [f"{i:03d}.png" for i in range(70)]  # above the serial threshold
    for i, p in enumerate(paths):
        _noise(tmp_path / p, i)
    (tmp_path / "bad.png").write_bytes(b"nope")
    paths.append("bad.png")
    pools = []
    real = imagescan.ProcessPoolExecutor
    monkeypatch.setattr(imagescan, "ProcessPoolExecutor", lambda **kw: pools.append(kw["max_workers"]) or real(**kw))
    serial = scan_files(tmp_path, paths, workers=1, phash=True)
    assert pools == [] and serial[-1].error and serial[0].phash is not None
    assert scan_files(tmp_path, paths, workers=2, phash=True) == serial
    assert scan_files(tmp_path, paths, workers=3, phash=True) == serial
    assert pools == [2, 3]


def test_a_dead_scan_worker_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    from vitpipe.check import imagescan

    class Dying:
        def __init__(self, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, *args, **kwargs):
            raise BrokenProcessPool("A process in the process pool was terminated abruptly")

    paths = [f"{i:03d}.png" for i in range(70)]
    for i, p in enumerate(paths):
        _noise(tmp_path / p, i)
    monkeypatch.setattr(imagescan, "ProcessPoolExecutor", Dying)
    with pytest.raises(VitpipeError, match=r"worker process died .*set data.workers") as err:
        scan_files(tmp_path, paths, workers=2)
    assert "\n" not in str(err.value)


def test_list_tree_sorts_images_and_stray(tmp_path):
    root = _dataset(tmp_path, {"train": {"B": 2, "A": 1}})
    (root / "train/A/README").write_text("x")
    tree = list_tree(root)
    assert tree.splits == {"train": {"A": ["train/A/000.png"], "B": ["train/B/000.png", "train/B/001.png"]}}
    assert tree.stray == [("train/A/README", "not an image file type")]


def test_run_split_check_writes_nothing_when_refused(tmp_path):
    root = _good(tmp_path / "raw")
    (root / "train/B/zero.jpg").write_bytes(b"")
    index_path, report_path = tmp_path / "index.json", tmp_path / "metrics" / "data.json"
    with pytest.raises(VitpipeError) as info:
        run_split_check(root, DATA, index_path=index_path, report_path=report_path)
    message = str(info.value)
    assert "\n" not in message and "refused" in message and "1 unreadable image" in message
    assert "train/B/zero.jpg: zero bytes" in message and "set data.bad_images: skip" in message
    assert "vitpipe check-data" in message
    assert not index_path.exists() and not report_path.exists()


def test_run_split_check_writes_index_and_report(tmp_path, caplog):
    root = _good(tmp_path / "raw")
    for i in range(25):
        (root / f"train/A/junk{i}.txt").write_text("x")
    index_path, report_path = tmp_path / "index.json", tmp_path / "metrics" / "data.json"
    with caplog.at_level("WARNING", logger="vitpipe.check.datacheck"):
        index = run_split_check(root, DATA, index_path=index_path, report_path=report_path)
    assert DatasetIndex.load(index_path) == index
    assert json.loads(report_path.read_text())["n_stray_files"] == 25
    logged = [r.getMessage() for r in caplog.records if r.name == "vitpipe.check.datacheck"]
    assert len(logged) == 21 and "and 5 more warnings" in logged[-1]


def test_a_root_that_is_not_a_folder_is_a_vitpipe_error(tmp_path):
    with pytest.raises(VitpipeError, match="not a folder"):
        check_dataset(tmp_path / "nowhere", DATA)


def test_the_real_butterflies_are_accepted():
    _photos(1)
    result = check_dataset(BUTTERFLIES, DataParams())
    assert result.accepted, result.errors
    report = result.report
    assert report["n_classes"] == 10 and len(result.index.classes) == 10
    assert [report["splits"][s]["images"] for s in ("train", "valid", "test")] == [1201, 50, 50]
    assert report["duplicates"]["cross_split"] == 0 and report["converted"] == {}
    train = result.index.samples("train")
    assert [s.path for s in train] == sorted(s.path for s in train)
    assert train[0].sha256 == hashlib.sha256((BUTTERFLIES / train[0].path).read_bytes()).hexdigest()
    assert train[0].path.startswith("train/ADONIS/") and train[0].label == 0


def test_cli_check_data_exit_status_and_report(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: built-in defaults
    good = _good(tmp_path / "good")
    assert main(["check-data", str(good)]) == 0
    out = capsys.readouterr().out
    assert "ACCEPTED" in out and "train" in out and "valid" in out and "test" in out

    bad = _good(tmp_path / "bad")
    (bad / "test/C/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    assert main(["check-data", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "Unreadable images: 1 error, 0 warnings" in out and "test/C/broken.png" in out and "REFUSED" in out
    assert main(["check-data", str(bad), "--bad-images", "skip"]) == 0
    assert main(["check-data", str(tmp_path / "missing")]) == 2
