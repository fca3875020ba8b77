"""``vitpipe pr-report``: the report from what a commit holds, run in a clone without DVC data, as CI is.

A toy two-stage DVC pipeline (train writes a cached ``model.txt``, evaluate writes vitpipe's metrics
files from it) is committed in states a pull request can be in: fresh, params changed without
``dvc repro``, one stage rerun alone, metrics edited by hand. Each is checked out in a clone that has
no DVC cache, so ``model.txt`` is missing there, as in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from vitpipe.cli import main
from vitpipe.errors import VitpipeError
from vitpipe.report.ci import (
    check_freshness,
    freshness_markdown,
    pr_report,
    read_lock,
    upstream_mismatches,
    with_downstream,
)

DVC = str(Path(sys.executable).with_name("dvc"))
TRAIN = """import yaml
lr = yaml.safe_load(open("params.yaml"))["train"]["lr"]
open("model.txt", "w").write(f"lr={lr}{SUFFIX}")
"""
EVALUATE = """import csv, json, os
right = 6 if "0.01" in open("model.txt").read() else 3  # of 8 images, 4 per class
rows = [(f"test/{c}/{i}.jpg", c, c if 4 * k + i < right else "OTHER", 0.9) for k, c in enumerate("AB") for i in range(4)]
os.makedirs("metrics", exist_ok=True)
with open("metrics/predictions.csv", "w", newline="") as f:
    csv.writer(f).writerows([("path", "actual", "predicted", "confidence"), *rows])
