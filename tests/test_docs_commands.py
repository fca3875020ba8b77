"""The command sequences of README.md and every docs/*.md page, read from the markdown itself and run
in order, through DVC, on a fresh copy of the repository; after each page's flow, the `dvc exp show`
line the pages print is checked at 160 columns.

What is run: every ```bash block, line by line (a line ending in a backslash goes on). A block right
after ``<!-- docs-test: not run: REASON -->`` is skipped (the reason is required, and names the test
that covers it where one does). Other fences (output, python, layouts) are not commands.

What is changed, and only this (so an edited line in the docs is what runs):

- CHEAP: the copy's params.yaml runs timm's ``test_vit`` at 32 px with a 16-wide head and no
  DataLoader workers instead of DeiT-tiny at 224 px (a fine-tune takes seconds, not 18 minutes);
  every other param, the synthetic data included, is the committed default.
- SUBSTITUTE: ``make X`` runs the Makefile's own command for X without its install step (which
  would create a second .venv in the copy; the recipes are checked against the Makefile below),
  ``make test`` is this suite and is not run again, ``source .venv/bin/activate`` is what PATH
  already holds; placeholders (``/path/to/my-photos``, ``photo.jpg``, ``<name>``...) become real
  paths and names; ``origin/main`` is ``main`` (the copy has no remote).
- A user's waiting: after ``dvc queue start`` the test waits until the queue is done.
- ``VITPIPE_PROGRESS_SECONDS=0``: the output is captured (not a terminal), so the own-images run and
  the fine-tune log their passes' progress, a line per batch here; the test checks them (PROGRESS).

The README runs on a fresh clone of the copy (its results committed, its outputs gone, as a clone
of main has them); each docs page then starts from a clone after ``make repro`` (the commit reset,
outputs checked out, no experiment left of the page before).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO
from repo_copy import captured, copy_repo

pytestmark = pytest.mark.slow

NOT_RUN = re.compile(r"^<!-- docs-test: not run: (\S.*\S) -->$")
CHEAP = {"model": {"name": "test_vit", "img_size": 32, "head_hidden": 16}, "train": {"num_workers": 0}}
MAKE = {"make repro": "dvc repro", "make report": "vitpipe report --base main --out report.md",
        "make pr-report": "vitpipe pr-report --base main --out report.md"}
# in the Makefile: what each `make X` runs after its install step
MAKE_RECIPES = {"make repro": "$(BIN)/dvc repro", "make report": "$(BIN)/vitpipe report --base $(BASE) --out report.md",
                "make pr-report": "$(BIN)/vitpipe pr-report --base $(BASE) --out report.md"}
NOT_AGAIN = {"make test": "this suite", "source .venv/bin/activate": "PATH holds the suite's environment"}
HEADLINE = ("accuracy", "correct", "n_images", "best_val_accuracy")  # what the exp show line keeps
# Output captured, as in CI or `dvc queue logs`: each long pass logs its progress. VITPIPE_PROGRESS_SECONDS=0
# (a line per batch) stands for a pass longer than the 20 s interval, without waiting for one.
# Keyed by a pattern of the command (placeholders filled in): the own-images run scans the new photos; the
# pretrained run on the same photos finds them checked (download and split-check cached), then its passes.
PROGRESS = {r"^dvc exp run -S data\.source=\S+ -S data\.watch=\S+$": ("scanning raw", "train view 0", "valid view 0",
                                                                     "test view 0"),
            r"^dvc exp run -S data\.source=.* -S model\.weights=package:": ("train view 0", "valid view 0", "test view 0"),
            r"^dvc exp run --temp -S train\.freeze=none": ("epoch 0", "epoch 9", "test")}
DROPPED_PARAMS = {"data.watch": "always data.source's path (the download stage refuses any other)"}


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence
    commands: tuple[str, ...]
    not_run: str | None


def pages() -> list[str]:
    """README.md, then the docs pages in the order the README links them."""
    readme = (REPO / "README.md").read_text(encoding="utf-8").split("\n## Documentation\n", 1)[1]
    linked = list(dict.fromkeys(re.findall(r"\]\((docs/[\w-]+\.md)(?:#[\w-]*)?\)", readme)))
    return ["README.md", *linked]


def blocks(page: str) -> list[Block]:
    """The ```bash blocks of ``page``, each as its commands (continuations joined, comment lines out)."""
    lines = (REPO / page).read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() != "```bash":
            i += 1
            continue
        start, body = i, []
        i += 1
        while lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        previous = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
        marker = NOT_RUN.match(previous)
        commands, pending = [], ""
        for text in body:
            if pending:
                text = pending + " " + text.strip()
            if text.rstrip().endswith("\\"):
                pending = text.rstrip()[:-1].rstrip()
                continue
            pending = ""
            if text.strip() and not text.strip().startswith("#"):
                commands.append(text.strip())
        out.append(Block(page, start + 1, tuple(commands), marker.group(1) if marker else None))
        i += 1
    return out


