"""The download stage's sources, all offline: local folders and archives, a loopback HTTP server,
kagglehub replaced at its boundary, and the ``vitpipe download`` command."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import logging
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BUTTERFLIES, REPO  # noqa: E402
from PIL import Image

from vitpipe import cli
from vitpipe.download import http_fetch, sources
from vitpipe.errors import VitpipeError
from vitpipe.params import DEFAULT_WATCH, DataParams, SyntheticParams

EDITION = {"train/ADONIS": 4, "train/MONARCH": 5, "valid/ADONIS": 1, "valid/MONARCH": 2,
           "test/ADONIS": 1, "test/MONARCH": 1}


def _images(root: Path, layout: dict[str, int]) -> Path:
    """Tiny PNGs, each with a different colour, in root/<folder>/ for every ``folder: count``."""
    for k, (folder, n) in enumerate(sorted(layout.items())):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (6, 5), (k * 40 % 256, i * 20 % 256, 99)).save(root / folder / f"{i:03d}.png")
    return root


def _tree(root: Path) -> dict[str, bytes]:
    """The dataset's files and their bytes (vitpipe's download marker left out)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != sources.MARKER}


def _zip_dir(src: Path, dest: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, prefix + p.relative_to(src).as_posix())
    return dest


def _tgz_dir(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(src, arcname="dataset")
    return dest


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- local sources -------------------------------------------------------------------------------

def test_local_directory_is_copied_byte_for_byte(tmp_path: Path) -> None:
    src = _images(tmp_path / "src", EDITION)
    sources.fetch(str(src), tmp_path / "data", DataParams())
    assert _tree(tmp_path / "data") == _tree(src)
    assert not any(p.is_symlink() for p in (tmp_path / "data").rglob("*"))
    assert len(_tree(src)) == 14  # the source is untouched


def _splits_of(root: Path) -> dict[str, str]:
    """``class/file`` -> the split it was written to."""
    return {f"{p.parent.name}/{p.name}": p.parent.parent.name for p in root.glob("*/*/*")}


def test_train_only_folder_is_split_per_image_and_deterministically(tmp_path: Path) -> None:
    src = _images(tmp_path / "photos", {"cat": 40, "dog": 30, "owl": 3})
    data = DataParams(val_fraction=0.2, test_fraction=0.1, seed=3)
    sources.fetch(str(src), tmp_path / "one", data)
    sources.fetch(str(src), tmp_path / "two", data)
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two")
    merged = {Path(k).parts[1] + "/" + Path(k).name: v for k, v in _tree(tmp_path / "one").items()}
    assert merged == _tree(src)  # every image exactly once, in its own class
    assert {split for split in _splits_of(tmp_path / "one").values()} == {"train", "valid", "test"}
    sources.fetch(str(src), tmp_path / "three", dataclasses.replace(data, seed=4))
    assert _tree(tmp_path / "three") != _tree(tmp_path / "one")


def test_adding_and_removing_photos_moves_no_other_photo(tmp_path: Path) -> None:
    """The issue's case: 15 MONARCH photos, then 016-020 added: 006 and 012 must stay in test."""
    src = tmp_path / "photos"
    _images(src, {"MONARCH": 15, "ADONIS": 30})
    data = DataParams(val_fraction=0.15, test_fraction=0.15)
    sources.fetch(str(src), tmp_path / "before", data)
    before = _splits_of(tmp_path / "before")
    for i in range(15, 40):  # new photos, each different
        Image.new("RGB", (6, 5), (1, i, 7)).save(src / "MONARCH" / f"{i:03d}.png")
    (src / "ADONIS" / "004.png").unlink()
    sources.fetch(str(src), tmp_path / "after", data)
    after = _splits_of(tmp_path / "after")
    assert len(after) == len(before) + 25 - 1
    assert {k: after[k] for k in before if k in after} == {k: v for k, v in before.items() if k != "ADONIS/004.png"}
    assert sum(v != "train" for v in before.values()) > 0


# --- data.watch: the dvc.yaml dep that makes DVC see a local source's changes ---------------------

@pytest.mark.parametrize("source", ["synthetic", "https://example.org/b.zip", "kaggle:owner/slug@3"])
def test_sources_pinned_by_params_keep_the_default_watch(source: str) -> None:
    sources.check_watch(DataParams(source=source))
    with pytest.raises(VitpipeError) as err:
        sources.check_watch(DataParams(source=source, watch="/data/photos"))
    assert "data.watch" in str(err.value) and DEFAULT_WATCH in str(err.value) and "\n" not in str(err.value)


def test_a_local_source_needs_its_own_path_as_watch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = _images(tmp_path / "photos", {"cat": 2})
    archive = _zip_dir(photos, tmp_path / "photos.zip")
    monkeypatch.chdir(tmp_path)
    sources.check_watch(DataParams(source=str(photos), watch=str(photos)))
    sources.check_watch(DataParams(source="photos/", watch=str(photos)))  # relative and absolute agree
    sources.check_watch(DataParams(source=str(archive), watch="photos.zip"))
    for watch in (DEFAULT_WATCH, str(tmp_path), "photos.zip"):
        with pytest.raises(VitpipeError) as err:
            sources.check_watch(DataParams(source=str(photos), watch=watch))
        assert f"-S data.watch={photos}" in str(err.value) and "\n" not in str(err.value)


def test_a_watch_with_a_tilde_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _images(tmp_path / "photos", {"cat": 2})
    expected = rf"DVC does not expand ~; write the full path, data.watch: {tmp_path}/photos"
    with pytest.raises(VitpipeError, match=expected):
        sources.check_watch(DataParams(source="~/photos", watch="~/photos"))
    sources.check_watch(DataParams(source="~/photos", watch=str(tmp_path / "photos")))


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_local_archive_is_extracted_and_its_split_root_found(tmp_path: Path, kind: str) -> None:
    src = _images(tmp_path / "src", EDITION)
    arc = _zip_dir(src, tmp_path / "d.zip", "butterflies/") if kind == "zip" else _tgz_dir(src, tmp_path / "d.tgz")
    sources.fetch(str(arc), tmp_path / "data", DataParams())
    assert _tree(tmp_path / "data") == _tree(src)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [sources.MARKER, "test", "train", "valid"]


def test_real_butterflies_folder_is_copied(tmp_path: Path) -> None:
    if not BUTTERFLIES.is_dir():
        pytest.skip("shared butterflies-10 folder absent")
    small = tmp_path / "small"
    for split in ("train", "valid"):
        for cls in sorted((BUTTERFLIES / split).iterdir())[:2]:
            (small / split / cls.name).mkdir(parents=True)
            for img in sorted(cls.iterdir())[:4]:
                (small / split / cls.name / img.name).write_bytes(img.read_bytes())
    sources.fetch(str(small), tmp_path / "data", DataParams(test_fraction=0.25))
    assert len(_tree(tmp_path / "data" / "valid")) == 8
    test, train = len(_tree(tmp_path / "data" / "test")), len(_tree(tmp_path / "data" / "train"))
    assert test + train == 8 and test > 0  # test carved per image (25% in expectation), train keeps the rest


@pytest.mark.parametrize("source", ["ftp://example.org/d.zip", "no/such/dir", "kaggle:just-a-slug"])
def test_unknown_sources_are_one_line_errors(tmp_path: Path, source: str) -> None:
    with pytest.raises(VitpipeError) as err:
        sources.fetch(source, tmp_path / "data", DataParams())
    assert source in str(err.value) and "\n" not in str(err.value)
    assert ("synthetic | path/to/dir" in str(err.value)) != source.startswith("kaggle:")
    assert not list(tmp_path.iterdir())


def test_a_plain_file_is_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VitpipeError, match="not a zip or tar archive"):
        sources.fetch(str(tmp_path / "notes.txt"), tmp_path / "data", DataParams())