with open("metrics/per_class.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(("class", "accuracy", "precision", "recall", "f1", "correct", "support"))
    for c in "AB":
        ok = sum(1 for _, a, p, _ in rows if a == c and p == c)
        w.writerow((c, ok / 4, 1.0, ok / 4, 0.5, ok, 4))
json.dump({"accuracy": right / 8, "correct": right}, open("metrics/test.json", "w"))
"""
NO_TORCH = """import sys
class Absent:  # as if they were not installed: importing them raises ImportError
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm", "kagglehub"):
            raise ImportError(f"{name} is not installed")
sys.meta_path.insert(0, Absent())
from vitpipe.cli import main
sys.exit(main(sys.argv[1:]))
"""
DVC_YAML = """stages:
  train:
    cmd: python train.py
    deps: [train.py]
    params: [train.lr]
    outs: [model.txt]
  evaluate:
    cmd: python evaluate.py
    deps: [evaluate.py, model.txt]
    metrics:
      - metrics/test.json:
          cache: false
    outs:
      - metrics/per_class.csv:
          cache: false
      - metrics/predictions.csv:
          cache: false
"""


def _run(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def _commit(repo: Path, tag: str) -> None:
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", tag)
    _run(repo, "git", "tag", tag)


def _set(repo: Path, *, lr: str | None = None, suffix: str | None = None) -> None:
    if lr is not None:
        (repo / "params.yaml").write_text(f"train:\n  lr: {lr}\n")
    if suffix is not None:
        (repo / "train.py").write_text(TRAIN.replace("{SUFFIX}", suffix))


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """Tags: base (fresh, lr 0.001), stale (lr 0.01 committed without repro), fresh (reproduced),
    half (train.py changed and only `dvc repro train` run), edited (metrics/test.json edited by hand);
    checked out in a clone with no DVC cache. The origin's cache is pushed to a local remote at ``fresh``."""
    origin = tmp_path_factory.mktemp("origin")
    _run(origin, "git", "init", "-q", "-b", "main")
    _run(origin, DVC, "init", "-q")
    (origin / "dvc.yaml").write_text(DVC_YAML)
    (origin / "evaluate.py").write_text(EVALUATE)
    _set(origin, lr="0.001", suffix="")
    _run(origin, DVC, "repro", "-q")
    _commit(origin, "base")
    _set(origin, lr="0.01")
    _commit(origin, "stale")
    _run(origin, DVC, "repro", "-q")
    _commit(origin, "fresh")
    remote = tmp_path_factory.mktemp("remote")
    _run(origin, DVC, "remote", "add", "--local", "store", str(remote))
    _run(origin, DVC, "push", "-q", "-r", "store")
    _set(origin, suffix=" v2")
    _run(origin, DVC, "repro", "-q", "train")
    _commit(origin, "half")
    _run(origin, DVC, "repro", "-q")
    (origin / "metrics" / "test.json").write_text('{"accuracy": 1.0, "correct": 8}')
    _commit(origin, "edited")
    clone = tmp_path_factory.mktemp("ci") / "checkout"
    _run(origin, "git", "clone", "-q", str(origin), str(clone))
    (clone / "remote-path").write_text(str(remote))  # untracked: where the pushed cache is
    return clone


def _report(clone: Path, tag: str, tmp_path: Path, **kwargs) -> str:
    _run(clone, "git", "checkout", "-q", "--force", tag)
    pr_report("base", tmp_path / "report.md", repo=clone, **kwargs)
    return (tmp_path / "report.md").read_text()


def test_a_fresh_commit_is_reported_as_fresh_without_pytorch(clone, tmp_path):
    """As CI's default job: `make install-report` leaves torch, torchvision, timm and kagglehub out."""
    _run(clone, "git", "checkout", "-q", "--force", "fresh")
    assert not (clone / "model.txt").exists()  # CI has no DVC data
    _run(clone, sys.executable, "-c", NO_TORCH, "pr-report", "--base", "base", "--out", str(tmp_path / "r.md"))
    text = (tmp_path / "r.md").read_text()
    assert "**Results are fresh**" in text and "STALE" not in text
    assert re.search(r"\| metrics/test.json\s*\| accuracy\s*\| 0\.375\s*\| 0\.75\s*\| 0\.375", text)
    assert "3 fixed, 0 broken; exact McNemar test p = 0.25." in text  # 2 * 0.5**3
    assert not (clone / "model.txt").exists()  # nothing was trained or pulled


def test_params_committed_without_repro_are_stale_and_say_why(clone, tmp_path):
    text = _report(clone, "stale", tmp_path)
    assert "**The committed results are STALE**" in text
    assert "> - `train`: params.yaml: train.lr modified" in text
    assert "> - `evaluate`: runs after `train`" in text
    assert "Stale files: `metrics/per_class.csv`, `metrics/predictions.csv`, `metrics/test.json`." in text
    assert "Run `dvc repro` (or `dvc exp run`), then commit `dvc.lock` and `metrics/`." in text


def test_a_stage_rerun_alone_leaves_the_next_one_stale_even_without_the_data(clone, tmp_path):
    _run(clone, "git", "checkout", "-q", "--force", "half")
    check = check_freshness(clone)
    assert list(check.stale) == ["evaluate"]  # train was rerun, evaluate still used the old model.txt
    assert check.stale["evaluate"] == ["input model.txt is not the version `train` recorded (rerun `evaluate`)"]


def test_metrics_edited_by_hand_are_stale(clone, tmp_path):
    _run(clone, "git", "checkout", "-q", "--force", "edited")
    check = check_freshness(clone)
    assert check.stale == {"evaluate": ["output metrics/test.json modified"]}


def test_with_a_remote_it_says_whether_the_outputs_are_there(clone):
    remote = (clone / "remote-path").read_text()
    _run(clone, DVC, "remote", "add", "--local", "-d", "-f", "store", remote)
    try:
        _run(clone, "git", "checkout", "-q", "--force", "fresh")
        check = check_freshness(clone)
        assert (check.remote, check.not_in_remote, check.remote_error) == ("store", [], None)
        assert "Every output of this commit is in the DVC remote `store`" in "\n".join(
            freshness_markdown(check, retrained=False))
        _run(clone, "git", "checkout", "-q", "--force", "half")  # never pushed
        check = check_freshness(clone)
        assert check.not_in_remote == ["model.txt"]
        assert "Not in the DVC remote `store` (reviewers cannot `dvc pull` them; run `dvc push`): `model.txt`." \
            in "\n".join(freshness_markdown(check, retrained=False))
    finally:
        _run(clone, DVC, "remote", "remove", "--local", "store")


def test_retraining_is_opt_in_and_said(clone, tmp_path):
    text = _report(clone, "stale", tmp_path, retrain=True)
    assert "**The committed results are STALE**" in text  # about the commit
    assert "**Reproduced in this CI run**" in text
    assert json.loads((clone / "metrics" / "test.json").read_text())["accuracy"] == 0.75  # reproduced
    assert check_freshness(clone).fresh
    _run(clone, "git", "checkout", "-q", "--force", "fresh")


def test_the_workflow_reports_without_training_unless_the_retrain_label_is_set():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "pr-report.yml").read_text())
    steps = workflow["jobs"]["report"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "if [ \"$RETRAIN\" = true ]; then make install; else make install-report; fi" in runs
    assert "vitpipe pr-report --base \"$BASE\" --out report.md $([ \"$RETRAIN\" = true ] && echo --retrain)" in runs
    assert "make repro" not in runs and "dvc repro" not in runs
    assert workflow["jobs"]["report"]["env"]["RETRAIN"] == \
        "${{ contains(github.event.pull_request.labels.*.name, 'retrain') }}"
    assert "labeled" in workflow[True]["pull_request"]["types"]  # YAML reads the key `on` as True


@pytest.mark.parametrize("text", ["stages: [1, 2", "- a list\n", "stages: {train: 3}\n"])
def test_a_damaged_dvc_lock_is_one_line_naming_the_fix(tmp_path, text):
    (tmp_path / "dvc.lock").write_text(text)
    with pytest.raises(VitpipeError, match=r"dvc.lock: .*; restore it with `git checkout dvc.lock`") as err:
        read_lock(tmp_path)
    assert "\n" not in str(err.value)
    assert read_lock(tmp_path / "nowhere") == {}


def test_lock_helpers():
    lock = {"a": {"outs": [{"path": "data", "md5": "1"}]},
            "b": {"deps": [{"path": "data/x.csv", "md5": "9"}], "outs": [{"path": "m.txt", "md5": "2"}]},
            "c": {"deps": [{"path": "m.txt", "md5": "3"}]}}
    assert upstream_mismatches(lock) == {"c": ["input m.txt is not the version `b` recorded (rerun `c`)"]}
    assert with_downstream(lock, {"a": ["changed command"]}) == {
        "a": ["changed command"], "b": ["runs after `a`"], "c": ["runs after `b`"]}


def test_a_wrong_base_is_one_line_before_any_work(clone, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(clone)
    assert main(["pr-report", "--base", "nope", "--out", str(tmp_path / "r.md")]) == 2
    assert "--base nope: unknown git revision" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()


def test_make_pr_report_installs_once_until_pyproject_changes(tmp_path):
    """`make pr-report` ran pip twice on every call; `install-report` now has a stamp like `install`'s.
    A stand-in python records what make runs (no pip, no network)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(REPO / name, tmp_path / name)
    calls = tmp_path / "calls.log"
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "MAKEFLAGS": ""}

    def install() -> list[str]:
        before = calls.read_text().splitlines() if calls.exists() else []
        done = subprocess.run(["make", "-s", "install-report"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return [line for line in calls.read_text().splitlines()[len(before):] if "pip install" in line]

    assert len(install()) == 2  # the pinned requirements, then vitpipe without its dependencies
    assert install() == []  # the second call installs nothing
    stamp = tmp_path / ".venv" / ".installed-report"
    os.utime(tmp_path / "pyproject.toml", (stamp.stat().st_mtime + 10,) * 2)
    assert len(install()) == 2  # pyproject.toml changed: installs again
