"""``vitpipe report``: dvc diffs, class tables and PNG plots, from a throw-away git + DVC repository."""

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from vitpipe.cli import main
from vitpipe.errors import VitpipeError
from vitpipe.report.report import (
    accuracy_changes,
    confused_pairs,
    md_table,
    write_report,
)

DVC = str(Path(sys.executable).with_name("dvc"))
CLASSES = ("MONARCH", "PAPER KITE", "RED ADMIRAL")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
                   cwd=repo, check=True, capture_output=True)


def _write_live(folder: Path, series: dict[str, list[float]]) -> None:
    """DVCLive's per-epoch files, as ``Live.log_metric`` writes them (step, then the metric's last name)."""
    for name, values in series.items():
        path = folder / "plots" / "metrics" / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        leaf = name.rsplit("/", 1)[-1]
        path.write_text(f"step\t{leaf}\n" + "".join(f"{i}\t{v}\n" for i, v in enumerate(values)))


def _write_metrics(repo: Path, correct: dict[str, int], confusions: dict[str, str], lr: float) -> None:
    """4 test images per class: ``correct[c]`` right, the rest predicted as ``confusions[c]``."""
    metrics = repo / "metrics"
    metrics.mkdir(exist_ok=True)
    rows, preds = [], []
    for name in CLASSES:
        rows.append({"class": name, "accuracy": correct[name] / 4, "precision": 0.5, "recall": correct[name] / 4,
                     "f1": 0.5, "correct": correct[name], "support": 4})
        preds += [{"path": f"test/{name}/{i}.jpg", "actual": name,
                   "predicted": name if i < correct[name] else confusions[name], "confidence": 0.5, "top5": name}
                  for i in range(4)]
    pd.DataFrame(rows).to_csv(metrics / "per_class.csv", index=False)
    pd.DataFrame(preds).to_csv(metrics / "predictions.csv", index=False)
    total = sum(correct.values())
    per_class = {r["class"]: {"accuracy": r["accuracy"], "correct": r["correct"]} for r in rows}
    (metrics / "test.json").write_text(json.dumps({"accuracy": total / 12, "correct": total, "per_class": per_class}))
    _write_live(repo / "dvclive", {"train/loss_smoothed": [2.0, 1.5, 1.2], "train/accuracy": [0.3, 0.5, 0.6],
                                   "val/loss_smoothed": [2.1, 1.7, 1.6], "val/accuracy": [0.3, 0.4, 0.5]})
    (repo / "params.yaml").write_text(f"train:\n  lr: {lr}\n")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Commit ``no-metrics`` (dvc init only), then metrics v1 (HEAD); the workspace holds v2."""
    repo = tmp_path_factory.mktemp("repo")
    _git(repo, "init", "-q", "-b", "main")
    subprocess.run([DVC, "init", "-q"], cwd=repo, check=True, capture_output=True)
    (repo / "dvc.yaml").write_text("metrics:\n  - metrics/test.json\nparams:\n  - params.yaml\n")
    (repo / "params.yaml").write_text("train:\n  lr: 0.001\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "pipeline, no metrics yet")
    _git(repo, "tag", "no-metrics")
    _write_metrics(repo, {"MONARCH": 2, "PAPER KITE": 4, "RED ADMIRAL": 1},
                   {"MONARCH": "PAPER KITE", "PAPER KITE": "MONARCH", "RED ADMIRAL": "MONARCH"}, lr=0.001)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "metrics v1")
    _write_metrics(repo, {"MONARCH": 4, "PAPER KITE": 3, "RED ADMIRAL": 1},
                   {"MONARCH": "PAPER KITE", "PAPER KITE": "RED ADMIRAL", "RED ADMIRAL": "PAPER KITE"}, lr=0.01)
    return repo


@pytest.fixture(scope="module")
def report(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("out") / "report.md"
    write_report("HEAD", out, repo=repo, top=5)
    return out.read_text(), out


def test_the_report_holds_dvcs_metric_and_param_diff_tables(report):
    text, _ = report
    assert re.search(r"\| metrics/test.json\s*\| accuracy\s*\| 0\.58333\s*\| 0\.66667\s*\| 0\.08333", text)
    assert re.search(r"\| params.yaml\s*\| train.lr\s*\| 0\.001\s*\| 0\.01\s*\|", text)
    assert "Test accuracy: **0.6667 (8/12)**, `HEAD`: 0.5833 (7/12)" in text
    headline, details = text.split("<details>")
    assert "per_class." not in headline.split("## Metrics")[1]  # per-class rows are folded away
    assert "Per-class accuracy that changed (2 classes)" in details
    assert re.search(r"\| per_class.MONARCH.accuracy\s*\| 0\.5\s*\| 1\.0", details)
    assert "2 other per-class metric(s) changed" in details  # MONARCH and PAPER KITE .correct


def test_the_report_says_whether_the_accuracy_change_is_signal_or_noise(report):
    text, _ = report
    section = text.split("## Signal or noise?")[1].split("## Metrics")[0]
    assert "On the same 12 test images" in section and "(+1 of 12 images)" in section
    assert "2 fixed, 1 broken; exact McNemar test p = 1." in section  # 2 * (1 + 3) / 8, capped at 1
    assert "**Not distinguishable from noise**" in section


def test_the_report_lists_the_changed_classes_worst_classes_and_confusions(report):
    text, _ = report
    changed = text.split("## Classes whose test accuracy changed most")[1].split("##")[0]
    assert "| class | accuracy at HEAD | accuracy here | change (points) |" in changed  # points, as above
    assert "| MONARCH | 0.500 | 1.000 | +50.0 |" in changed
    assert "| PAPER KITE | 1.000 | 0.750 | -25.0 |" in changed
    assert "RED ADMIRAL" not in changed  # unchanged
    worst = text.split("## Worst classes")[1].split("##")[0]
    assert worst.index("RED ADMIRAL") < worst.index("PAPER KITE") < worst.index("MONARCH")
    confused = text.split("## Most confused pairs")[1].split("##")[0]
    assert "| RED ADMIRAL | PAPER KITE | 3 | 75% | 0 |" in confused  # 0 at the base: a new confusion


def test_the_plots_are_pngs_beside_the_report_and_linked_from_it(report):
    text, out = report
    links = re.findall(r"!\[[^]]+\]\(([^)]+)\)", text)
    assert sorted(links) == ["report/confusion_matrix.png", "report/per_class_accuracy.png",
                             "report/training_curves.png"]
    for link in links:
        assert (out.parent / link).read_bytes().startswith(PNG_MAGIC)


def test_a_base_without_metrics_is_said_and_the_current_numbers_still_render(repo, tmp_path):
    out = tmp_path / "first.md"
    write_report("no-metrics", out, repo=repo)
    text = out.read_text()
    assert "`no-metrics` has no metrics yet" in text
    assert "Test accuracy: **0.6667 (8/12)**" in text
    assert re.search(r"\| metrics/test.json\s*\| accuracy\s*\| -\s*\| 0\.66667", text)
    assert "| RED ADMIRAL | PAPER KITE | 3 | 75% |" in text
    assert (tmp_path / "first" / "confusion_matrix.png").is_file()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_the_report_and_its_plots_folder_get_the_users_umask(repo, tmp_path, umask):
    """report.md was -rw------- whatever the umask (the temp file it is renamed from is made private)."""
    old = os.umask(umask)
    try:
        out = write_report("main", tmp_path / "r.md", repo=repo)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "r").stat().st_mode) == 0o777 & ~umask


def test_an_unknown_base_is_a_one_line_error(repo, tmp_path):
    with pytest.raises(VitpipeError, match=r"--base no-such-branch: unknown git revision") as err:
        write_report("no-such-branch", tmp_path / "r.md", repo=repo)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "r.md").exists()


def test_outside_a_git_repository_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    with pytest.raises(VitpipeError, match="not inside a git repository"):
        write_report("main", tmp_path / "r.md", repo=tmp_path)


def test_a_plots_folder_that_holds_other_files_is_not_replaced(repo, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "code.py").write_text("keep me")
    with pytest.raises(VitpipeError, match="refusing to replace"):
        write_report("HEAD", tmp_path / "src.md", repo=repo)
    assert (tmp_path / "src" / "code.py").read_text() == "keep me"


def test_the_cli_writes_the_report_and_turns_errors_into_status_2(repo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    assert main(["report", "--base", "HEAD", "--out", str(tmp_path / "r.md"), "--top", "1"]) == 0
    changed = (tmp_path / "r.md").read_text().split("changed most")[1].split("##")[0]
    assert changed.count("| MONARCH |") == 1 and "PAPER KITE" not in changed  # --top 1
    assert main(["report", "--base", "nope", "--out", str(tmp_path / "r2.md")]) == 2
    assert "unknown git revision" in capsys.readouterr().err


def test_table_helpers():
    base = pd.DataFrame({"class": ["a", "b", "gone"], "accuracy": [0.5, 0.5, 1.0]})
    now = pd.DataFrame({"class": ["a", "b", "new"], "accuracy": [0.5, 0.25, 0.0], "support": [2, 4, 1]})
    changed = accuracy_changes(now, base, top=10)
    assert list(changed["class"]) == ["gone", "new", "b"]  # appeared/vanished first, then by |change|
    preds = pd.DataFrame({"actual": ["a", "a", "a", "b"], "predicted": ["b", "b", "a", "a"]})
    pairs = confused_pairs(preds, top=5)
    assert pairs[["actual", "predicted", "count"]].values.tolist() == [["a", "b", 2], ["b", "a", 1]]
    assert pairs["share"].tolist() == pytest.approx([2 / 3, 1.0])
    assert md_table(["x"], [["a|b"]]).splitlines()[-1] == "| a\\|b |"


def test_a_class_without_test_images_renders_as_absent(tmp_path):
    """evaluate writes empty cells for a class with no test image: the report and plots take them."""
    from vitpipe.report import plots
    from vitpipe.report.report import _class_sections, _parse_csv

    text = ("class,accuracy,precision,recall,f1,correct,support\n"
            "MONARCH,1.0,1.0,1.0,1.0,2,2\nPAPER KITE,,,,,0,0\nRED ADMIRAL,0.5,1.0,0.5,0.667,1,2\n")
    now = _parse_csv(text, "per_class.csv", "per_class")
    assert now["accuracy"].isna().tolist() == [False, True, False]
    base = _parse_csv(text.replace("PAPER KITE,,,,,0,0", "PAPER KITE,0.5,1.0,0.5,0.667,1,2"),
                      "base/per_class.csv", "per_class")
    predictions = pd.DataFrame({"actual": ["MONARCH", "MONARCH", "RED ADMIRAL", "RED ADMIRAL"],
                                "predicted": ["MONARCH", "MONARCH", "RED ADMIRAL", "PAPER KITE"]})
    changed = accuracy_changes(now, base, top=5)
    assert list(changed["class"]) == ["PAPER KITE"]  # scored at the base, absent now
    assert list(accuracy_changes(now, now, top=5)["class"]) == []  # absent on both sides: unchanged
    sections = "\n".join(_class_sections(now, base, predictions, None, base_name="main", top=5))
    worst = sections.split("## Worst classes")[1].split("##")[0]
    assert "PAPER KITE" not in worst and "RED ADMIRAL" in worst
    assert "| PAPER KITE | 0.500 | — | — |" in sections
    png = plots.per_class_accuracy(now, tmp_path / "per_class.png", base=base)
    assert png.read_bytes().startswith(PNG_MAGIC)
    history = pd.DataFrame({"epoch": [0, 1], "train_loss_smoothed": [2.0, 1.5], "val_loss_smoothed": [2.1, 1.8],
                            "val_cross_entropy": [2.0, 1.7], "train_accuracy": [0.3, 0.5], "val_accuracy": [0.3, 0.4]})
    assert plots.training_curves(history, tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)


def test_the_curves_are_read_from_the_files_dvclive_writes(tmp_path):
    """The train stage's own writer, then the report's reader: the history's columns, one row per epoch."""
    from vitpipe.report.history import read_live_history
    from vitpipe.train.live import LiveLog

    rows = [{"epoch": e, "train_loss_smoothed": 2.0 - e, "train_accuracy": 0.25 * e, "val_loss_smoothed": 2.5 - e,
             "val_cross_entropy": 2.4 - e, "val_accuracy": 0.2 * e, "lr": 1e-3} for e in range(3)]
    live = LiveLog(tmp_path / "dvclive", rows[:2])  # two epochs replayed (a resume), then one more
    live.log_epoch(rows[2])
    live.close()
    history = read_live_history(tmp_path / "dvclive")
    assert sorted(history.columns) == sorted(rows[0]) and history["epoch"].tolist() == [0, 1, 2]
    assert history.to_dict("records") == [pytest.approx(r) for r in rows]
    assert read_live_history(tmp_path / "nothing") is None
    (tmp_path / "dvclive" / "plots" / "metrics" / "lr.tsv").write_text("epoch,lr\n0,1\n")
    with pytest.raises(VitpipeError, match=r"lr.tsv: columns \['epoch,lr'\], not step and lr"):
        read_live_history(tmp_path / "dvclive")