def test_synthetic_calls_the_generator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def generate(dest: Path, params: SyntheticParams, *, seed: int) -> None:
        calls.append((params, seed))
        _images(dest, {"train/a": 2, "valid/a": 1, "test/a": 1})

    monkeypatch.setitem(sys.modules, "vitpipe.download.synthetic", types.SimpleNamespace(generate=generate))
    data = DataParams(seed=5, synthetic=SyntheticParams(classes=3))
    sources.fetch("synthetic", tmp_path / "data", data)
    assert calls == [(data.synthetic, 5)]
    assert len(_tree(tmp_path / "data")) == 4


def test_synthetic_with_the_real_generator(tmp_path: Path) -> None:
    pytest.importorskip("vitpipe.download.synthetic")
    params = SyntheticParams(classes=2, train_per_class=2, valid_per_class=1, test_per_class=1, image_size=32)
    sources.fetch("synthetic", tmp_path / "data", DataParams(synthetic=params))
    counts = {s: sum(1 for p in (tmp_path / "data" / s).rglob("*") if p.is_file()) for s in ("train", "valid", "test")}
    assert counts == {"train": 4, "valid": 2, "test": 2}


# --- https ---------------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, list[tuple[int, bytes, int | None]]] = {}  # path -> responses; the last repeats
    hits: dict[str, int] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        queue = self.routes.get(self.path, [(404, b"not found", None)])
        status, body, length = queue.pop(0) if len(queue) > 1 else queue[0]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.routes, _Handler.hits = {}, {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def _no_retry_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_fetch, "RETRY_DELAYS_S", (0.0, 0.0))


