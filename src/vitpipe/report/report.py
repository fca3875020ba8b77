"""``vitpipe report``: a markdown report of the workspace's results against a git revision (a PR's base).

It holds whether the accuracy change is signal or noise (:mod:`~vitpipe.report.significance`),
``dvc metrics diff`` and ``dvc params diff``, the classes whose test accuracy changed most, the
worst classes, the most confused pairs, a gallery of the most confidently wrong test images, and
PNG plots in a folder beside the markdown (``report.md`` -> ``report/``), linked from it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vitpipe.errors import VitpipeError
from vitpipe.fileio import atomic_dir, write_text
from vitpipe.report import hosts, plots, significance
from vitpipe.report.gallery import GALLERY_SIZE, gallery_images, worst_predictions
from vitpipe.report.history import read_live_history
from vitpipe.report.markdown import md_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricFiles:
    """The evaluate and train outputs the report reads, relative to the repository root."""

    per_class: str = "metrics/per_class.csv"
    predictions: str = "metrics/predictions.csv"
    live: str = "dvclive"  # DVCLive's folder: the training curves
    index: str = "data/index.json"  # where the gallery finds the test images


_COLUMNS = {"per_class": ("class", "accuracy", "precision", "recall", "f1", "support"),
            "predictions": ("path", "actual", "predicted", "confidence")}
_NUMERIC = {"per_class": ("accuracy", "precision", "recall", "f1", "correct", "support")}


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, check=False)
    except FileNotFoundError:
        raise VitpipeError(f"`{cmd[0]}` is not installed or not on PATH; the report needs git and dvc.") from None


def _umask() -> int:
    """The process's umask (read by setting it, then setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(["git", *args], root)


def git_root(path: Path) -> Path:
    """The top of the git work tree holding ``path``."""
    done = _git(path, "rev-parse", "--show-toplevel")
    if done.returncode != 0:
        raise VitpipeError(f"{path.resolve()}: not inside a git repository; run `vitpipe report` in the "
                           f"vitpipe checkout (it compares with a git revision).")
    return Path(done.stdout.strip())


def resolve_revision(root: Path, rev: str) -> str:
    """The commit id of ``rev``; an unknown revision is a :class:`VitpipeError`."""
    done = _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if done.returncode != 0 or rev.startswith("-"):
        raise VitpipeError(f"--base {rev}: unknown git revision; pass an existing branch, tag or commit "
                           f"(in CI fetch it first, e.g. `git fetch origin main` and --base origin/main).")
    return done.stdout.strip()


def _dvc_command() -> list[str]:
    exe = Path(sys.executable).with_name("dvc")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "dvc"]


def dvc_markdown(root: Path, what: str, base: str) -> str:
    """``dvc {metrics|params} diff BASE --md``: a markdown table, empty when nothing changed."""
    cmd = [*_dvc_command(), what, "diff", base, "--md"]
    done = _run(cmd, root)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()] or [f"exit status {done.returncode}"]
        raise VitpipeError(f"`dvc {what} diff {base}` failed in {root}: {lines[-1].strip()}")
    return done.stdout.strip()


def unreadable_metrics(root: Path) -> list[str]:
    """The workspace's metrics files DVC could not read or found no numbers in (missing, not JSON, a
    list or a string where vitpipe writes an object): ``dvc metrics diff`` shows them as ``-`` alone."""
    done = _run([*_dvc_command(), "metrics", "show", "--json"], root)
    try:
        shown = json.loads(done.stdout or "{}")
    except ValueError:
        return []
    files = next(iter(shown.values()), {}).get("data", {}) if isinstance(shown, dict) and shown else {}
    return sorted(path for path, entry in files.items()
                  if "error" in entry or not (isinstance(entry.get("data"), dict) and entry["data"]))


