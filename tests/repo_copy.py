"""A temporary copy of the repository to drive vitpipe through DVC itself (`dvc repro`, `dvc exp run`, ...).

Shared by the end-to-end tests; the `repo_copy` fixture in conftest.py gives the plain copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def captured(args: list[str], cwd: Path, env: dict[str, str], *, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(args)`` with its stdout and stderr captured in files, not pipes: `dvc queue start`
    daemonizes its workers through a process that inherits the command's stdout and stderr and waits for its
    worker, so a pipe would not reach EOF until the worker exits (seen: a test hung 15 min on it)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.run(args, cwd=cwd, env=env, stdout=out, stderr=err, timeout=timeout)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, proc.returncode, out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))


def run(args: list[str], cwd: Path, env: dict[str, str], *, timeout: float = 900) -> str:
    """Runs ``args`` in ``cwd``; fails the test with its output unless it exits 0. Returns stdout + stderr."""
    proc = captured(args, cwd, env, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def stages_run(output: str) -> list[str]:
    """The stages DVC ran, in order, from its output."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def copy_repo(tmp_path: Path, *, edit_params: Callable[[dict], None] | None = None,
              env: dict[str, str] | None = None, pin_cpu: bool = True) -> tuple[Path, dict[str, str]]:
    """The project's files (tracked and new, not ignored) in a fresh git repo at ``tmp_path/repo``,
    without any outputs, committed; ``train.device: cpu`` in its params.yaml (the bytes of a CPU run, on any
    host) unless ``pin_cpu`` is false (params.yaml as committed: hide the GPU with ``CUDA_VISIBLE_DEVICES``),
    which ``edit_params`` may change further.

    Returns the folder and the environment to run DVC in: the venv's ``dvc`` first on PATH, the
    feature cache in ``tmp_path/feature-cache`` (``env`` adds or replaces variables).
    """
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    work = tmp_path / "repo"
    for name in filter(None, files):
        output = name.startswith(("metrics/", "dvclive/", "dvc.lock")) and not name.endswith("/.gitignore")
        if (REPO / name).is_file() and not output:
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, work / name)
    # deterministic bytes, also on a CUDA host (where auto is the GPU); the file's comments kept
    text = (work / "params.yaml").read_text()
    if pin_cpu:
        text, pinned = re.subn(r"(?m)^(  device: *)auto\b", r"\1cpu ", text, count=1)
        assert pinned == 1, "params.yaml has no `  device: auto` line to pin"
        (work / "params.yaml").write_text(text)
    if edit_params is not None:
        params = yaml.safe_load(text)
        edit_params(params)
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    full_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "VITPIPE_CACHE_DIR": str(tmp_path / "feature-cache"), "DVC_NO_ANALYTICS": "1", **(env or {})}
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                ["git", "config", "user.name", "ci"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        run(cmd, work, full_env)
    return work, full_env


def run_queue(work: Path, env: dict[str, str], *start_args: str, start_env: dict[str, str] | None = None,
              timeout: float = 900) -> str:
    """`dvc queue start START_ARGS` (its workers get ``start_env``, default ``env``), waits until no experiment
    is queued or running, then stops the workers. Returns `dvc queue status`."""
    def status() -> str:
        return run([str(Path(sys.executable).with_name("dvc")), "queue", "status"], work, env)

    try:
        run([str(Path(sys.executable).with_name("dvc")), "queue", "start", *start_args], work, start_env or env)
        deadline = time.monotonic() + timeout
        while re.search(r"\b(Queued|Running)\b", shown := status()):
            assert time.monotonic() < deadline, shown
            time.sleep(2)
    finally:
        subprocess.run([str(Path(sys.executable).with_name("dvc")), "queue", "stop", "--kill"], cwd=work, env=env,
                       capture_output=True, timeout=120)
    return status()
