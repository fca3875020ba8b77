"""Where a side's numbers were computed: the host class in ``metrics/train.json`` and ``train.precision``.

With ``train.precision: exact`` every x86-64 CPU writes the same bytes (``host`` reads ``x86_64 exact``);
bf16 and fp32 results depend on the CPU's instruction sets (``x86_64 AVX512 bf16-native``, ...) or the GPU.
When the base and the workspace differ in either, their metrics may differ with no change to the code,
so the report says so and leaves the verdict to the paired test over images.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Origin:
    """A side's host class and precision; None where its files do not say (an older vitpipe, or missing)."""

    host: str | None
    precision: str | None

    def shown(self) -> str:
        host = f"`{self.host}`" if self.host else "an unrecorded host"
        return f"{host}, `train.precision: {self.precision or 'unrecorded'}`"


def _read(root: Path, rev: str | None, rel: str) -> str | None:
    if rev is None:
        path = root / rel
        try:
            return path.read_text(encoding="utf-8") if path.is_file() else None
        except (OSError, UnicodeDecodeError):
            return None
    done = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=root, capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else None


def origin(root: Path, rev: str | None, *, train_json: str = "metrics/train.json",
           params: str = "params.yaml") -> Origin:
    """The :class:`Origin` of the workspace (``rev`` None) or of a git revision."""
    host = precision = None
    try:
        data = json.loads(_read(root, rev, train_json) or "{}")
        host = data.get("host") if isinstance(data, dict) and isinstance(data.get("host"), str) else None
    except ValueError:
        pass
    try:
        raw = yaml.safe_load(_read(root, rev, params) or "{}")
        train = raw.get("train") if isinstance(raw, dict) else None
        value = train.get("precision") if isinstance(train, dict) else None
        precision = value if isinstance(value, str) else None
    except yaml.YAMLError:
        pass
    return Origin(host, precision)


def markdown(base: Origin, head: Origin, *, base_name: str) -> list[str]:
    """A line saying whether both sides' numbers come from the same host class and precision."""
    if base.host and base == head:
        same = "equal params and code give equal bytes on any x86-64 CPU" if head.precision == "exact" \
            else "a difference in the metrics comes from the change, not from the machine"
        return [f"Both sides computed on {head.shown()}: {same}.", ""]
    return ["> [!NOTE]",
            f"> **Different hosts or precisions**: `{base_name}` was computed on {base.shown()}, the workspace on "
            f"{head.shown()}. The same code can give other bytes there (only `train.precision: exact` gives the "
            f"same bytes on every x86-64 CPU), so `dvc metrics diff` below mixes the change with the machine: "
            f"judge it by the paired test over images (\"Signal or noise?\"), not by whether the numbers are equal.",
            ""]
