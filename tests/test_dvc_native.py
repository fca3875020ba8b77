"""DVC's own commands on vitpipe's pipeline: the model artifact, what `dvc repro` deletes before a
stage runs and how `dvc checkout` brings it back, and a queued grid run by two workers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from dvc.repo import Repo
from repo_copy import copy_repo

DVC = str(Path(sys.executable).with_name("dvc"))


def test_the_model_is_a_dvc_artifact_of_type_model():
    artifacts = Repo(str(REPO)).artifacts.read()["dvc.yaml"]
    model = artifacts["vit-classifier"]
    assert model.type == "model" and model.desc and model.labels
    train_outs = [next(iter(o)) if isinstance(o, dict) else o
                  for o in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["outs"]]
    assert model.path in train_outs  # the file the train stage writes


def _run(work: Path, env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), cwd=work, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture()
def tiny_repo(tmp_path) -> tuple[Path, dict[str, str]]:
    """The project's files in a fresh git repo, without outputs, with tiny params: 3 synthetic classes
    of 8/4/4 images at 48 px and timm's test_vit at 32 px (a whole `dvc repro` takes seconds)."""
    def tiny(params: dict) -> None:
        params["data"]["synthetic"].update(classes=3, train_per_class=8, valid_per_class=4, test_per_class=4,
                                           image_size=48)
        params["model"].update(name="test_vit", img_size=32, head_hidden=16)
        params["train"].update(epochs=2, batch_size=8, val_batch_size=8, num_workers=0)

    work, env = copy_repo(tmp_path, edit_params=tiny, env={"HOME": str(tmp_path / "home")})
    env.pop("VITPIPE_CACHE_DIR", None)  # each test says where the feature cache goes
    return work, env


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_failed_download_under_dvc_repro_loses_data_raw_and_dvc_checkout_restores_it(tiny_repo, tmp_path):
    work, env = tiny_repo
    env = {**env, "VITPIPE_CACHE_DIR": str(tmp_path / "cache")}
    _run(work, env, DVC, "repro")
    raw = _tree(work / "data" / "raw")
    assert raw

    # The model is a DVC artifact others can get: a version is a git tag `vit-classifier@vX.Y.Z`.
    _run(work, env, "git", "add", "-A")
    _run(work, env, "git", "commit", "-qm", "results")
    _run(work, env, "git", "tag", "-a", "vit-classifier@v0.1.0", "-m", "first model")
    _run(work, env, DVC, "artifacts", "get", str(work), "vit-classifier", "-o", str(tmp_path / "got.safetensors"))
    assert (tmp_path / "got.safetensors").read_bytes() == (work / "models" / "model.safetensors").read_bytes()

    # DVC deletes a stage's outputs before running it: a download that fails leaves no data/raw.
    text = (work / "params.yaml").read_text()
    (work / "params.yaml").write_text(text.replace("source: synthetic", f"source: {tmp_path / 'no-such-folder'}"))
    failed = _run(work, env, DVC, "repro", ok=False)
    assert failed.returncode != 0 and "Traceback" not in failed.stdout + failed.stderr
    assert "data.source" in failed.stdout + failed.stderr
    assert not (work / "data" / "raw").exists()

    # `dvc checkout data/raw` restores the version dvc.lock records, from DVC's cache.
    _run(work, env, DVC, "checkout", "data/raw")
    assert _tree(work / "data" / "raw") == raw


def _queue_done(work: Path, env: dict[str, str]) -> bool:
    status = _run(work, env, DVC, "queue", "status").stdout
    return not re.search(r"\b(Queued|Running)\b", status)


@pytest.mark.slow
def test_a_queued_grid_runs_on_two_workers_that_inherit_the_feature_cache_dir(tiny_repo, tmp_path):
    work, env = tiny_repo
    queued = _run(work, env, DVC, "exp", "run", "--queue", "-S", "train.lr=1e-3,5e-4")
    assert queued.stdout.count("Queued experiment") == 2  # a grid: one experiment per value

    cache = tmp_path / "shared-cache"
    try:  # the workers run with the environment of `dvc queue start`, not of `dvc exp run --queue`
        _run(work, {**env, "VITPIPE_CACHE_DIR": str(cache)}, DVC, "queue", "start", "-j", "2")
        deadline = time.monotonic() + 900
        while not _queue_done(work, env):
            assert time.monotonic() < deadline, _run(work, env, DVC, "queue", "status").stdout
            time.sleep(3)
    finally:
        _run(work, env, DVC, "queue", "stop", "--kill", ok=False)

    shown = json.loads(_run(work, env, DVC, "exp", "show", "--json").stdout)
    results = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            data = exp["revs"][0]["data"]
            lr = data["params"]["params.yaml"]["data"]["train"]["lr"]
            results[lr] = (exp["name"], data["metrics"]["metrics/test.json"]["data"]["n_images"])
    assert sorted(results) == [0.0005, 0.001]
    assert all(n_images == 12 for _, n_images in results.values())  # both scored every test image

    assert list(cache.rglob("features.sqlite")), "the workers did not use VITPIPE_CACHE_DIR"
    assert not (tmp_path / "home" / ".cache" / "vitpipe").exists()  # nor the default cache
    logs = "".join(_run(work, env, DVC, "queue", "logs", name).stdout for name, _ in results.values())
    passes = re.findall(r"(\w+) view 0: (\d+) features, (\d+) from the cache, (\d+) computed", logs)
    print(f"feature passes of the 2 experiments (split, images, cached, computed): {passes}")  # noqa: T201
    assert sorted(split for split, *_ in passes) == ["test", "test", "train", "train", "valid", "valid"]
    # Computed once and shared: the two experiments together compute each image's features once
    # (a worker that finds the other computing the same features waits for them, then reads them).
    images = {"train": 3 * 8, "valid": 3 * 4, "test": 3 * 4}
    for split, n in images.items():
        assert sum(int(computed) for s, _, _, computed in passes if s == split) == n, passes