def _sh(cmd: str, work: Path, env: dict[str, str], *, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = captured(["bash", "-c", cmd], work, env)  # files, not pipes: `dvc queue start`'s daemon keeps them
    if ok:
        assert done.returncode == 0, (f"`{cmd}` failed ({done.returncode}):\n"
                                      f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def _photos(root: Path) -> Path:
    """A folder of one's own photos as the README lays it out: my-photos/<class>/*.jpg (4 classes)."""
    from vitpipe.download.synthetic import generate
    from vitpipe.params import SyntheticParams

    drawn = root / "drawn"
    drawn.mkdir(parents=True)
    generate(drawn, SyntheticParams(classes=4, train_per_class=24, valid_per_class=0, test_per_class=0,
                                    image_size=64), seed=7)
    photos = root / "my-photos"
    shutil.move(str(drawn / "train"), photos)
    shutil.rmtree(drawn)
    return photos


class Flow:
    """The copy, its environment, the placeholders' values and what each page ran."""

    def __init__(self, tmp_path: Path, scratch: Path):
        def cheap(params: dict) -> None:
            for section, values in CHEAP.items():
                params[section].update(values)

        self.work, env = copy_repo(tmp_path, edit_params=cheap, env={"HOME": str(tmp_path / "home")})
        self.env = {**env, "COLUMNS": "160", "VITPIPE_PROGRESS_SECONDS": "0"}
        _sh("git branch -m main", self.work, self.env)
        self.scratch = scratch  # short paths: a data.source is a column of `dvc exp show`
        self.values = {"/path/to/my-photos": str(_photos(scratch)), "/srv/dvc-store": str(scratch / "dvc-store"),
                       "origin/main": "main"}
        self.ran: dict[str, list[str]] = {}
        self.progress_seen: set[str] = set()

    def baseline(self) -> None:
        """The copy's results committed, as main holds them."""
        _sh("dvc repro", self.work, self.env)
        _sh("git add -A && git commit -qm results", self.work, self.env)
        self.base = _sh("git rev-parse HEAD", self.work, self.env).stdout.strip()

    def fresh_clone(self, *, repro: bool) -> None:
        """The baseline commit with no outputs and no experiments; then what `make repro` leaves, if
        ``repro`` (its outputs, from DVC's cache: the run-cache would restore each stage alike)."""
        _sh("dvc queue remove --all; dvc exp remove -A", self.work, self.env, ok=False)
        _sh(f"git reset -q --hard {self.base} && git clean -fdxq -e /.dvc/", self.work, self.env)
        if repro:
            _sh("dvc checkout dvc.yaml", self.work, self.env)  # export/dvc.yaml: not run on main
            assert "up to date" in _sh("dvc status dvc.yaml", self.work, self.env).stdout

    def substitute(self, cmd: str) -> str | None:
        """The command as run here (None: not run again)."""
        for written, why in NOT_AGAIN.items():
            if cmd.split("#")[0].strip() == written:
                return None
        for written, instead in MAKE.items():
            if re.match(rf"{re.escape(written)}(\s|$)", cmd):
                cmd = instead + cmd[len(written):]
        if "photo.jpg" in cmd or "more-photos/" in cmd:
            self._predict_inputs()
        if "<name>" in cmd:
            self.values["<name>"] = self._queued_name()
        for placeholder, value in self.values.items():
            cmd = cmd.replace(placeholder, shlex.quote(value) if " " in value else value)
        return cmd

    def _predict_inputs(self) -> None:
        test = sorted((self.work / "data" / "raw" / "test").glob("*/*.jpg"))
        folder = self.scratch / "more-photos"
        if not folder.exists():
            folder.mkdir()
            for image in test[:3]:
                shutil.copy2(image, folder / image.name)
            shutil.copy2(test[-1], self.scratch / "photo.jpg")
        self.values |= {"photo.jpg": str(self.scratch / "photo.jpg"), "more-photos/": f"{folder}/"}

    def _queued_name(self) -> str:
        names = re.findall(r"^[0-9a-f]{7,}\s+(\S+)\s", _sh("dvc queue status", self.work, self.env).stdout, re.M)
        assert names, "no queued experiment to name"
        return names[0]

    def run_page(self, page: str) -> None:
        ran = self.ran.setdefault(page, [])
        for block in blocks(page):
            if block.not_run:
                continue
            for written in block.commands:
                cmd = self.substitute(written)
                if cmd is None:
                    continue
                started = time.monotonic()
                done = _sh(cmd, self.work, self.env)
                ran.append(f"{time.monotonic() - started:6.1f} s  {cmd}")
                for pattern, passes in PROGRESS.items():
                    if re.search(pattern, cmd):
                        self.progress_seen.add(pattern)
                        _assert_progress(done.stdout + done.stderr, passes, cmd)
                if re.search(r"\bdvc queue start\b", cmd):
                    self._wait_for_the_queue()

    def _wait_for_the_queue(self) -> None:
        deadline = time.monotonic() + 900
        while re.search(r"\b(Queued|Running)\b", _sh("dvc queue status", self.work, self.env).stdout):
            assert time.monotonic() < deadline, _sh("dvc queue status", self.work, self.env).stdout
            time.sleep(3)
        failed = _sh("dvc queue status", self.work, self.env).stdout
        assert "Failed" not in failed, failed


def _assert_progress(output: str, passes: tuple[str, ...], cmd: str) -> None:
    """Each pass logged `desc: done/total images (pct), rate, time left`, counting up to its total."""
    for desc in passes:
        counts = re.findall(rf"INFO vitpipe\.progress: {re.escape(desc)}: ([\d,]+)/([\d,]+) (?:images|files) "
                            rf"\(\d+%\), [\d.,]+ (?:images|files)/s, .+ left", output)
        done = [int(n.replace(",", "")) for n, _ in counts]
        assert done and done == sorted(done) and done[-1] == int(counts[-1][1].replace(",", "")), (
            f"`{cmd}`: no progress lines for {desc!r}:\n{output[-3000:]}")


def exp_show_line() -> str:
    """The one `dvc exp show` line the pages print (each page prints the same)."""
    found = {cmd for page in pages() for block in blocks(page) for cmd in block.commands
             if cmd.startswith("dvc exp show")}
    assert len(found) == 1, f"the pages print different `dvc exp show` lines: {found}"
    return found.pop()


def _rows(flow: Flow) -> list[dict]:
    """Every row `dvc exp show --json` has: name, params (flattened), headline metrics."""
    rows = []
    for commit in json.loads(_sh("dvc exp show --json", flow.work, flow.env).stdout):
        entries = [("workspace" if commit["rev"] == "workspace" else commit.get("name") or commit["rev"][:7],
                    commit["data"])]
        entries += [(exp["name"] or exp["revs"][0]["rev"][:7], exp["revs"][0]["data"])
                    for exp in commit.get("experiments") or []]
        for name, data in entries:
            if data is None or not data.get("params"):
                continue
            params = {}

            def flatten(prefix: str, value: object) -> None:
                if isinstance(value, dict) and value:
                    for key, inner in value.items():
                        flatten(f"{prefix}.{key}" if prefix else key, inner)
                else:
                    params[prefix] = value

            flatten("", data["params"]["params.yaml"]["data"])
            metrics = {k: v for file in data["metrics"].values() for k, v in file["data"].items()}
            rows.append({"name": name, "params": params, "metrics": metrics})
    return rows


def check_exp_show(flow: Flow, page: str) -> str:
    """At 160 columns: nothing cut, the headline columns, every param that differs between the rows."""
    table = _sh(exp_show_line(), flow.work, flow.env).stdout
    lines = [line for line in table.splitlines() if line.strip()]
    assert "…" not in table and all(len(line) <= 160 for line in lines), f"{page}:\n{table}"
    header = next(line for line in lines if "Experiment" in line).split()
    rows = _rows(flow)
    differing = {key for key in set().union(*(r["params"] for r in rows))
                 if len({json.dumps(r["params"].get(key)) for r in rows}) > 1}
    assert set(HEADLINE) <= set(header), f"{page}: {header}"
    assert differing - set(DROPPED_PARAMS) <= set(header), f"{page}: {differing} not all in\n{table}"
    body = [line for line in lines if not line.strip().startswith("─") and "Experiment" not in line]
    for row in rows:  # each row's test accuracy and its count, in full
        if "accuracy" not in row["metrics"]:
            continue
        line = next((ln for ln in body if row["name"] in ln.split()), None)
        if line is None and row["name"] != "workspace":
            line = next((ln for ln in body if f"[{row['name']}]" in ln), None)
        assert line is not None, f"{page}: row {row['name']} not in\n{table}"
        assert str(row["metrics"]["correct"]) in line.split() and str(row["metrics"]["n_images"]) in line.split()
    return table


def test_every_bash_block_is_run_or_says_why_not_and_every_page_is_linked():
    docs = sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))
    assert sorted(pages()[1:]) == docs, "every docs page is linked from the README, once"
    for page in pages():
        text = (REPO / page).read_text(encoding="utf-8")
        markers = re.findall(r"<!-- docs-test:.*-->", text)
        assert all(NOT_RUN.match(m) for m in markers), f"{page}: a docs-test marker without a reason: {markers}"
        assert len(markers) == sum(1 for b in blocks(page) if b.not_run), f"{page}: a marker not above a bash block"
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^BASE\s*\?=\s*main$", makefile, re.M)
    for recipe in MAKE_RECIPES.values():
        assert f"\t{recipe}\n" in makefile, f"the Makefile no longer runs {recipe!r}: update MAKE"
    assert exp_show_line().startswith("dvc exp show --only-changed")