@pytest.mark.parametrize("damage", ["not JSON", "a list", "missing"])
def test_a_workspace_metrics_file_dvc_cannot_read_is_named_in_the_report(repo, tmp_path, damage, caplog):
    """DVC shows an unreadable metrics file's values as '-', as if removed, and says so on stderr
    only (no file named): the report named nothing."""
    test_json = repo / "metrics" / "test.json"
    kept = test_json.read_bytes()
    try:
        if damage == "missing":
            test_json.unlink()
        else:
            test_json.write_text("{not json" if damage == "not JSON" else "[1, 2]")
        write_report("HEAD", tmp_path / "r.md", repo=repo)
    finally:
        test_json.write_bytes(kept)
    text = (tmp_path / "r.md").read_text()
    assert "> Not read in the workspace (missing, or not laid out as vitpipe writes it): `metrics/test.json`" in text
    assert "metrics/test.json: missing or not laid out as vitpipe writes it" in caplog.text


@pytest.mark.parametrize(("rows", "named"), [
    ("x\t0.1\n1\t0.2\n", "step 'x' is not an epoch number"),  # was a ValueError traceback in the merge
    ("0\tabc\n1\t0.2\n", "accuracy 'abc' is not a number"),  # was plotted as a category, silently
    ("0\t0.1\n0\t0.2\n", "epoch 0 twice"),  # was a row per pair in the merged table
])
def test_a_hand_edited_dvclive_tsv_is_one_line_naming_the_file(tmp_path, rows, named):
    curves = tmp_path / "dvclive" / "plots" / "metrics" / "val"
    curves.mkdir(parents=True)
    (curves / "loss_smoothed.tsv").write_text("step\tloss_smoothed\n0\t2.0\n1\t1.5\n")
    (curves / "accuracy.tsv").write_text("step\taccuracy\n" + rows)
    from vitpipe.report.history import read_live_history

    with pytest.raises(VitpipeError, match=rf"accuracy.tsv: {named}.*rerun `dvc repro`") as err:
        read_live_history(tmp_path / "dvclive")
    assert "\n" not in str(err.value)