@pytest.fixture
def archives(tmp_path: Path) -> dict[str, Path]:
    src = _images(tmp_path / "src", EDITION)
    return {"zip": _zip_dir(src, tmp_path / "d.zip"), "tar.gz": _tgz_dir(src, tmp_path / "d.tar.gz")}


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_https_archive_happy_path(tmp_path: Path, server: str, archives: dict[str, Path], kind: str) -> None:
    _Handler.routes[f"/d.{kind}"] = [(200, archives[kind].read_bytes(), None)]
    sources.fetch(f"{server}/d.{kind}", tmp_path / "data", DataParams(sha256=_sha(archives[kind])))
    assert _tree(tmp_path / "data") == _tree(tmp_path / "src")


def _previous_dest(tmp_path: Path) -> Path:
    """An earlier vitpipe download."""
    dest = tmp_path / "out" / "data"
    (dest / "train" / "old").mkdir(parents=True)
    (dest / "train" / "old" / "keep.png").write_bytes(b"previous")
    (dest / sources.MARKER).write_text("an earlier download")
    return dest


def _assert_untouched(dest: Path) -> None:
    assert _tree(dest) == {"train/old/keep.png": b"previous"}
    assert sorted(p.name for p in dest.parent.iterdir()) == ["data"]  # no temp dirs left behind


def test_wrong_checksum_extracts_nothing(tmp_path: Path, server: str, archives: dict[str, Path],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    dest = _previous_dest(tmp_path)
    _Handler.routes["/d.zip"] = [(200, archives["zip"].read_bytes(), None)]
    monkeypatch.setattr(sources.archive, "extract", lambda *a, **k: pytest.fail("extracted unverified data"))
    with pytest.raises(VitpipeError, match=f"SHA-256 mismatch: expected {'0' * 64}, got {_sha(archives['zip'])}"):
        sources.fetch(f"{server}/d.zip", dest, DataParams(sha256="0" * 64))
    _assert_untouched(dest)


def test_missing_sha256_names_the_key_and_how_to_compute_it(tmp_path: Path, server: str) -> None:
    with pytest.raises(VitpipeError, match=r"data\.sha256 is required .*sha256sum FILE"):
        sources.fetch(f"{server}/d.zip", tmp_path / "data", DataParams())
    assert _Handler.hits == {}


def test_404_names_the_url_and_status(tmp_path: Path, server: str) -> None:
    dest = _previous_dest(tmp_path)
    with pytest.raises(VitpipeError) as err:
        sources.fetch(f"{server}/missing.zip", dest, DataParams(sha256="0" * 64))
    assert str(err.value) == f"{server}/missing.zip: HTTP 404 Not Found; check the URL."
    assert _Handler.hits == {"/missing.zip": 1}  # a 404 is not retried
    _assert_untouched(dest)


def test_refused_connection_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bound but not listening: connections to it are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/d.zip"
        with pytest.raises(VitpipeError) as err:
            sources.fetch(url, tmp_path / "data", DataParams(sha256="0" * 64))
    assert str(err.value) == (f"could not reach {url} (connection refused); check the URL/network, or set "
                              f"data.source to a local directory or archive.")


@pytest.mark.parametrize("failure", [(503, b"busy", None), (429, b"slow down", None),
                                     (200, b"PK\x03\x04 cut sho", 10_000)])  # body shorter than promised
def test_transient_failures_are_retried(tmp_path: Path, server: str, archives: dict[str, Path],
                                        failure: tuple[int, bytes, int | None]) -> None:
    body = archives["tar.gz"].read_bytes()
    _Handler.routes["/d.tar.gz"] = [failure, failure, (200, body, None)]
    sources.fetch(f"{server}/d.tar.gz", tmp_path / "data", DataParams(sha256=_sha(archives["tar.gz"])))
    assert _Handler.hits == {"/d.tar.gz": 3}
    assert _tree(tmp_path / "data") == _tree(tmp_path / "src")


def test_persistent_5xx_gives_up_after_the_last_attempt(tmp_path: Path, server: str) -> None:
    _Handler.routes["/d.zip"] = [(502, b"bad gateway", None)]
    with pytest.raises(VitpipeError, match=r"could not download .*/d\.zip \(HTTP 502 Bad Gateway\) after 3"):
        sources.fetch(f"{server}/d.zip", tmp_path / "data", DataParams(sha256="0" * 64))
    assert _Handler.hits == {"/d.zip": 3}


def test_a_silent_server_times_out_and_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_fetch, "TIMEOUT_S", 0.2)
    with socket.socket() as sock:  # listening, so connects succeed, but it never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/d.zip"
        with pytest.raises(VitpipeError, match=r"could not download .* \(timed out\) after 3 attempts"):
            sources.fetch(url, tmp_path / "data", DataParams(sha256="0" * 64))


