"""Every `dvc exp run -S` line vitpipe prints, and the README's, works as printed: run through DVC in a copy
of the repository (issue 22, case 10).

Before: vitpipe's params errors suggested `-S data.class_aliases=...` (for a mapping DVC merges into the
one in params.yaml, or fails on a new key), the README's `-S '~data.class_aliases'` failed ("Parameters
'data.class_aliases' are missing"), and the data.watch hint broke on a path with a space."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from repo_copy import REPO, copy_repo

DVC = str(Path(sys.executable).with_name("dvc"))
LAYOUT = {"train": {"ADONIS": 4, "POLYGONIA": 4}, "valid": {"ADONIS": 2, "QUESTION MARK": 2},
          "test": {"ADONIS": 2, "QUESTION MARK": 2}}


def _photos(root: Path) -> Path:
    seed = 0
    for split, classes in LAYOUT.items():
        for name, n in classes.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                seed += 1
                rgb = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
                Image.fromarray(rgb).save(root / split / name / f"{i}.png")
    return root


def _exp_run(work: Path, env: dict[str, str], line: str) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(line)
    assert argv[:3] == ["dvc", "exp", "run"], line
    return subprocess.run([DVC, *argv[1:]], cwd=work, env=env, capture_output=True, text=True, timeout=900)


def _printed(proc: subprocess.CompletedProcess[str], start: str) -> str:
    """The first `dvc exp run ...` line in backticks that starts with ``start`` in the run's output."""
    found = re.search(rf"`({re.escape(start)}[^`]*)`", proc.stdout + proc.stderr)
    assert found, proc.stdout + proc.stderr
    return found.group(1)


@pytest.mark.slow
def test_every_printed_set_param_line_and_the_readmes_work_through_dvc_exp_run(tmp_path):
    photos = _photos(tmp_path / "my photos")  # a space: the data.watch line must quote it

    def tiny(params: dict) -> None:
        params["data"].update(source=str(photos), watch=str(photos))
        params["model"].update(name="test_vit", img_size=32, head_hidden=16)
        params["train"].update(epochs=1, batch_size=8, val_batch_size=8, num_workers=0)

    work, env = copy_repo(tmp_path, edit_params=tiny, env={"HOME": str(tmp_path / "home")})
    base = yaml.safe_load((work / "params.yaml").read_text())

    def params_with(**data: object) -> None:
        (work / "params.yaml").write_text(yaml.safe_dump({**base, "data": {**base["data"], **data}}, sort_keys=False))

    def data_params() -> dict:
        return yaml.safe_load((work / "params.yaml").read_text())["data"]

    # the split-check's refusal prints two lines: an alias (the user fills in the class) or a drop
    refused = _exp_run(work, env, "dvc exp run")
    assert refused.returncode != 0 and "refused" in refused.stderr
    alias, drop = _printed(refused, "dvc exp run -S '++data.class_aliases="), _printed(refused, "dvc exp run -S 'data.drop")
    assert alias == "dvc exp run -S '++data.class_aliases={QUESTION MARK: TRAIN_CLASS}'"
    assert _exp_run(work, env, drop).returncode == 0 and data_params()["drop_classes"] == ["QUESTION MARK"]
    params_with()
    done = _exp_run(work, env, alias.replace("TRAIN_CLASS", "POLYGONIA"))
    assert done.returncode == 0, done.stderr
    assert data_params()["class_aliases"] == {"QUESTION MARK": "POLYGONIA"}

    # the README's line that removes every alias (`-S '~data.class_aliases'` alone: "are missing")
    readme = (REPO / "docs" / "data.md").read_text(encoding="utf-8")  # moved from the README (issue 21)
    removal = re.search(r"`(-S '~data\.class_aliases'[^`]*)` removes them all", readme)
    assert removal, "docs/data.md: the line that removes every alias"
    removed = _exp_run(work, env, f"dvc exp run {removal.group(1)}")
    assert data_params()["class_aliases"] == {} and "are missing" not in removed.stderr
    assert removed.returncode != 0 and "class not in train/" in removed.stderr  # the dataset needs it: refused

    # a params error on the mapping: the printed line replaces the whole mapping (a plain `-S` merges)
    params_with(class_aliases={"QUESTION MARK": "POLYGONIA", "POLYGONIA": "ADONIS"})
    refused = _exp_run(work, env, "dvc exp run")
    line = _printed(refused, "dvc exp run -S '~data.class_aliases'")
    done = _exp_run(work, env, line.replace("{FOLDER: CLASS, ...}", "{QUESTION MARK: POLYGONIA}"))
    assert done.returncode == 0, done.stderr
    assert data_params()["class_aliases"] == {"QUESTION MARK": "POLYGONIA"}

    # an alias naming no folder: the printed removal line
    params_with(class_aliases={"QUESTION MARK": "POLYGONIA", "QUESTON": "POLYGONIA"})
    line = _printed(_exp_run(work, env, "dvc exp run"), "dvc exp run -S '~data.class_aliases.")
    assert _exp_run(work, env, line).returncode == 0 and data_params()["class_aliases"] == {"QUESTION MARK": "POLYGONIA"}

    # data.watch not the local source's path (here with a space in it): the printed line sets both
    params_with(class_aliases={"QUESTION MARK": "POLYGONIA"}, watch="stages")
    line = _printed(_exp_run(work, env, "dvc exp run"), "dvc exp run -S ")
    assert "my photos" in line
    done = _exp_run(work, env, line)
    assert done.returncode == 0, done.stderr
    assert data_params()["watch"] == data_params()["source"] == str(photos)
