"""Non-finite numbers (NaN, inf) stop at the first place they appear, in one line naming the file.

A damaged weights file (one flipped exponent bit makes a weight 1e29) or a diverged run gives NaN
logits, and NaN's argmax is class 0: evaluate would score every image as class 0 and write
``"loss": NaN``, predict would print ``nan``, and both exit 0. The model files are checked when
loaded and when saved, and every logit and loss before it is written or printed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from vitpipe.errors import VitpipeError


def first_non_finite(state: Mapping[str, torch.Tensor]) -> tuple[str, float] | None:
    """The first floating-point tensor in ``state`` holding NaN or inf, and one such value; None if none."""
    for name, tensor in state.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point():
            bad = ~torch.isfinite(tensor)
            if bad.any():
                return name, float(tensor[bad].flatten()[0])
    return None


def check_weights(state: Mapping[str, torch.Tensor], path: Path | str, *, fix: str) -> None:
    """Refuses weights holding NaN or inf, naming the file, the tensor and ``fix``."""
    found = first_non_finite(state)
    if found is not None:
        name, value = found
        raise VitpipeError(f"{path}: weight {name} holds {value} (not a finite number), so every prediction would "
                           f"be meaningless; {fix}.")


def first_non_finite_row(values: torch.Tensor) -> int | None:
    """The first row of ``values`` (N, ...) holding NaN or inf; None if every value is finite."""
    bad = ~torch.isfinite(values.reshape(len(values), -1)).all(1)
    return int(bad.nonzero()[0, 0]) if bad.any() else None