def _parse_csv(text: str, source: str, kind: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(io.StringIO(text), keep_default_na=False,
                            dtype={"class": str, "actual": str, "predicted": str})
    except (ValueError, pd.errors.ParserError) as exc:
        raise VitpipeError(f"{source}: not a readable CSV ({str(exc).splitlines()[0]}); rerun `dvc repro`.") from None
    missing = [c for c in _COLUMNS[kind] if c not in frame.columns]
    if missing:
        raise VitpipeError(f"{source}: no column(s) {missing}; it was not written by vitpipe; rerun `dvc repro`.")
    for column in _NUMERIC.get(kind, ()):
        if column in frame:  # an empty cell (a class with no test image) is NaN, shown as a dash
            frame[column] = _numbers(frame[column], source, allow_empty=True)
    if kind == "predictions":
        frame["confidence"] = _numbers(frame["confidence"], source, allow_empty=False, unit=True)
    return frame


def _numbers(column: pd.Series, source: str, *, allow_empty: bool, unit: bool = False) -> pd.Series:
    """``column`` as floats. A cell that is not a finite number (text, ``nan``, ``inf``; empty unless
    ``allow_empty``; outside [0, 1] with ``unit``) is a :class:`VitpipeError` naming the file, the row
    (the first after the header is 1) and the cell."""
    text = column.astype(str).str.strip()
    values = pd.to_numeric(text.where(text != ""), errors="coerce")
    finite = values.map(lambda v: v == v and abs(v) != float("inf"))
    ok = finite & (values.between(0.0, 1.0) if unit else True)
    bad = ~ok & ((text != "") | (not allow_empty))
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        what = "a probability between 0 and 1" if unit else "a number"
        raise VitpipeError(f"{source}: row {row + 1}: {column.name} {text.iloc[row]!r} is not {what}; the file was "
                           f"edited or written by another program. Rerun `dvc repro` (evaluate writes it).")
    return values.astype(float)


def read_workspace_csv(root: Path, rel: str, kind: str, *, required: bool = True) -> pd.DataFrame | None:
    """A metrics CSV of the workspace; a missing required one is a :class:`VitpipeError`."""
    path = root / rel
    if not path.is_file():
        if required:
            raise VitpipeError(f"{rel}: not found in {root}; run the pipeline first (`dvc repro`).")
        return None
    return _parse_csv(path.read_text(encoding="utf-8"), rel, kind)


def read_revision_csv(root: Path, rev: str, rel: str, kind: str) -> pd.DataFrame | None:
    """A metrics CSV as committed at ``rev``; None when ``rev`` does not have it."""
    done = _git(root, "show", f"{rev}:{rel}")
    return _parse_csv(done.stdout, f"{rev}:{rel}", kind) if done.returncode == 0 else None


def accuracy_changes(current: pd.DataFrame, base: pd.DataFrame, top: int) -> pd.DataFrame:
    """The ``top`` classes whose accuracy changed most (either way), with ``base``, ``now``, ``change``."""
    merged = pd.merge(base[["class", "accuracy"]], current[["class", "accuracy", "support"]], on="class",
                      how="outer", suffixes=("_base", "_now"))
    merged["change"] = merged["accuracy_now"] - merged["accuracy_base"]
    # a class new, gone, or scored on one side only (no test image on the other) counts as changed
    one_sided = merged["accuracy_now"].isna() != merged["accuracy_base"].isna()
    merged = merged[one_sided | (merged["change"].fillna(0) != 0)]
    merged["_size"] = merged["change"].abs().fillna(2.0)
    return merged.sort_values(["_size", "class"], ascending=[False, True]).drop(columns="_size").head(top)


def confused_pairs(predictions: pd.DataFrame, top: int) -> pd.DataFrame:
    """The ``top`` (actual, predicted) pairs with actual != predicted, by count; ``share`` of the actual class."""
    wrong = predictions[predictions["actual"] != predictions["predicted"]]
    counts = wrong.groupby(["actual", "predicted"]).size().rename("count").reset_index()
    counts["share"] = counts["count"] / counts["actual"].map(predictions["actual"].value_counts())
    return counts.sort_values(["count", "actual", "predicted"], ascending=[False, True, True]).head(top)


def _gallery_section(rows: pd.DataFrame, n_wrong: int, drawn: bool, plot_dir: Path, index_rel: str) -> list[str]:
    out = ["## Most confidently wrong test images", ""]
    if not n_wrong:
        return out + ["No test image is misclassified.", ""]
    if drawn:
        out += [f"![Most confidently wrong test images]({plot_dir.name}/top_losses.png)", ""]
    else:
        out += [f"(No gallery: {index_rel} is not here to find the images; run `dvc repro`.)", ""]
    table = [[r["path"], r["actual"], r["predicted"], f"{r['confidence']:.3f}"] for _, r in rows.iterrows()]
    return out + [md_table(["test image", "actual", "predicted", "confidence"], table), ""]


def _accuracy(value: float) -> str:
    return "—" if pd.isna(value) else f"{value:.3f}"


def _overall(per_class: pd.DataFrame) -> str:
    correct = int(per_class["correct"].sum()) if "correct" in per_class else None
    total = int(per_class["support"].sum())
    if correct is None or not total:
        return "n/a"
    return f"{correct / total:.4f} ({correct}/{total})"


def _split_metrics_table(table: str) -> tuple[str, list[str], int, bool]:
    """``dvc metrics diff --md`` -> (table without per-class rows or '', its header and per-class
    accuracy rows, number of other per-class rows dropped, whether per-class rows were on one side only).

    Per-class rows are six per class: all of them could overflow a PR comment (65,536 characters).
    They are DVC metrics only in an older vitpipe's test.json (now per_class.csv/json, plots): a row
    with a value on one side alone is that layout change, not a changed class, and is dropped.
    """
    lines = table.splitlines()
    if len(lines) < 3:
        return table, [], 0, False
    head, rows = lines[:2], lines[2:]
    per_class = [r for r in rows if re.search(r"\|\s*per_class\.", r)]
    other = [r for r in rows if r not in per_class]
    both = [r for r in per_class if "-" not in [cell.strip() for cell in r.split("|")[3:5]]]
    accuracy = [r for r in both if re.search(r"\.accuracy\s*\|", r)]
    return ("\n".join(head + other) if other else ""), (head + accuracy if accuracy else []), \
        len(both) - len(accuracy), len(both) < len(per_class)


def _metrics_section(metrics_md: str, unreadable: Sequence[str] = ()) -> list[str]:
    headline, accuracy, n_dropped, moved = _split_metrics_table(metrics_md)
    out = ["## Metrics (`dvc metrics diff`)", ""]
    if moved:
        out += ["> One side keeps per-class numbers in `test.json` (an older vitpipe's layout; now "
                "`per_class.csv`/`per_class.json`): they are compared in the class tables below, not here.", ""]
    if unreadable:
        out += [f"> Not read in the workspace (missing, or not laid out as vitpipe writes it): "
                f"{', '.join(f'`{f}`' for f in unreadable)}: what it held shows as `-` below. Rerun `dvc repro`.", ""]
    out += [headline or "No overall metric changed.", ""]
    if accuracy:
        out += [f"<details><summary>Per-class accuracy that changed ({len(accuracy) - 2} classes)</summary>", "",
                *accuracy, "", "</details>", ""]
    if n_dropped:
        out += [f"{n_dropped} other per-class metric(s) changed (precision, recall, f1, correct): "
                f"`dvc metrics diff` lists them.", ""]
    return out


def _class_sections(current: pd.DataFrame, base: pd.DataFrame | None, predictions: pd.DataFrame,
                    base_predictions: pd.DataFrame | None, *, base_name: str, top: int) -> list[str]:
    out = ["## Classes whose test accuracy changed most", ""]
    if base is None:
        out += [f"`{base_name}` has no per-class metrics to compare with.", ""]
    else:
        changed = accuracy_changes(current, base, len(current) + len(base))
        rows = [[r["class"], _accuracy(r["accuracy_base"]), _accuracy(r["accuracy_now"]),
                 "—" if pd.isna(r["change"]) else f"{100 * r['change']:+.1f}"]
                for _, r in changed.head(top).iterrows()]
        if len(changed) > top:
            out += [f"The {top} of {len(changed)} classes whose accuracy changed, largest change first "
                    f"(`--top` shows more):", ""]
        out += [md_table(["class", f"accuracy at {base_name}", "accuracy here", "change (points)"], rows) if rows
                else "No class's test accuracy changed.", ""]
    scored = current[current["accuracy"].notna()]  # a class with no test image has no accuracy
    worst = scored.sort_values(["accuracy", "f1", "class"], kind="stable").head(top)
    out += ["## Worst classes", "", f"The {len(worst)} of {len(scored)} classes with the lowest test accuracy:", "",
            md_table(
        ["class", "accuracy", "precision", "recall", "f1", "test images"],
        [[r["class"], r["accuracy"], r["precision"], r["recall"], r["f1"], int(r["support"])]
         for _, r in worst.iterrows()]), ""]
    pairs = confused_pairs(predictions, top)
    base_counts = {} if base_predictions is None else \
        confused_pairs(base_predictions, len(base_predictions)).set_index(["actual", "predicted"])["count"].to_dict()
    headers = ["actual", "predicted as", "images", "share of the class"]
    headers += [] if base_predictions is None else [f"images at {base_name}"]
    rows = [[r["actual"], r["predicted"], int(r["count"]), f"{r['share']:.0%}"]
            + ([] if base_predictions is None else [int(base_counts.get((r["actual"], r["predicted"]), 0))])
            for _, r in pairs.iterrows()]
    n_pairs = int(((predictions["actual"] != predictions["predicted"])
                   .groupby([predictions["actual"], predictions["predicted"]]).any()).sum())
    out += ["## Most confused pairs", ""]
    out += [f"The {len(rows)} of {n_pairs} (actual, predicted) pairs with the most misclassified test images:", "",
            md_table(headers, rows)] if rows else ["No test image is misclassified."]
    return out + [""]


def _write_plots(plot_dir: Path, current: pd.DataFrame, base: pd.DataFrame | None, predictions: pd.DataFrame,
                 history: pd.DataFrame | None, gallery: tuple | None = None) -> list[tuple[str, str]]:
    """Writes the PNGs into ``plot_dir`` (replaced atomically); returns (title, file name) pairs."""
    if plot_dir.exists() and (not plot_dir.is_dir() or any(p.suffix != ".png" for p in plot_dir.iterdir())):
        raise VitpipeError(f"{plot_dir}: exists and holds more than report plots; refusing to replace it. "
                           f"Pass another --out (its plots go to a folder named after it).")
    made = []
    with atomic_dir(plot_dir) as tmp:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700
        plots.confusion_matrix(predictions, list(current["class"]), tmp / "confusion_matrix.png")
        made.append(("Confusion matrix", "confusion_matrix.png"))
        plots.per_class_accuracy(current, tmp / "per_class_accuracy.png", base=base)
        made.append(("Per-class test accuracy", "per_class_accuracy.png"))
        if history is not None and len(history):
            plots.training_curves(history, tmp / "training_curves.png")
            made.append(("Training curves", "training_curves.png"))
        if gallery is not None:
            rows, images, n_wrong = gallery
            plots.top_losses(rows, images, tmp / "top_losses.png", n_wrong=n_wrong)
    return made


def write_report(base: str, out: Path, *, top: int = 5, repo: Path | None = None,
                 files: MetricFiles = MetricFiles(), notes: Sequence[str] = ()) -> Path:
    """Writes the markdown report ``out`` and its plots folder (``out`` without suffix).

    Args:
        base: git revision to compare with (branch, tag, commit; ``origin/main`` in CI).
        out: markdown file to write; relative paths are relative to the current directory.
        top: rows in the class and confused-pair tables.
        repo: a path inside the git repository (default: the current directory).
        files: where the metrics CSVs live, relative to the repository root.
        notes: markdown lines put under the title (``vitpipe pr-report``'s freshness check).
    """
    root = git_root(Path(repo) if repo is not None else Path.cwd())
    base_sha = resolve_revision(root, base)
    current = read_workspace_csv(root, files.per_class, "per_class")
    predictions = read_workspace_csv(root, files.predictions, "predictions")
    history = read_live_history(root / files.live)
    base_per_class = read_revision_csv(root, base_sha, files.per_class, "per_class")
    base_predictions = read_revision_csv(root, base_sha, files.predictions, "predictions")
    metrics_md, params_md = dvc_markdown(root, "metrics", base), dvc_markdown(root, "params", base)

    out = Path(out)
    plot_dir = out.with_suffix("") if out.suffix else out.with_name(out.name + "_plots")
    worst = worst_predictions(predictions, GALLERY_SIZE)
    n_wrong = int((predictions["actual"] != predictions["predicted"]).sum())
    images = gallery_images(root, files.index, worst) if n_wrong else None
    made = _write_plots(plot_dir, current, base_per_class, predictions, history,
                        gallery=(worst, images, n_wrong) if images is not None else None)

    lines = [f"# vitpipe report: workspace vs `{base}` ({base_sha[:10]})", "", *notes]
    if base_per_class is None:
        lines += [f"> `{base}` has no metrics yet ({files.per_class} is not committed there, e.g. the first "
                  f"commit): the numbers below are the workspace's alone.", ""]
    lines += [f"Test accuracy: **{_overall(current)}**"
              + ("" if base_per_class is None else f", `{base}`: {_overall(base_per_class)}"), ""]
    if base_per_class is not None:
        lines += hosts.markdown(hosts.origin(root, base_sha), hosts.origin(root, None), base_name=base)
    lines += significance.markdown_section(base_predictions, predictions, base_name=base, top=top)
    unreadable = unreadable_metrics(root)
    if unreadable:
        logger.warning("%s: missing or not laid out as vitpipe writes it; shown as '-'", ", ".join(unreadable))
    lines += _metrics_section(metrics_md, unreadable)
    lines += ["## Parameters (`dvc params diff`)", "", params_md or "No parameter changed.", ""]
    lines += _class_sections(current, base_per_class, predictions, base_predictions, base_name=base, top=top)
    lines += _gallery_section(worst, n_wrong, images is not None, plot_dir, files.index)
    lines += ["## Plots", ""]
    lines += [f"![{title}]({plot_dir.name}/{name})\n" for title, name in made]
    write_text(out, "\n".join(lines).rstrip() + "\n")
    out.chmod(0o666 & ~_umask())  # as any file the user writes (the temp file it was renamed from is 0600)
    logger.info("wrote %s and %d plot(s) in %s/", out, len(made), plot_dir)
    return out
