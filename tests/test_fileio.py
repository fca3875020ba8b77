"""Atomic writes, and what a full or read-only disk gets: one line naming the path, never a
traceback, nothing half-written, and the feature cache (a speed-up) skipped with a warning
(issue 10, items 5 and 10).

Real faults, not mocks, where the OS can make them: a subprocess under ``RLIMIT_FSIZE`` (every
write past the limit fails with EFBIG, as on a full disk; works everywhere) and, where user
namespaces allow mounting, a tiny or read-only tmpfs (ENOSPC, EROFS).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO, live_files, tiny_params, train_outputs

from vitpipe import fileio
from vitpipe.errors import VitpipeError
from vitpipe.fileio import atomic_dir, atomic_path, write_text

# --- atomic_path and atomic_dir on their own --------------------------------------------------------


def test_a_failed_write_is_one_line_naming_the_target_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(VitpipeError) as err, atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(err.value).startswith(f"could not write {target}: No space left on device.")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_an_unwritable_folder_is_one_line(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    for write in (lambda: write_text(tmp_path / "a.json", "{}"), lambda: atomic_dir(tmp_path / "raw").__enter__()):
        with pytest.raises(VitpipeError, match="could not write .*: Read-only file system"):
            write()


def test_a_file_path_that_is_a_folder_is_one_line(tmp_path):
    (tmp_path / "models").mkdir()
    with pytest.raises(VitpipeError, match=r"could not write .*models: it is a folder; give the path of a file"):
        fileio.write_bytes(tmp_path / "models", b"weights")


def test_an_input_error_inside_the_block_is_not_called_a_write_error(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "out.json"):
        (tmp_path / "missing-input.jpg").read_bytes()


def test_stale_temps_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale_dir = tmp_path / f".raw.{dead}.abc.tmp"
    (stale_dir / "train").mkdir(parents=True)
    stale_file = tmp_path / f".test.json.{dead}.xyz.tmp"
    stale_file.write_text("half")
    live = tmp_path / f".raw.{os.getppid()}.def.tmp"  # a running process (pytest's parent) may still write it
    live.mkdir()
    other = tmp_path / ".raw.notes.tmp"  # not of vitpipe's form: never touched
    other.write_text("mine")
    with atomic_dir(tmp_path / "raw") as out:
        (out / "x").write_text("x")
    write_text(tmp_path / "test.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "raw", "test.json"])


# --- real faults in the stages and commands -----------------------------------------------------------


def _file_size_limit(limit: int):
    def limit_writes() -> None:  # runs in the child: writes past ``limit`` fail with EFBIG, not SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_writes


def _assert_one_line(proc: subprocess.CompletedProcess, *expected: str) -> None:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert "Traceback" not in text
    errors = [ln for ln in proc.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1, proc.stderr
    assert all(e in errors[0] for e in expected), errors[0]


def _no_temps_left(folder: Path) -> None:
    assert not list(folder.rglob("*.tmp")), list(folder.rglob("*.tmp"))


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_data) -> Path:
    """A working folder with tiny params and a checked index of the tiny dataset."""
    from vitpipe.check.datacheck import run_split_check
    from vitpipe.params import DataParams

    work = tmp_path_factory.mktemp("work")
    params = tiny_params(epochs=1)
    (work / "params.yaml").write_text(yaml.safe_dump({
        "model": {"name": params.model.name, "img_size": params.model.img_size, "head_hidden": 16},
        "train": {"epochs": 1, "batch_size": 8, "val_batch_size": 8, "num_workers": 0, "device": "cpu"}}))
    run_split_check(tiny_data, DataParams(), index_path=work / "index.json", report_path=work / "data.json")
    return work


def _stage(script: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "stages" / script), *args]


TRAIN_ARGS = ("--index", "index.json", "--model", "models/model.safetensors", "--metrics", "train.json",
              "--live", "dvclive")


@pytest.mark.parametrize("case", ["download a folder", "download synthetic", "split-check outputs",
                                  "train: the model file"])
def test_a_disk_too_small_ends_in_one_line_naming_the_path(tmp_path, work, tiny_data, case):
    """Every write past 1 kB (300 kB for train) fails, as on a full disk."""
    cwd, limit = tmp_path, 1_000
    if case == "download a folder":
        cmd, named = [sys.executable, "-m", "vitpipe.cli", "download", str(tiny_data), "raw"], "raw"
    elif case == "download synthetic":
        cmd, named = [sys.executable, "-m", "vitpipe.cli", "download", "synthetic", "raw"], "raw"
    elif case == "split-check outputs":
        shutil.copytree(work, cwd := tmp_path / "w")
        cmd, named = _stage("split_check.py", str(tiny_data), "--index", "i.json", "--report", "d.json",
                            "--totals", "t.json"), "i.json"
    else:
        shutil.copytree(work, cwd := tmp_path / "w")
        limit = 300_000  # features and checkpoint fit, the 1.2 MB model does not
        cmd, named = _stage("train.py", *TRAIN_ARGS), "models/model.safetensors"
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, preexec_fn=_file_size_limit(limit),
                          env={**os.environ, "VITPIPE_CACHE_DIR": str(tmp_path / "cache")})
    _assert_one_line(proc, "could not write", named, "File too large")
    _no_temps_left(tmp_path)


def test_an_unusable_feature_cache_warns_and_training_goes_on(tmp_path, work, tiny_index, monkeypatch, caplog):
    """The cache is a speed-up: a cache folder that cannot be written costs time, not the run."""
    from vitpipe.train.training import run_training

    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("VITPIPE_CACHE_DIR", str(tmp_path / "a-file" / "cache"))  # mkdir fails: ENOTDIR
    out = train_outputs(tmp_path / "out")
    metrics = run_training(tiny_params(epochs=1), tiny_index, out)
    assert metrics["engine"] == "feature-cache" and out.model.is_file()
    warnings = [r.getMessage() for r in caplog.records if "features not cached, training goes on" in r.getMessage()]
    assert len(warnings) == 1  # once for the run, not once per split

    monkeypatch.setenv("VITPIPE_CACHE_DIR", str(tmp_path / "cache"))
    run_training(tiny_params(epochs=1), tiny_index, train_outputs(tmp_path / "reference"))
    assert live_files(tmp_path / "out") == live_files(tmp_path / "reference")  # same training, cache or not


# --- tiny and read-only tmpfs, where this machine lets a user namespace mount one --------------------

def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs tmpfs \"$(mktemp -d)\""], capture_output=True)
    return probe.returncode == 0


mounts = pytest.mark.skipif(not _can_mount(), reason="no unprivileged tmpfs mounts here (unshare -rm)")


def _on_tmpfs(folder: Path, options: str, cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Runs ``cmd`` with a tmpfs mounted on ``folder`` (``size=64k`` full, ``ro`` read-only)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = 'mount -t tmpfs -o "$1" tmpfs "$2" && shift 2 && exec "$@"'
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", options, str(folder), *cmd], cwd=cwd,
                          capture_output=True, text=True, env=env)


@mounts
@pytest.mark.parametrize(("case", "options"), [("dvclive", "size=8k"), ("decoded store", "size=16k"),
                                               ("split-check outputs", "ro")])
def test_a_full_or_read_only_tmpfs_ends_in_one_line_naming_the_path(tmp_path, work, tiny_data, case, options):
    disk = tmp_path / "disk"
    env = {**os.environ, "VITPIPE_CACHE_DIR": str(tmp_path / "cache")}
    cwd = tmp_path / "w"
    shutil.copytree(work, cwd)
    if case == "dvclive":  # DVCLive's per-epoch files on a full disk
        cmd, named = _stage("train.py", *TRAIN_ARGS[:-1], str(disk / "dvclive")), "dvclive"
    elif case == "decoded store":
        params = yaml.safe_load((cwd / "params.yaml").read_text())
        params["train"].update(freeze="none", image_source="decoded", precision="bf16")
        (cwd / "params.yaml").write_text(yaml.safe_dump(params))
        env["VITPIPE_CACHE_DIR"] = str(disk / "cache")
        cmd, named = _stage("train.py", *TRAIN_ARGS), "decoded"  # a memmap on a full disk: no SIGBUS
    else:
        cmd = _stage("split_check.py", str(tiny_data), "--index", str(disk / "index.json"), "--report", "d.json",
                     "--totals", "t.json")
        named = "index.json"
    proc = _on_tmpfs(disk, options, cmd, cwd, env)
    reason = "Read-only file system" if options == "ro" else "No space left on device"
    _assert_one_line(proc, "could not write", named, reason)


@mounts
def test_a_full_cache_costs_the_checkpoints_not_the_run(tmp_path, work):
    """The resumable checkpoint lives in the cache folder: a full one warns once and training goes on."""
    disk, cwd = tmp_path / "disk", tmp_path / "w"
    shutil.copytree(work, cwd)
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params["train"]["epochs"] = 3  # checkpoints after epochs 0 and 1
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "VITPIPE_CACHE_DIR": str(disk / "cache")}
    proc = _on_tmpfs(disk, "size=64k", _stage("train.py", *TRAIN_ARGS), cwd, env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    warned = [ln for ln in proc.stderr.splitlines() if "no checkpoints this run" in ln]
    assert len(warned) == 1 and "No space left on device" in warned[0] and "checkpoints" in warned[0]
    assert json.loads((cwd / "train.json").read_text())["epochs_run"] == 3
def test_a_read_only_cache_folder_warns_and_the_onnxruntime_feature_pass_goes_on(tmp_path, work):
    """train.feature_runtime: onnxruntime with the whole cache folder on a read-only tmpfs: the ONNX export
    and the features are computed for the run, with a warning each, and the model is written."""
    cwd = tmp_path / "w"
    shutil.copytree(work, cwd)
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params["train"].update(feature_runtime="onnxruntime", precision="int8")
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    cache = tmp_path / "cache"
    proc = _on_tmpfs(cache, "ro", _stage("train.py", *TRAIN_ARGS), cwd,
                     {**os.environ, "VITPIPE_CACHE_DIR": str(cache)})
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in text, text
    assert "cannot keep the ONNX backbone" in text and "Read-only file system" in text
    assert "features not cached, training goes on" in text
    assert (cwd / "models" / "model.safetensors").is_file()


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_outputs_get_the_users_umask_not_the_private_mode_of_a_temporary_file(tmp_path, work, tiny_data, mask):
    """Issue 22, case 11: data/raw and a download DEST were drwx------, the model and train.json
    -rw------- when a stage ran directly (mkstemp/mkdtemp make them private; the rename kept it)."""
    shutil.copytree(work, cwd := tmp_path / "w")
    env = {**os.environ, "VITPIPE_CACHE_DIR": str(tmp_path / "cache")}

    def with_umask() -> None:
        os.umask(mask)

    for cmd in ([sys.executable, "-m", "vitpipe.cli", "download", str(tiny_data), "raw"], _stage("train.py", *TRAIN_ARGS)):
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, preexec_fn=with_umask, env=env)
        assert proc.returncode == 0, proc.stderr
    folders = [cwd / "raw", cwd / "raw" / "train", cwd / "models", cwd / "dvclive"]
    files = [cwd / "models" / "model.safetensors", cwd / "train.json", cwd / "raw" / ".vitpipe-download",
             next((cwd / "raw" / "train").rglob("*.jpg"))]
    assert {str(p): oct(p.stat().st_mode & 0o777) for p in folders} == {str(p): oct(0o777 & ~mask) for p in folders}
    assert {str(p): oct(p.stat().st_mode & 0o777) for p in files} == {str(p): oct(0o666 & ~mask) for p in files}