def test_download_over_the_size_cap_is_refused(tmp_path: Path, server: str, archives: dict[str, Path]) -> None:
    _Handler.routes["/d.zip"] = [(200, archives["zip"].read_bytes(), None)]
    with pytest.raises(VitpipeError, match="over the cap"):
        sources.fetch(f"{server}/d.zip", tmp_path / "data",
                      DataParams(sha256=_sha(archives["zip"]), max_extract_gb=1e-7))  # 100 bytes
    assert not (tmp_path / "data").exists()


def test_an_https_zip_bomb_is_named_by_its_url_not_a_deleted_temp_path(tmp_path: Path, server: str) -> None:
    """Issue 10, item 11: the archive was downloaded to a scratch file that is gone by the time the user reads."""
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train/a/zeros.png", b"\0" * 2_000_000)  # ~2 KB on the wire
    _Handler.routes["/bomb.zip"] = [(200, bomb.read_bytes(), None)]
    with pytest.raises(VitpipeError) as err:
        sources.fetch(f"{server}/bomb.zip", tmp_path / "data", DataParams(sha256=_sha(bomb), max_extract_gb=1e-3))
    message = str(err.value)
    assert message.startswith(f"{server}/bomb.zip: refused to extract") and "Raise data.max_extract_gb" in message
    assert ".incoming" not in message and ".tmp" not in message


# --- kaggle --------------------------------------------------------------------------------------

def _kaggle(monkeypatch: pytest.MonkeyPatch, result: Path | BaseException) -> list[str]:
    import kagglehub

    handles: list[str] = []

    def dataset_download(handle: str, *args: object, **kwargs: object) -> str:
        handles.append(handle)
        if isinstance(result, BaseException):
            raise result
        return str(result)

    monkeypatch.setattr(kagglehub, "dataset_download", dataset_download)
    return handles


def test_kaggle_fifty_species_edition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    _images(cache, {f"butterflies/{k.lower()}": n for k, n in EDITION.items()})  # lower-case classes
    (cache / "butterflies" / "butterflies.csv").write_text("filepaths,labels\n")
    handles = _kaggle(monkeypatch, cache)
    sources.fetch("kaggle:gpiosenka/butterfly-images40-species@3", tmp_path / "data", DataParams())
    assert handles == ["gpiosenka/butterfly-images40-species/versions/3"]
    expected = {k: v for k, v in _tree(cache / "butterflies").items() if k != "butterflies.csv"}
    assert _tree(tmp_path / "data") == expected and "train/adonis/000.png" in expected
    assert (cache / "butterflies" / "train").is_dir()  # kagglehub's cache is copied, never moved


