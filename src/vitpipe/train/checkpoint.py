"""Per-epoch checkpoints and resume: a killed train stage picks up where it stopped.

A checkpoint holds everything the next epoch depends on: the trained weights, optimizer,
scheduler, EMA, the best weights so far, the history, RNG states and the hash of the params
that shape training. It is loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitpipe.errors import VitpipeError
from vitpipe.fileio import atomic_path, write_error
from vitpipe.model.weights import safe_torch_load

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """What the epoch loop carries from one epoch to the next, besides module and optimizer state."""

    next_epoch: int = 0
    best_accuracy: float = -1.0
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    patience_best: float = -1.0  # early stopping: the val accuracy the next epoch must beat by min_delta
    stale_epochs: int = 0  # epochs since it last did
    stopped_early: bool = False

    def note_validation(self, val_accuracy: float, *, min_delta: float, patience: int | None) -> bool:
        """Counts epochs without a val accuracy gain above ``min_delta``; True when ``patience`` runs out."""
        if val_accuracy > self.patience_best + min_delta:
            self.patience_best, self.stale_epochs = val_accuracy, 0
        else:
            self.stale_epochs += 1
        self.stopped_early = patience is not None and self.stale_epochs >= patience
        return self.stopped_early


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, *, params_hash: str, complete: bool, progress: Progress,
                    module: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    ema: torch.nn.Module | None) -> None:
    """Writes the checkpoint atomically (a kill mid-write leaves the previous one intact)."""
    payload = {
        "params_hash": params_hash,
        "complete": complete,
        "progress": vars(progress),
        "module": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "rng": _rng_state(),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(payload, f)  # to a buffered Python file: a full disk is an OSError, not torch's "unexpected pos"
        except RuntimeError as exc:
            raise write_error(path, exc) from None


def load_checkpoint(path: Path, *, params_hash: str) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None to start fresh (none, other params, finished, unreadable)."""
    if not path.is_file():
        return None
    try:
        payload = safe_torch_load(path, what="checkpoint")
    except VitpipeError as exc:  # a torn or foreign file: never trust it, start fresh
        logger.warning("%s; starting fresh", str(exc).split("; ")[0].split(". ")[0])
        return None
    if not isinstance(payload, dict):
        logger.warning("checkpoint %s holds no vitpipe checkpoint; starting fresh", path)
        return None
    if payload.get("params_hash") != params_hash:
        logger.info("checkpoint %s was made with other params; starting fresh", path)
        return None
    if payload.get("complete"):
        logger.info("checkpoint %s is of a finished run; training again from scratch", path)
        return None
    return payload


def restore(payload: dict[str, Any], *, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any, ema: torch.nn.Module | None) -> Progress:
    """Loads a checkpoint from :func:`load_checkpoint` into the live objects; returns the progress."""
    module.load_state_dict(payload["module"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if ema is not None and payload["ema"] is not None:
        ema.load_state_dict(payload["ema"])
    _set_rng_state(payload["rng"])
    return Progress(**payload["progress"])
