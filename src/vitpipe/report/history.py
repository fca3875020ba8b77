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
        frame = frame.rename(columns={"step": "epoch", path.stem: name.replace("/", "_")})
        table = frame if table is None else table.merge(frame, on="epoch", how="outer")
    return table.sort_values("epoch").reset_index(drop=True)