def test_kaggle_hundred_species_edition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _images(tmp_path / "cache", {"train/ADONIS": 4, "train/MONARCH": 5, "valid/ADONIS": 1,
                                         "valid/MONARCH": 1, "test/ADONIS": 1, "test/MONARCH": 1})
    (cache / "butterflies and moths.csv").write_text("class id,filepaths,labels\n")
    (cache / "EfficientNetB0-100-(224 X 224)- 97.59.h5").write_bytes(b"weights")
    handles = _kaggle(monkeypatch, cache)
    sources.fetch("kaggle:gpiosenka/butterfly-images40-species", tmp_path / "data", DataParams())
    assert handles == ["gpiosenka/butterfly-images40-species"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [sources.MARKER, "test", "train", "valid"]
    assert _tree(tmp_path / "data") == {k: v for k, v in _tree(cache).items() if "/" in k}


def test_kaggle_unreachable_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    # What kagglehub 1.0.3 raises with no network (DNS failure), cause chain included.
    try:
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except socket.gaierror as inner:
            raise requests.exceptions.ConnectionError(
                "HTTPSConnectionPool(host='api.kaggle.com', port=443): Max retries exceeded") from inner
    except requests.exceptions.ConnectionError as exc:
        offline = exc
    _kaggle(monkeypatch, offline)
    dest = _previous_dest(tmp_path)
    with pytest.raises(VitpipeError) as err:
        sources.fetch("kaggle:gpiosenka/butterfly-images40-species@3", dest, DataParams())
    assert str(err.value) == (
        "could not download kaggle:gpiosenka/butterfly-images40-species (ConnectionError: [Errno -2] Name or "
        "service not known); needs network and Kaggle credentials (~/.kaggle/kaggle.json or "
        "KAGGLE_USERNAME/KAGGLE_KEY), or set data.source to a local directory.")
    _assert_untouched(dest)


# --- the vitpipe download command ---------------------------------------------------------------

@pytest.fixture
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("_restore_logging")
def test_cli_download_copies_a_folder(tmp_path: Path) -> None:
    src = _images(tmp_path / "src", EDITION)
    argv = ["download", str(src), str(tmp_path / "data")]
    assert cli.main(argv) == 0
    assert _tree(tmp_path / "data") == _tree(src)


@pytest.mark.usefixtures("_restore_logging")
def test_cli_download_refuses_a_traversal_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    arc = work / "evil.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("train/a/1.png", b"fine")
        zf.writestr("../../../evil.png", b"boom")
    before = {p: sorted(q.name for q in p.iterdir()) for p in (tmp_path, work)}
    argv = ["download", str(arc), str(work / "data")]
    assert cli.main(argv) == 2
    assert {p: sorted(q.name for q in p.iterdir()) for p in (tmp_path, work)} == before
    assert not any(p.name == "evil.png" for p in tmp_path.parent.rglob("evil.png"))
    assert "'../../../evil.png' climbs out" in capsys.readouterr().err


# --- the destination and the source are the user's: never destroyed (issue 10, items 2 and 3) -----

def _listing(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): (b"<dir>" if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*"))}


@pytest.mark.usefixtures("_restore_logging")
@pytest.mark.parametrize("case", ["non-empty folder", "same as source", "inside source", "holds source",
                                  "current folder", "a file"])
def test_download_refuses_a_destination_it_would_destroy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str], case: str) -> None:
    src = _images(tmp_path / "photos", EDITION)
    (src / "notes.txt").write_text("my notes")
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "draft.tex").write_text("years of work")
    (tmp_path / "report.pdf").write_bytes(b"%PDF")
    monkeypatch.chdir(tmp_path / "thesis")
    dest = {"non-empty folder": tmp_path / "thesis", "same as source": src, "inside source": src / "train",
            "holds source": tmp_path, "current folder": Path("."), "a file": tmp_path / "report.pdf"}[case]
    before = _listing(tmp_path)
    assert cli.main(["download", str(src), str(dest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(dest) in err[0] and "Traceback" not in err[0]
    assert _listing(tmp_path) == before  # nothing deleted, moved, or left behind


@pytest.mark.usefixtures("_restore_logging")
def test_download_replaces_its_own_earlier_download_and_an_empty_folder(tmp_path: Path) -> None:
    one, two = _images(tmp_path / "one", {"train/a": 4}), _images(tmp_path / "two", {"train/b": 4})
    (tmp_path / "data").mkdir()
    assert cli.main(["download", str(one), str(tmp_path / "data")]) == 0
    assert cli.main(["download", str(two), str(tmp_path / "data")]) == 0
    assert {p.parent.name for p in (tmp_path / "data").rglob("*.png")} == {"b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "one", "two"]  # no temp folder left


def test_links_out_of_a_local_source_are_refused_and_nothing_is_copied(tmp_path: Path) -> None:
    src = _images(tmp_path / "photos", EDITION)
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0")
    (src / "train" / "ADONIS" / "secret.jpg").symlink_to(secret)
    with pytest.raises(VitpipeError, match=r"secret\.jpg: a link to .*passwd, outside the source folder"):
        sources.fetch(str(src), tmp_path / "data", DataParams())
    assert not (tmp_path / "data").exists()
    (src / "train" / "ADONIS" / "secret.jpg").unlink()
    (src / "train" / "LINKED").symlink_to(tmp_path, target_is_directory=True)  # a class folder linking out
    (tmp_path / "x.png").write_bytes((src / "train" / "ADONIS" / "000.png").read_bytes())
    with pytest.raises(VitpipeError, match="outside the source folder"):
        sources.fetch(str(src), tmp_path / "data", DataParams())


def test_check_data_refuses_a_link_out_as_download_does(tmp_path: Path, capsys) -> None:
    src = _images(tmp_path / "photos", {"a": 6, "b": 6})  # class folders only: carved, so hashed
    (tmp_path / "passwd").write_text("root:x:0:0")
    (src / "a" / "secret.jpg").symlink_to(tmp_path / "passwd")
    assert cli.main(["check-data", str(src)]) == 2
    with pytest.raises(VitpipeError, match=r"secret\.jpg: a link to .*passwd, outside the source folder"):
        sources.fetch(str(src), tmp_path / "data", DataParams())


def test_links_inside_a_local_source_are_copied_as_files(tmp_path: Path) -> None:
    src = _images(tmp_path / "photos", EDITION)
    (src / "train" / "ADONIS" / "again.png").symlink_to(src / "train" / "MONARCH" / "000.png")
    sources.fetch(str(src), tmp_path / "data", DataParams())
    copied = tmp_path / "data" / "train" / "ADONIS" / "again.png"
    assert not copied.is_symlink() and copied.read_bytes() == (src / "train" / "MONARCH" / "000.png").read_bytes()


# --- nothing silently accepted (issue 10, item 8) -------------------------------------------------

@pytest.mark.usefixtures("_restore_logging")
@pytest.mark.parametrize("sha", ["xyz", "0" * 63, "g" * 64, " "])
def test_a_malformed_sha256_is_refused_before_any_download(tmp_path: Path, server: str, archives: dict[str, Path],
                                                           capsys: pytest.CaptureFixture[str], sha: str) -> None:
    _Handler.routes["/d.zip"] = [(200, archives["zip"].read_bytes(), None)]
    assert cli.main(["download", f"{server}/d.zip", str(tmp_path / "data"), "--sha256", sha]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a SHA-256" in err[0] and "--sha256" in err[0]
    assert _Handler.hits == {} and not (tmp_path / "data").exists()


def test_hidden_class_folders_and_files_are_named_in_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = _images(tmp_path / "src", {**EDITION, "train/...": 2, "train/.x": 2})
    (src / "train" / "ADONIS" / ".hidden.png").write_bytes((src / "train" / "ADONIS" / "000.png").read_bytes())
    (src / "train" / "ADONIS" / ".DS_Store").write_bytes(b"litter")
    with caplog.at_level(logging.WARNING):
        sources.fetch(str(src), tmp_path / "data", DataParams())
    assert not (tmp_path / "data" / "train" / ".x").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2 hidden folder(s) skipped" in w and "..., .x" in w for w in warnings), warnings
    assert any("1 hidden file(s) skipped: .hidden.png" in w for w in warnings), warnings


# --- a killed download leaves nothing git would commit, and the next run cleans it (item 10) -----

def test_a_download_killed_mid_copy_leaves_an_ignored_temp_that_the_next_run_removes(tmp_path: Path) -> None:
    src = _images(tmp_path / "src", EDITION)
    dest = tmp_path / "data" / "raw"
    kill_after_one_file = (
        "import os, signal, sys\n"
        "from vitpipe.download import layout\n"
        "copy = layout._copy\n"
        "def copy_then_die(*args, **kwargs):\n"
        "    copy(*args, **kwargs)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "layout._copy = copy_then_die\n"
        "from vitpipe.cli import main\n"
        "main(['download', sys.argv[1], sys.argv[2]])\n")
    proc = subprocess.run([sys.executable, "-c", kill_after_one_file, str(src), str(dest)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    (left,) = (tmp_path / "data").iterdir()
    assert left.name.startswith(".raw.") and left.name.endswith(".tmp") and any(left.rglob("*.png"))
    inside = next(left.rglob("*.png")).relative_to(tmp_path).as_posix()
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "-q", inside], cwd=REPO)
    assert ignored.returncode == 0, f"git would commit {inside}"
    sources.fetch(str(src), dest, DataParams())
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]
