"""The training history from DVCLive's files, for the report's curves.

The train stage logs each epoch through DVCLive: ``<folder>/plots/metrics/train/accuracy.tsv`` and
so on, one TSV per metric with columns ``step`` (the epoch) and the metric's last name. They are
read into one table with the history's column names (``train/accuracy`` -> ``train_accuracy``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vitpipe.errors import VitpipeError


def read_live_history(folder: Path) -> pd.DataFrame | None:
    """One row per epoch (``epoch`` and one column per metric), or None when ``folder`` holds no TSV."""
    metrics = Path(folder) / "plots" / "metrics"
    files = sorted(metrics.rglob("*.tsv")) if metrics.is_dir() else []
    if not files:
        return None
    table: pd.DataFrame | None = None
    for path in files:
        name = path.relative_to(metrics).with_suffix("").as_posix()
        try:
            frame = pd.read_csv(path, sep="\t")
        except (ValueError, pd.errors.ParserError, OSError) as exc:
            raise VitpipeError(f"{path}: not a readable DVCLive TSV ({str(exc).splitlines()[0]}); "
                               f"rerun `dvc repro`.") from None
        if list(frame.columns) != ["step", path.stem]:
            raise VitpipeError(f"{path}: columns {list(frame.columns)}, not step and {path.stem}; it was not "
                               f"written by vitpipe's train stage; rerun `dvc repro`.")
        _check_rows(path, frame)
        frame = frame.rename(columns={"step": "epoch", path.stem: name.replace("/", "_")})
        table = frame if table is None else table.merge(frame, on="epoch", how="outer")
    return table.sort_values("epoch").reset_index(drop=True)


def _check_rows(path: Path, frame: pd.DataFrame) -> None:
    """Each row an integer epoch (once) and a number (an edited file is refused, not plotted as text)."""
    steps, values = (pd.to_numeric(frame[c], errors="coerce") for c in ("step", path.stem))
    bad_step = frame["step"][steps.isna() | (steps != steps.round())]
    bad_value = frame[path.stem][values.isna() & frame[path.stem].notna()]
    twice = steps[steps.duplicated()]
    problem = (f"step {bad_step.iloc[0]!r} is not an epoch number" if len(bad_step) else
               f"{path.stem} {bad_value.iloc[0]!r} is not a number" if len(bad_value) else
               f"epoch {int(twice.iloc[0])} twice" if len(twice) else None)
    if problem:
        raise VitpipeError(f"{path}: {problem}; it was not written by vitpipe's train stage; rerun `dvc repro`.")
