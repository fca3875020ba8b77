"""Safe extraction: nothing outside the target, size caps, corrupt archives, macOS litter."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from vitpipe.download import archive
from vitpipe.download.archive import archive_format, extract
from vitpipe.errors import VitpipeError

CAP = 10_000_000


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, body in members.items():
            zf.writestr(name, body)
    return path


def _tar(path: Path, members: dict[str, bytes], mode: str = "w:gz",
         extra: list[tarfile.TarInfo] | None = None) -> Path:
    with tarfile.open(path, mode) as tf:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
        for info in extra or []:
            tf.addfile(info)
    return path


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


GOOD = {"train/a/1.png": b"one", "train/b/2.png": b"two" * 100, "valid/a/3.png": b"\x00\xff" * 7}


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz", "tgz"])
def test_extracts_every_member_byte_for_byte(tmp_path: Path, kind: str) -> None:
    src = tmp_path / f"good.{kind}"
    if kind == "zip":
        _zip(src, GOOD)
    else:
        _tar(src, GOOD, "w" if kind == "tar" else "w:gz")
    assert archive_format(src) == ("zip" if kind == "zip" else "tar")
    assert extract(src, tmp_path / "out", max_bytes=CAP) == 3
    assert _files(tmp_path / "out") == GOOD


def test_format_is_sniffed_when_the_name_has_no_archive_suffix(tmp_path: Path) -> None:
    z = _zip(tmp_path / "blob1.bin", GOOD)
    t = _tar(tmp_path / "blob2.bin", GOOD)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an archive at all" * 50)
    assert (archive_format(z), archive_format(t), archive_format(junk)) == ("zip", "tar", None)


def test_macos_litter_is_skipped(tmp_path: Path) -> None:
    src = _zip(tmp_path / "mac.zip", {**GOOD, "__MACOSX/train/a/._1.png": b"x", "train/.DS_Store": b"x",
                                      "train/a/._1.png": b"x"})
    extract(src, tmp_path / "out", max_bytes=CAP)
    assert _files(tmp_path / "out") == GOOD


def _assert_refused(tmp_path: Path, src: Path, member: str, *, cap: int = CAP) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(VitpipeError) as err:
        extract(src, tmp_path / "out", max_bytes=cap)
    message = str(err.value)
    assert "\n" not in message and src.name in message and member in message
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # target removed, nothing beside it
    assert not (tmp_path.parent / "evil.txt").exists() and not Path("/tmp/vitpipe-evil.txt").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "train/../../evil.txt", "..\\evil.txt"])
def test_parent_traversal_is_refused(tmp_path: Path, name: str) -> None:
    _assert_refused(tmp_path, _zip(tmp_path / "t.zip", {**GOOD, name: b"boom"}), name.replace("\\", "\\\\"))
    (tmp_path / "t.zip").unlink()
    _assert_refused(tmp_path, _tar(tmp_path / "t.tar.gz", {**GOOD, name: b"boom"}),
                    name.replace("\\", "\\\\"))


def test_absolute_member_is_refused(tmp_path: Path) -> None:
    _assert_refused(tmp_path, _zip(tmp_path / "a.zip", {"/tmp/vitpipe-evil.txt": b"boom"}), "absolute")
    _assert_refused(tmp_path, _tar(tmp_path / "a.tar", {"/tmp/vitpipe-evil.txt": b"boom"}, "w"), "absolute")


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_links_pointing_out_are_refused(tmp_path: Path, kind: bytes) -> None:
    src = _tar(tmp_path / "l.tar.gz", GOOD, extra=[_link("train/a/evil.png", "../../../../etc/passwd", kind)])
    _assert_refused(tmp_path, src, "train/a/evil.png")


def test_even_links_pointing_inside_are_refused(tmp_path: Path) -> None:
    """Datasets have no use for links, so none are extracted (tarfile's data filter would allow this one)."""
    src = _tar(tmp_path / "in.tar", GOOD, "w", extra=[_link("train/b/copy.png", "../a/1.png", tarfile.SYMTYPE)])
    _assert_refused(tmp_path, src, "is a link")


def test_link_then_write_through_it_is_refused(tmp_path: Path) -> None:
    """The classic two-step escape: a symlink to a directory outside, then a file under it."""
    src = _tar(tmp_path / "two.tar", {"escape/evil.txt": b"boom"}, "w",
               extra=[_link("escape", str(tmp_path.parent), tarfile.SYMTYPE)])
    _assert_refused(tmp_path, src, "escape")


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "s.zip"
    with zipfile.ZipFile(src, "w") as zf:
        info = zipfile.ZipInfo("train/a/link.png")
        info.external_attr = (0o120777 << 16)  # S_IFLNK
        zf.writestr(info, "/etc/passwd")
    _assert_refused(tmp_path, src, "symbolic link")


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_device_files_are_refused(tmp_path: Path, kind: bytes) -> None:
    dev = tarfile.TarInfo("train/a/dev.png")
    dev.type = kind
    _assert_refused(tmp_path, _tar(tmp_path / "d.tar", GOOD, "w", extra=[dev]), "train/a/dev.png")


def test_declared_size_over_the_cap_is_refused_before_writing(tmp_path: Path) -> None:
    src = _zip(tmp_path / "big.zip", {"train/a/zeros.png": b"\0" * 200_000})  # compresses to ~200 bytes
    assert src.stat().st_size < 2_000
    _assert_refused(tmp_path, src, "max_extract_gb", cap=100_000)
    src.unlink()
    _assert_refused(tmp_path, _tar(tmp_path / "big.tar.gz", {"train/a/zeros.png": b"\0" * 200_000}),
                    "max_extract_gb", cap=100_000)


def test_the_size_cap_message_names_the_param_to_raise_not_a_rebuild(tmp_path: Path) -> None:
    """Issue 10, item 11: an archive over data.max_extract_gb is not broken; the fix is the param."""
    src = _zip(tmp_path / "big.zip", {"train/a/zeros.png": b"\0" * 200_000})
    with pytest.raises(VitpipeError) as err:
        extract(src, tmp_path / "out", max_bytes=100_000)
    assert "Raise data.max_extract_gb" in str(err.value) and "Rebuild" not in str(err.value)


def test_bytes_written_are_capped_even_when_headers_lie(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the declared sizes passed (a header that lies): the running count must still stop it.
    monkeypatch.setattr(archive._Budget, "check_declared", lambda self, total: None)
    src = _tar(tmp_path / "bomb.tar.gz", {f"train/a/{i}.png": b"\0" * 40_000 for i in range(5)})
    _assert_refused(tmp_path, src, "over the cap", cap=100_000)


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar"])
def test_truncated_archive_is_one_line_naming_it(tmp_path: Path, kind: str) -> None:
    body = {f"train/a/{i}.png": bytes(range(256)) * 40 for i in range(4)}
    full = tmp_path / f"full.{kind}"
    if kind == "zip":
        _zip(full, body)
    else:
        _tar(full, body, "w" if kind == "tar" else "w:gz")
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    _assert_refused(tmp_path, cut, "corrupt")


def test_not_an_archive_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("hello")
    with pytest.raises(VitpipeError, match="not a zip or tar archive"):
        extract(src, tmp_path / "out", max_bytes=CAP)
    assert not (tmp_path / "out").exists()