def test_a_base_with_the_older_layout_is_not_reported_as_every_class_changed(repo, tmp_path):
    """The base's test.json holds per_class (an older vitpipe's); the workspace's does not (now
    per_class.csv/json): DVC lists every per-class number with '-' in the workspace, and the report
    said "Per-class accuracy that changed (3 classes)" on the same numbers."""
    test_json = repo / "metrics" / "test.json"
    kept = test_json.read_bytes()
    headline = {k: v for k, v in json.loads(kept).items() if k != "per_class"}
    try:
        test_json.write_text(json.dumps(headline))
        write_report("HEAD", tmp_path / "r.md", repo=repo)
    finally:
        test_json.write_bytes(kept)
    text = (tmp_path / "r.md").read_text()
    assert "Per-class accuracy that changed" not in text and "other per-class metric(s) changed" not in text
    assert "One side keeps per-class numbers in `test.json` (an older vitpipe's layout" in text
    assert re.search(r"\| metrics/test.json\s*\| accuracy\s*\| 0\.58333\s*\| 0\.66667", text)  # headline kept
    assert "| PAPER KITE |" in text  # the class tables still compare per_class.csv


@pytest.mark.parametrize("confidence", ["nan", "inf", "high", "", "1.5"])
@pytest.mark.parametrize("command", ["report", "pr-report"])
def test_a_confidence_that_is_not_a_probability_is_one_line_naming_the_file_and_row(command, confidence, repo,
                                                                                      tmp_path, monkeypatch, capsys):
    """Issue 22, case 2: evaluate once wrote `nan` (a damaged model); a hand edit can write anything. It was
    a ValueError traceback ("Unknown format code 'f' for object of type 'str'") or NaN in the gallery."""
    import shutil

    work = tmp_path / "repo"
    shutil.copytree(repo, work, symlinks=True)
    predictions = work / "metrics" / "predictions.csv"
    frame = pd.read_csv(predictions, keep_default_na=False, dtype=str)
    frame.loc[2, "confidence"] = confidence
    frame.to_csv(predictions, index=False)
    monkeypatch.chdir(work)
    assert main([command, "--base", "HEAD", "--out", str(tmp_path / "report.md")]) == 2
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if "ERROR" in ln]
    assert len(line) == 1 and "Traceback" not in err, err
    assert f"metrics/predictions.csv: row 3: confidence {confidence!r} is not a probability" in line[0]
    assert not (tmp_path / "report.md").exists()
