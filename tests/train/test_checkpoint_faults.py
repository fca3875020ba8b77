"""A damaged checkpoint folder in the cache: the run warns and goes on (fresh or resumed), never a
traceback, and nothing outside vitpipe's own files is read, written or deleted."""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import Killed, kill_after_first_checkpoint, tiny_params, train_outputs, train_results

from vitpipe.errors import VitpipeError
from vitpipe.model.weights import safe_torch_load
from vitpipe.train import checkpoint
from vitpipe.train.checkpoint import DIGEST_FILE, KEY_FILE, checkpoint_path
from vitpipe.train.resume import key_parts
from vitpipe.train.training import run_training

CPU = torch.device("cpu")


def _killed_after_first_epoch(monkeypatch, params, index, out: Path) -> Path:
    kill_after_first_checkpoint(monkeypatch, params, index, train_outputs(out))
    path = checkpoint_path(key_parts(params, index, CPU))
    assert path.is_file()
    return path


def test_an_empty_checkpoint_is_one_line_not_a_traceback(tmp_path):
    """torch.load's EOFError has no message: the reason was an IndexError traceback."""
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(VitpipeError, match=r"^checkpoint: .*last.pt is not a readable PyTorch checkpoint \(EOFError"):
        safe_torch_load(tmp_path / "last.pt", what="checkpoint")


DAMAGE = {
    "empty": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:4096]),
    "not torch": lambda p: p.write_text("garbage\n"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checkpoint_warns_and_the_run_starts_fresh(damage, tmp_path, tiny_index, monkeypatch, caplog):
    params = tiny_params(epochs=3)
    path = _killed_after_first_epoch(monkeypatch, params, tiny_index, tmp_path)
    DAMAGE[damage](path)
    caplog.set_level("INFO")
    metrics = run_training(params, tiny_index, train_outputs(tmp_path))
    assert metrics["epochs_run"] == 3 and "resuming from" not in caplog.text
    warned = [m for r in caplog.records if r.levelname == "WARNING" and "randomly initialised" not in (m := r.getMessage())]
    assert len(warned) == 1 and str(path) in warned[0] and warned[0].endswith("; starting fresh"), warned
    assert not path.parent.exists()  # finished: its own folder is gone


def test_a_checkpoint_that_is_a_link_is_not_read_through_nor_deleted(tmp_path, tiny_index, monkeypatch, caplog):
    """A link in the cache folder pointing elsewhere: vitpipe reads no checkpoint through it and
    deletes only the link, never what it points at."""
    params = tiny_params(epochs=3)
    path = _killed_after_first_epoch(monkeypatch, params, tiny_index, tmp_path)
    outside = tmp_path / "elsewhere.pt"
    path.rename(outside)
    path.symlink_to(outside)
    before = outside.read_bytes()
    caplog.set_level("INFO")
    run_training(params, tiny_index, train_outputs(tmp_path))
    assert "resuming from" not in caplog.text and "is a link" in caplog.text
    assert outside.read_bytes() == before and not path.parent.exists()


def test_a_folder_in_place_of_the_checkpoint_warns_and_is_left_alone(tmp_path, tiny_index, monkeypatch, caplog):
    params = tiny_params(epochs=4)
    path = _killed_after_first_epoch(monkeypatch, params, tiny_index, tmp_path)
    path.unlink()
    path.mkdir()
    (path / "mine.txt").write_text("the user's")
    caplog.set_level("INFO")
    assert run_training(params, tiny_index, train_outputs(tmp_path))["epochs_run"] == 4
    warned = [m for r in caplog.records if r.levelname == "WARNING" and "randomly initialised" not in (m := r.getMessage())]
    assert len(warned) == 1 and str(path) in warned[0] and ".;" not in warned[0], warned
    assert (path / "mine.txt").read_text() == "the user's"


@pytest.mark.parametrize("damage", ["empty", "not JSON", "a folder", "a link"])
def test_a_damaged_key_file_does_not_stop_the_resume(damage, tmp_path, tiny_index, monkeypatch, caplog):
    """key.json is for people and for naming the nearest run; the key that decides is in last.pt."""
    params = tiny_params(epochs=3)
    path = _killed_after_first_epoch(monkeypatch, params, tiny_index, tmp_path)
    key = path.parent / KEY_FILE
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{}\n")
    key.unlink()
    if damage == "a folder":
        key.mkdir()
    elif damage == "a link":
        key.symlink_to(outside)
    else:
        key.write_text("" if damage == "empty" else "{not json")
    caplog.set_level("INFO")
    assert run_training(params, tiny_index, train_outputs(tmp_path))["epochs_run"] == 3
    assert "resuming from" in caplog.text and "Traceback" not in caplog.text
    assert outside.read_text() == "{}\n"


def test_a_finished_run_removes_the_temporary_file_a_kill_left_in_its_folder(tmp_path, tiny_index, monkeypatch):
    """A kill mid-write leaves `.last.pt.<pid>.*.tmp`; when the resumed run writes no further
    checkpoint (it resumes at the last epoch) its folder was left in the cache for good."""
    params = tiny_params(epochs=2)
    path = _killed_after_first_epoch(monkeypatch, params, tiny_index, tmp_path)
    dead = _dead_pid()
    torn = path.parent / f".{path.name}.{dead}.abc123.tmp"
    torn.write_bytes(b"half a checkpoint")
    theirs = path.parent / "notes.txt"  # not vitpipe's: never deleted
    theirs.write_text("keep me")
    run_training(params, tiny_index, train_outputs(tmp_path))
    assert not path.exists() and not torn.exists() and theirs.read_text() == "keep me"
    theirs.unlink()


def _dead_pid() -> int:
    pid = 2 ** 22 - 1
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def _xor_middle_of_largest_tensor(path: Path, n: int = 64) -> None:
    """XORs ``n`` bytes in the middle of the largest tensor stored in a ``torch.save`` zip file (a bit rot
    torch.load cannot notice: the weights load, some of them ~1e29)."""
    with zipfile.ZipFile(path) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[member.header_offset + 26:member.header_offset + 30])
    start = member.header_offset + 30 + name_len + extra_len + member.file_size // 2
    raw[start:start + n] = bytes(b ^ 0xA5 for b in raw[start:start + n])
    path.write_bytes(bytes(raw))


