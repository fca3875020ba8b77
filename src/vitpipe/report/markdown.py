"""GitHub markdown tables: the one way vitpipe writes them (the PR report, BENCHMARKS.md's rows)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def md_cell(value: Any) -> str:
    """A cell: floats with 3 decimals (NaN and None as a dash), ``|`` escaped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|")


def md_row(cells: Sequence[Any]) -> str:
    """One table row, ``| a | b |``."""
    return "| " + " | ".join(md_cell(v) for v in cells) + " |"


def md_header(headers: Sequence[str]) -> list[str]:
    """The header row and the alignment row under it."""
    return [md_row(headers), "|" + "|".join("---" for _ in headers) + "|"]


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A whole table: header, alignment and one row per item of ``rows``."""
    return "\n".join(md_header(headers) + [md_row(row) for row in rows])