def _only_the_fine_tune_is_one(rows: list[dict]) -> None:
    """Issue 21: the fine-tune applied itself to the workspace, so the sweeps after it queued full
    fine-tunes; run with --temp, it is the one row with train.freeze: none."""
    tuned = [row["name"] for row in rows if row["params"].get("train.freeze") == "none"]
    assert len(tuned) == 1 and tuned[0] != "workspace", tuned


AFTER = {"docs/experiments.md": _only_the_fine_tune_is_one}  # what a page's prose says of its rows


@pytest.mark.timeout(3600)
def test_the_readme_and_every_docs_page_run_in_order(tmp_path):
    # /tmp/vXXXXXXXX/my-photos: 24 characters, the widest data.source the pages promise 160 columns for
    scratch = Path(tempfile.mkdtemp(prefix="v", dir="/tmp"))
    flow = Flow(tmp_path, scratch)
    tables = {}
    try:
        flow.baseline()
        for page in pages():
            if not any(b.commands and not b.not_run for b in blocks(page)):
                continue
            flow.fresh_clone(repro=page != "README.md")
            flow.run_page(page)
            tables[page] = check_exp_show(flow, page)
            if page in AFTER:
                AFTER[page](_rows(flow))
    finally:
        _sh("dvc queue stop --kill", flow.work, flow.env, ok=False)
        shutil.rmtree(scratch, ignore_errors=True)
        for page, ran in flow.ran.items():
            print(f"\n{page}:\n" + "\n".join(ran) + "\n" + tables.get(page, ""))  # noqa: T201
    assert {"README.md", "docs/experiments.md", "docs/reports.md", "docs/export.md"} <= set(tables)
    assert flow.progress_seen == set(PROGRESS)  # the commands whose progress is checked are in the docs
