"""``vitpipe export`` replaces only an export it wrote, recognised by its mark, and a full disk is one
line naming the target (issue 22, cases 4, 7 and 12).

Before: any ``model.onnx`` in ``--out`` was taken for an earlier export and replaced, and so were a
user's ``README.md`` and ``config.json`` with ``--format timm``; safetensors' ``No space left on
device`` was a traceback, and the ONNX export's named the temporary folder."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from test_export_cli import model_path  # noqa: F401 - the fixture: an untrained test_vit with timm's head

from vitpipe.cli import main
from vitpipe.export.export import MARK


def _export(model_path: Path, fmt: str, out: Path, capsys) -> tuple[int, list[str]]:
    rc = main(["export", "--model", str(model_path), "--format", fmt, "--out", str(out)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, [line for line in err.splitlines() if "ERROR" in line]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("fmt,mine", [("onnx", ["model.onnx"]), ("timm", ["README.md"]), ("timm", ["config.json"]),
                                      ("timm", ["config.json", "model.safetensors", "README.md"])])
def test_a_users_files_named_like_an_export_are_never_replaced(model_path, tmp_path, capsys, fmt, mine):
    out = tmp_path / "out"
    out.mkdir()
    for name in mine:
        (out / name).write_text(f"the user's own {name}")
    before = _snapshot(out)
    rc, errors = _export(model_path, fmt, out, capsys)
    assert rc == 2 and len(errors) == 1 and f"holds {', '.join(sorted(mine)[:3])}" in errors[0], errors
    assert f"no {MARK} of its own" in errors[0]
    assert _snapshot(out) == before


DAMAGE = {
    "a file edited": lambda out: (out / "README.md").write_text("my own notes"),
    "a file added": lambda out: (out / "notes.txt").write_text("mine"),
    "the mark removed": lambda out: (out / MARK).unlink(),
    "the mark not JSON": lambda out: (out / MARK).write_text("{"),
    "a file replaced by a link": lambda out: _link_in_place(out / "config.json"),
}


def _link_in_place(path: Path) -> None:
    outside = path.parent.parent / "outside.json"
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_an_earlier_export_is_replaced_only_as_vitpipe_wrote_it(model_path, tmp_path, capsys, damage):
    out = tmp_path / "timm"
    assert _export(model_path, "timm", out, capsys)[0] == 0
    mark = json.loads((out / MARK).read_text())
    assert mark["format"] == "timm" and sorted(mark["files"]) == ["README.md", "config.json", "model.safetensors"]
    assert _export(model_path, "timm", out, capsys)[0] == 0  # its own earlier export: replaced
    DAMAGE[damage](out)
    before = _snapshot(out)
    rc, errors = _export(model_path, "timm", out, capsys)
    assert rc == 2 and len(errors) == 1 and str(out) in errors[0], errors
    assert _snapshot(out) == before


def test_an_export_of_the_other_format_is_not_replaced(model_path, tmp_path, capsys):
    out = tmp_path / "export"
    assert _export(model_path, "onnx", out, capsys)[0] == 0
    before = _snapshot(out)
    rc, errors = _export(model_path, "timm", out, capsys)
    assert rc == 2 and "holds a `vitpipe export --format onnx` export, not --format timm" in errors[0]
    assert _snapshot(out) == before


def _limit_writes(limit: int):
    def child() -> None:  # writes past ``limit`` fail with EFBIG (as on a full disk), not SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return child


def _can_mount() -> bool:
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs tmpfs "$(mktemp -d)"'],
                           capture_output=True) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


@pytest.mark.parametrize("fmt,target", [("timm", "model.safetensors"), ("onnx", "model.onnx")])
@pytest.mark.parametrize("disk", ["full tmpfs", "file size limit"])
def test_a_full_disk_is_one_line_naming_the_target_not_a_temporary_path(model_path, tmp_path, fmt, target, disk):
    """test_vit's weights are about 1.7 MB: a 1 MB disk takes config.json, not the weights."""
    out = tmp_path / "disk" / "export"
    out.parent.mkdir()
    cmd = [sys.executable, "-m", "vitpipe.cli", "export", "--model", str(model_path), "--format", fmt, "--out", str(out)]
    if disk == "full tmpfs":
        if not _can_mount():
            pytest.skip("no unprivileged tmpfs mounts here (unshare -rm)")
        script = 'mount -t tmpfs -o size=1m tmpfs "$1" && shift && exec "$@"'
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(out.parent), *cmd],
                              capture_output=True, text=True)
        reason = "No space left on device"
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_limit_writes(1 << 20))
        reason = "File too large"
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert f"could not write {out / target}: {reason}" in errors[0], errors[0]
    assert ".tmp" not in errors[0]
    if disk == "file size limit":
        assert not out.exists() and os.listdir(out.parent) == []


def test_an_out_folder_or_file_that_cannot_be_read_is_one_line(model_path, tmp_path, capsys, monkeypatch):
    """Permission denied on listing `--out`, or on reading a file of an earlier export (root reads anything,
    so the errors are raised by hand): one line, nothing replaced."""
    import pathlib

    import vitpipe.export.export as export

    out = tmp_path / "timm"
    assert _export(model_path, "timm", out, capsys)[0] == 0
    real_iterdir, real_sha = pathlib.Path.iterdir, export.file_sha256

    def deny_listing(self):
        if self == out:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    with monkeypatch.context() as m:
        m.setattr(pathlib.Path, "iterdir", deny_listing)
        rc, errors = _export(model_path, "timm", out, capsys)
        assert rc == 2 and len(errors) == 1 and "cannot be listed (Permission denied)" in errors[0]
    monkeypatch.setattr(export, "file_sha256", lambda p: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if Path(p).parent == out else real_sha(p))
    rc, errors = _export(model_path, "timm", out, capsys)
    assert rc == 2 and len(errors) == 1 and "cannot be read (Permission denied)" in errors[0]