FLIPS = {
    "bits flipped in a tensor": _xor_middle_of_largest_tensor,
    "digest file deleted": lambda p: (p.parent / DIGEST_FILE).unlink(),
    "digest file a link": lambda p: _replace_with_link(p.parent / DIGEST_FILE),
    "digest file not a digest": lambda p: (p.parent / DIGEST_FILE).write_bytes(b"\xff\x00 not hex\n"),
}


def _replace_with_link(path: Path) -> None:
    outside = path.parent.parent.parent / "elsewhere.sha256"
    path.rename(outside)
    path.symlink_to(outside)


@pytest.mark.parametrize("damage", sorted(FLIPS))
def test_a_checkpoint_that_does_not_match_its_digest_is_not_resumed(damage, tmp_path, tiny_index, monkeypatch, caplog):
    """Issue 22, case 1: a fine-tune killed after its first checkpoint, 64 bytes XORed in its largest tensor:
    it resumed ("epochs 0-0 done") with weights of 1e29, and evaluate scored NaN logits as class 0. Now
    the file is checked against the SHA-256 written with it, the run starts fresh and says why, and
    ends exactly as an uninterrupted run."""
    params = tiny_params(epochs=3, cache_views=0)
    run_training(params, tiny_index, train_outputs(tmp_path / "whole"))
    path = _killed_after_first_epoch(monkeypatch, params, tiny_index, tmp_path / "killed")
    FLIPS[damage](path)
    caplog.set_level("INFO")
    run_training(params, tiny_index, train_outputs(tmp_path / "killed"))
    assert "resuming from" not in caplog.text
    warned = [r.getMessage() for r in caplog.records
              if r.levelname == "WARNING" and "randomly initialised" not in r.getMessage()]
    assert len(warned) == 1 and str(path) in warned[0] and warned[0].endswith("; starting fresh"), warned
    assert ("does not match the SHA-256" if damage.startswith("bits") else "no digest written with it") in warned[0]
    assert train_results(tmp_path / "killed") == train_results(tmp_path / "whole")


@pytest.mark.parametrize("before_rename", [True, False])
def test_a_kill_between_the_checkpoint_and_its_digest_still_resumes(before_rename, tmp_path, tiny_index,
                                                                    monkeypatch, caplog):
    """The digest file lists the old and the new file's SHA-256 while last.pt is swapped: a kill on either
    side of the rename leaves a checkpoint that verifies."""
    params = tiny_params(epochs=4)
    path = _killed_after_first_epoch(monkeypatch, params, tiny_index, tmp_path)
    first = path.read_bytes()
    real = checkpoint._write_digests

    def write_then_die(target, digests):
        if len(digests) == 1:
            raise Killed  # last.pt replaced, its digest not yet alone in the file
        real(target, digests)
        if before_rename:
            raise Killed  # both digests written, last.pt not yet replaced

    payload = safe_torch_load(path, what="checkpoint")
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "_write_digests", write_then_die)
        with pytest.raises(Killed):
            checkpoint.save_checkpoint(path, key=json.loads(payload["key"]), progress=checkpoint.Progress(),
                                       module=torch.nn.Linear(1, 1), optimizer=_optimizer(),
                                       scheduler=_Stub(), ema=None)
    assert (path.read_bytes() == first) == before_rename
    assert len((path.parent / DIGEST_FILE).read_text().split()) == 2
    caplog.set_level("INFO")
    assert checkpoint.load_checkpoint(path, key=json.loads(payload["key"])) is not None
    assert "starting fresh" not in caplog.text


class _Stub:
    def state_dict(self) -> dict:
        return {}


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
