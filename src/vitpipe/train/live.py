"""Per-epoch metrics through DVCLive, written as each epoch ends (``dvc plots``, VS Code, Studio).

DVCLive writes ``<dir>/plots/metrics/{train,val}/*.tsv`` and ``lr.tsv`` (one row per epoch, ``step``
is the epoch) and ``<dir>/metrics.json`` (the last epoch's values). vitpipe's ``dvc.yaml`` declares
each of these files as an output and draws the TSVs in its top-level plots, so DVCLive writes no ``dvc.yaml`` of its own
(``dvcyaml=False``), saves no experiment (``save_dvc_exp=False``: ``dvc exp run`` does that) and
logs no timestamps (equal runs, equal bytes).

Resume follows vitpipe's checkpoint, not DVCLive's own step counter: the folder is rewritten from
the checkpoint's history, then the run goes on. A kill between the checkpoint and DVCLive's write
(or DVC deleting the stage's outputs before it reruns it) can then leave no row twice or missing,
so a resumed run's files equal an uninterrupted run's, byte for byte.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# DVC wraps sys.stdout and sys.stderr (colorama) when first imported: imported here, before an entry
# point sets up logging, so the console handler holds the wrapped stream and tqdm's logging redirect
# replaces it (a handler made before the wrap is kept beside tqdm's: every line printed twice).
from dvc.exceptions import NotDvcRepoError
from dvc.repo import Repo
from scmrepo.exceptions import SCMError

from vitpipe.errors import VitpipeError
from vitpipe.fileio import write_error

logger = logging.getLogger(__name__)

# history column -> DVCLive metric name ("train/accuracy" -> plots/metrics/train/accuracy.tsv)
LIVE_NAMES = {"train_loss_smoothed": "train/loss_smoothed", "train_accuracy": "train/accuracy",
              "val_loss_smoothed": "val/loss_smoothed", "val_cross_entropy": "val/cross_entropy",
              "val_accuracy": "val/accuracy", "lr": "lr"}
DIGITS = 6  # as vitpipe.fileio rounds its JSON and CSV
_REFUSED_ENV = ("DVCLIVE_RESUME", "DVCLIVE_TEST")
# Read by DVCLive and Studio's client as they are imported (a bad value is a ValueError there).
_LEVEL_ENV = ("DVCLIVE_LOGLEVEL", "DVC_STUDIO_CLIENT_LOGLEVEL")
_OWN_HANDLERS = ("dvclive", "dvc_studio_client")  # loggers that add a console handler of their own


# What vitpipe's DVCLive leaves in its folder (DVC writes the .gitignore for the cached metrics.json).
# DVCLive clears more than this when it opens a folder (params.yaml, dvc.yaml, report.*, every
# plots/ type), so a folder holding anything else is refused before DVCLive opens it.
_OWN_TOP = {"metrics.json", "plots", ".gitignore"}


def _empty_folder(path: Path) -> bool:
    """A folder (not a link) holding no file or link at any depth: nothing to lose when DVCLive clears it."""
    return path.is_dir() and not path.is_symlink() and all(
        p.is_dir() and not p.is_symlink() for p in path.rglob("*"))


def check_live_folder(folder: Path) -> None:
    """Refuses, in one line, a DVCLive folder that is a link, not a folder, or holds files vitpipe's
    DVCLive did not write: DVCLive deletes files there (params.yaml, dvc.yaml, plots/...) when it opens.

    Raises:
        VitpipeError: naming the folder, what is in the way, and the fix.
    """
    folder = Path(folder)
    fix = "give a new or empty folder for DVCLive's files (dvc.yaml's train stage uses --live dvclive)"
    if folder.is_symlink():
        raise VitpipeError(f"--live {folder}: is a symbolic link; vitpipe does not write through links: {fix}.")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise VitpipeError(f"--live {folder}: is a file, not a folder: {fix}.")
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in _OWN_TOP)
    plots = folder / "plots"
    if plots.is_symlink() or plots.is_file():
        foreign.append("plots")
    elif plots.is_dir():
        foreign += [f"plots/{p.name}" for p in plots.iterdir()
                    if (p.name != "metrics" or not p.is_dir() or p.is_symlink()) and not _empty_folder(p)]
        if (plots / "metrics").is_dir():
            own = {f"{name}.tsv" for name in LIVE_NAMES.values()}
            own |= {str(Path(name).parent) for name in own} - {"."}
            # DVC's: it git-ignores each TSV it caches in a .gitignore beside it, unless one above does
            own |= {(Path(name).parent / ".gitignore").as_posix() for name in own}
            foreign += [str(p.relative_to(folder)) for p in (plots / "metrics").rglob("*")
                        if p.is_symlink() or (p.relative_to(plots / "metrics").as_posix() not in own
                                              and not _empty_folder(p))]
    if foreign:
        raise VitpipeError(f"--live {folder}: holds files vitpipe did not write ({', '.join(sorted(foreign)[:3])}), "
                           f"which DVCLive would delete when it opens the folder: {fix}.")


def check_live_env() -> None:
    """Refuses, in one line, environment variables that would break DVCLive or its files.

    Raises:
        VitpipeError: naming the variable and the fix.
    """
    set_env = [name for name in _REFUSED_ENV if os.environ.get(name)]
    if set_env:
        raise VitpipeError(f"{set_env[0]} is set: vitpipe resumes DVCLive's files from its own checkpoint "
                           f"and writes them into the stage's folder; unset {set_env[0]} and run again.")
    for name in _LEVEL_ENV:
        value = os.environ.get(name)
        if value is not None and not isinstance(logging.getLevelName(value.upper()), int):
            raise VitpipeError(f"{name}={value!r} is not a logging level; set it to DEBUG, INFO, WARNING, ERROR "
                               f"or CRITICAL, or unset it.")


def _live_class() -> type:
    """DVCLive's ``Live``, imported once the environment is checked, that leaves a folder outside
    any DVC repository alone.

    Outside one, DVCLive 3.49 runs ``dvc init`` in the enclosing git repository (and fails with a
    traceback in a git repository without commits); vitpipe only wants the files there (``vitpipe
    bench``, a stage script run by hand elsewhere). Inside one it is DVCLive's own set-up.
    """
    from dvclive import Live  # reads DVCLIVE_LOGLEVEL on import: after check_live_env

    for name in _OWN_HANDLERS:  # their lines go through the entry point's handler, once
        logging.getLogger(name).handlers.clear()

    class _Live(Live):
        def _init_dvc(self) -> None:
            try:
                Repo.find_root()
            except NotDvcRepoError:
                return
            try:
                super()._init_dvc()
            except SCMError as exc:  # e.g. a git repository without commits: nothing to link the run to
                logger.debug("DVCLive without git: %s", exc)

    return _Live


class LiveLog:
    """DVCLive's logger for the epochs of one run; only the process that writes files opens one."""

    def __init__(self, folder: Path, history: Iterable[Mapping[str, Any]]):
        """Opens DVCLive in ``folder`` (DVCLive clears its own files there) and writes ``history``,
        the epochs a resumed run has done, as they were written the first time."""
        check_live_env()
        self.folder = Path(folder)
        check_live_folder(self.folder)
        live_class = _live_class()
        try:
            self._live = live_class(str(self.folder), resume=False, report=None, save_dvc_exp=False, dvcyaml=False)
        except OSError as exc:
            raise write_error(self.folder, exc) from None
        for row in history:
            self.log_epoch(row)

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """Appends one epoch (a history row with ``epoch`` and the :data:`LIVE_NAMES` columns)."""
        self._live.step = int(row["epoch"])
        try:
            for column, name in LIVE_NAMES.items():
                value = row[column]
                self._live.log_metric(name, round(value, DIGITS) if isinstance(value, float) else value,
                                      timestamp=False)
            self._live.next_step()
        except OSError as exc:  # a full or read-only disk
            raise write_error(self.folder, exc) from None

    def close(self) -> None:
        """Writes DVCLive's summary (``metrics.json``) one last time."""
        try:
            self._live.end()
        except OSError as exc:
            raise write_error(self.folder, exc) from None
