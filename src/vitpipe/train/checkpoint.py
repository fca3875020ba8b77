"""Per-epoch checkpoints and resume: a killed train stage picks up where it stopped.

A checkpoint holds everything the next epoch depends on: the trained weights, optimizer,
scheduler, EMA, the best weights so far, the history, RNG states, and the key of what made it
(:mod:`vitpipe.train.resume`: params, classes, images, code, libraries, device). It lives in
vitpipe's cache folder, not among the stage's DVC outputs (a persistent output would keep DVC from
run-caching the stage): ``checkpoints/<key digest>/last.pt``, with the key's parts beside it in
``key.json``. So a run only ever finds its own checkpoint, a killed run of other settings waits in
its own folder until they come back, and a finished run deletes its folder. It is resumed only when
its bytes match the SHA-256 written with it (``last.sha256``: a flipped bit, a truncated or
replaced file starts the run fresh, said in the log) and the key stored in it is the current run's,
and it is loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitpipe.cachedir import cache_subdir, make_cache_dir
from vitpipe.errors import VitpipeError
from vitpipe.fileio import atomic_path, file_sha256, read_json, remove_stale_temps, write_error, write_text
from vitpipe.model.weights import safe_torch_load
from vitpipe.train.resume import key_changes, key_digest

CHECKPOINT_FILE = "last.pt"
KEY_FILE = "key.json"  # the key's parts, readable without loading the checkpoint
# The SHA-256 of last.pt, one per line: written before last.pt is renamed into place with both the new
# and the previous file's (a kill between the two renames leaves either file, both verified), then the new only.
DIGEST_FILE = "last.sha256"

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
    if torch.cuda.is_initialized():  # a run that never touched CUDA drew nothing from it: no context on each GPU
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(key: dict[str, Any], root: Path | None = None) -> Path:
    """Where the run of ``key`` (:func:`vitpipe.train.resume.key_parts`) keeps its checkpoint, under
    ``root`` (default: the cache folder's ``checkpoints/``)."""
    return (cache_subdir("checkpoints") if root is None else Path(root)) / key_digest(key) / CHECKPOINT_FILE


def save_checkpoint(path: Path, *, key: dict[str, Any], progress: Progress, module: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, ema: torch.nn.Module | None) -> None:
    """Writes the checkpoint atomically (a kill mid-write leaves the previous one intact).

    Raises:
        VitpipeError: the folder cannot be written (full or read-only disk).
    """
    try:
        make_cache_dir(path.parent)  # a new cache root gets vitpipe's tag first
    except OSError as exc:
        raise write_error(path.parent, exc) from None
    for own in (path, path.parent / KEY_FILE, path.parent / DIGEST_FILE):
        if own.is_dir() and not own.is_symlink():
            raise VitpipeError(f"could not write {own}: a folder vitpipe did not make is in its place; "
                               f"move it out of the cache folder")
    if not (path.parent / KEY_FILE).is_file():
        write_text(path.parent / KEY_FILE, json.dumps(key, sort_keys=True, indent=2) + "\n")  # unrounded
    payload = {
        "key": json.dumps(key, sort_keys=True),
        "progress": vars(progress),
        "module": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "rng": _rng_state(),
    }
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            try:
                torch.save(payload, f)  # to a buffered Python file: a full disk is an OSError, not torch's "unexpected pos"
            except RuntimeError as exc:
                raise write_error(path, exc) from None
        digest = file_sha256(tmp)
        _write_digests(path, [digest, *_digests(path)])  # the file in place now stays valid until the rename
    _write_digests(path, [digest])


def _digests(path: Path) -> list[str]:
    """The digests written with the checkpoint at ``path``; none when the file is missing, a link or torn."""
    own = path.parent / DIGEST_FILE
    try:
        lines = [] if own.is_symlink() else own.read_text(encoding="ascii").split()
    except (OSError, ValueError):
        return []
    return [line for line in lines if len(line) == 64 and all(c in "0123456789abcdef" for c in line)]


def _write_digests(path: Path, digests: list[str]) -> None:
    write_text(path.parent / DIGEST_FILE, "".join(f"{d}\n" for d in dict.fromkeys(digests[:3])))


def _verified(path: Path) -> bool:
    """True when ``path`` matches a digest written with it; else a warning says why, and False."""
    digests = _digests(path)
    if not digests:
        logger.warning("checkpoint %s has no digest written with it (%s missing or damaged), so it cannot be "
                       "verified; starting fresh", path, DIGEST_FILE)
        return False
    try:
        actual = file_sha256(path)
    except OSError as exc:
        logger.warning("checkpoint %s cannot be read (%s); starting fresh", path, exc.strerror or exc)
        return False
    if actual not in digests:
        logger.warning("checkpoint %s does not match the SHA-256 written with it (changed or damaged since it was "
                       "saved: %s..., expected %s...); starting fresh", path, actual[:12], digests[0][:12])
        return False
    return True


def load_checkpoint(path: Path, *, key: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None to start fresh: none (the log names the nearest
    unfinished run of other settings, if any, and what differs), made by another run, or unreadable."""
    if path.is_symlink():  # the cache holds vitpipe's own files: nothing is read through a link
        logger.warning("checkpoint %s is a link, not a checkpoint vitpipe wrote; starting fresh", path)
        return None
    if not path.is_file():
        _note_nearest_other(path.parent.parent, key)
        return None
    if not _verified(path):
        return None
    try:
        payload = safe_torch_load(path, what="checkpoint")
    except VitpipeError as exc:  # a torn or foreign file: never trust it, start fresh
        logger.warning("%s; starting fresh", str(exc).split("; ")[0].split(". ")[0])
        return None
    try:
        saved = json.loads(payload["key"])
    except (TypeError, KeyError, ValueError):  # not a dict, or an older vitpipe's checkpoint
        logger.warning("checkpoint %s is not one of this vitpipe's checkpoints; starting fresh", path)
        return None
    changes = key_changes(saved, key)
    if changes:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        logger.info("checkpoint %s was made by another run (changed: %s); starting fresh", path, shown)
        return None
    return payload


def _note_nearest_other(root: Path, key: dict[str, Any]) -> None:
    """Logs the unfinished run in ``root`` whose key differs least from ``key``, and how."""
    nearest: list[str] | None = None
    try:
        folders = sorted(root.iterdir()) if root.is_dir() else []
    except OSError:
        folders = []
    for folder in folders:
        try:
            changes = key_changes(read_json(folder / KEY_FILE), key)
        except (OSError, ValueError, TypeError, AttributeError, KeyError):  # none, torn or foreign
            continue
        if changes and (nearest is None or len(changes) < len(nearest)):
            nearest = changes
    if nearest is None:
        return
    shown = "; ".join(nearest[:8]) + (f"; and {len(nearest) - 8} more" if len(nearest) > 8 else "")
    logger.info("no unfinished run of these settings to resume; starting fresh (the nearest unfinished run "
                "in %s changed: %s; going back to its settings resumes it)", root, shown)


def discard_checkpoint(path: Path) -> None:
    """Deletes a finished run's checkpoint, its key, the temporary files a killed write of them left,
    and their folder (if nothing else is in it)."""
    for name in (CHECKPOINT_FILE, KEY_FILE, DIGEST_FILE):
        remove_stale_temps(path.parent / name)
        try:
            (path.parent / name).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("could not delete %s (%s); `vitpipe cache --clear` removes it", path.parent / name, exc)
    try:
        path.parent.rmdir()
    except OSError:  # not empty (e.g. another run's temporary file), or gone
        pass


def restore(payload: dict[str, Any], *, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any, ema: torch.nn.Module | None) -> Progress | None:
    """Loads a checkpoint from :func:`load_checkpoint` into the live objects and returns the progress;
    None (with a warning, nothing loaded) when its weights do not fit ``module``: the caller starts fresh."""
    own, saved = module.state_dict(), payload["module"]
    misfit = sorted(k for k in own.keys() | saved.keys() if k not in own or k not in saved
                    or own[k].shape != saved[k].shape)
    if misfit:
        logger.warning("checkpoint weights do not fit this model (%s, ...); starting fresh", misfit[0])
        return None
    module.load_state_dict(saved)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if ema is not None and payload["ema"] is not None:
        ema.load_state_dict(payload["ema"])
    _set_rng_state(payload["rng"])
    return Progress(**payload["progress"])
