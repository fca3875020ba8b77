"""``vitpipe export`` and the export stage: check the output folder, then write one format into it atomically.

The output is a folder (``models/onnx``, ``models/timm`` by default). It is built beside its
destination and swapped in whole, so a failed export leaves the previous one untouched. An earlier
export is recognised by the mark vitpipe writes with it (:data:`MARK`: the format and each file's
SHA-256), never by file names: a folder holding anything else, or a file changed since, is refused
and left as it is, so a user's own ``model.onnx``, ``README.md`` or ``config.json`` is never replaced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError

from vitpipe.errors import VitpipeError
from vitpipe.export.model_card import render_model_card
from vitpipe.export.onnx_file import (
    ExportedLogits,
    export_classifier,
    max_abs_difference,
)
from vitpipe.export.timm_folder import check_timm_compatible, write_timm_folder
from vitpipe.fileio import DISK_ERRNOS, atomic_dir, file_sha256, write_error, write_text
from vitpipe.model.model_file import load_model
from vitpipe.params import Params

logger = logging.getLogger(__name__)

# What each format writes into its folder.
FILES = {"onnx": ("model.onnx",), "timm": ("config.json", "model.safetensors", "README.md")}
# Written last into the folder: {"format", "files": {name: sha256}}. The next export replaces the folder
# only when it holds exactly these files with these bytes.
MARK = ".vitpipe-export"


def default_out(fmt: str) -> Path:
    """``models/onnx`` or ``models/timm``."""
    return Path("models") / fmt


def export_model(model_path: Path, fmt: str, out: Path | None = None, *, metrics_dir: Path = Path("metrics"),
                 params: Params | None = None) -> list[Path]:
    """Writes the model at ``model_path`` as ``fmt`` (onnx | timm) into the folder ``out``.

    Args:
        model_path: ``models/model.safetensors`` from the train stage.
        fmt: ``onnx`` (``model.onnx``) or ``timm`` (``config.json``, ``model.safetensors``, ``README.md``).
        out: the folder; default :func:`default_out`.
        metrics_dir: where the timm model card reads test.json, per_class.json and data.json (the
            provenance is the model file's own).
        params: params.yaml's, quoted in the model card when they are the run's; None when absent.

    Returns:
        The files written.
    """
    if fmt not in FILES:
        raise VitpipeError(f"--format {fmt!r}: unknown format; use onnx or timm.")
    out = Path(out) if out is not None else default_out(fmt)
    check_out_dir(out, fmt)
    model, card = load_model(Path(model_path))
    if card.feature_runtime == "onnxruntime" and card.precision == "int8":
        logger.warning("%s: its head was trained on onnxruntime int8 features; the exported model computes them "
                       "in fp32, so its probabilities differ slightly from evaluate's and predict's", model_path)
    if fmt == "timm":
        check_timm_compatible(card, model_path)
    with contextlib.ExitStack() as stack:
        try:
            tmp = stack.enter_context(atomic_dir(out))
        except OSError as exc:
            raise VitpipeError(f"--out {out}: cannot write there ({exc.strerror or exc}); "
                               f"choose a writable directory.") from None
        with _named_as(tmp, out):
            if fmt == "onnx":
                export_classifier(model, card, tmp / "model.onnx", source_sha256=file_sha256(Path(model_path)))
                _log_check(tmp / "model.onnx", ExportedLogits(model, round_features=bool(card.feature_dtype)),
                           card.eval_transform.crop)
            else:
                write_timm_folder(model, card, tmp)
                write_text(tmp / "README.md", render_model_card(card, model_path=Path(model_path),
                                                                metrics_dir=metrics_dir, params=params))
            mark = {"format": fmt, "files": {name: file_sha256(tmp / name) for name in FILES[fmt]}}
            write_text(tmp / MARK, json.dumps(mark, indent=2, sort_keys=True) + "\n")
    written = [out / name for name in FILES[fmt]]
    logger.info("exported %s as %s: %s", model_path, fmt, ", ".join(map(str, written)))
    return written


def check_out_dir(out: Path, fmt: str) -> None:
    """Refuses, in one line, an output folder that is a link, a file, read-only, or holds other files."""
    here, target = Path.cwd(), Path(os.path.abspath(out))  # `--out ''` is Path('.')
    if target == here or target in here.parents:
        raise VitpipeError(f"--out {str(out)!r}: is the current folder or one above it, which vitpipe cannot "
                           f"replace; give a folder for the export, e.g. --out {default_out(fmt)}.")
    if out.is_symlink():
        raise VitpipeError(f"--out {out}: is a symbolic link; give a real directory (vitpipe does not write "
                           f"through links).")
    if out.exists():
        if not out.is_dir():
            raise VitpipeError(f"--out {out}: is a file, not a directory; give a new or empty directory.")
        problem = _not_an_earlier_export(out, fmt)
        if problem:
            raise VitpipeError(f"--out {out}: {problem}; give a new or empty directory (vitpipe replaces only "
                               f"an export it wrote, recognised by its {MARK}).")
        _check_writable(out, out)
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise VitpipeError(f"--out {out}: {parent} is a file, not a directory; choose another --out.")
    _check_writable(out, parent)


def _check_writable(out: Path, folder: Path) -> None:
    """A folder without write permission bits is refused, even for root (who could write anyway)."""
    if not folder.stat().st_mode & 0o222 or not os.access(folder, os.W_OK):
        where = "is" if folder == out else f"is in {folder}, which is"
        raise VitpipeError(f"--out {out}: {where} read-only; make it writable (chmod u+w) or choose another --out.")


def _not_an_earlier_export(out: Path, fmt: str) -> str | None:
    """Why the folder ``out`` is not an export of ``fmt`` vitpipe wrote, as it wrote it; None when it is one (or empty)."""
    try:
        names = sorted(p.name for p in out.iterdir())
    except OSError as exc:
        return f"cannot be listed ({exc.strerror or exc})"
    if not names:
        return None
    mark = out / MARK
    try:
        recorded = json.loads(mark.read_text(encoding="utf-8")) if mark.is_file() and not mark.is_symlink() else None
        files = recorded["files"] if isinstance(recorded, dict) and isinstance(recorded["files"], dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        files = None
    if files is None:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        return (f"holds {shown}, not an export written by `vitpipe export` (no {MARK} of its own; an export by "
                f"a vitpipe older than the mark has none: remove it by hand)")
    if recorded.get("format") != fmt:
        return f"holds a `vitpipe export --format {recorded.get('format')}` export, not --format {fmt}"
    for name in names:
        path = out / name
        if name != MARK and name not in files:
            return f"holds {name}, which `vitpipe export` did not write"
        if path.is_symlink() or not path.is_file():
            return f"{name} is {'a link' if path.is_symlink() else 'not a file'}, not what `vitpipe export` wrote"
        try:
            changed = name != MARK and file_sha256(path) != files[name]
        except OSError as exc:
            return f"{name} cannot be read ({exc.strerror or exc}), so it cannot be checked against {MARK}"
        if changed:
            return f"{name} has changed since `vitpipe export` wrote it (its SHA-256 is not the one in {MARK})"
    return None


@contextlib.contextmanager
def _named_as(tmp: Path, out: Path) -> Iterator[None]:
    """A failed write into the temporary folder ``tmp`` named as the file it was meant to be in ``out``."""
    try:
        yield
    except VitpipeError as exc:
        raise VitpipeError(str(exc).replace(str(tmp), str(out))) from None
    except SafetensorError as exc:  # timm's save_for_hf: the Rust writer's "No space left on device"
        text = str(exc)
        reason = next((r for r in ("No space left on device", "Disk quota exceeded", "Read-only file system",
                                   "Permission denied", "File too large") if r in text), text.splitlines()[0])
        raise VitpipeError(f"could not write {out / 'model.safetensors'}: {reason}. Free space or fix permissions "
                           f"there, then run again.") from None
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        name = Path(os.fsdecode(exc.filename)).name if exc.filename else ""
        target = out / name if name else out
        raise VitpipeError(str(write_error(target, exc)).replace(str(tmp), str(out))) from None


def _log_check(path: Path, module: torch.nn.Module, size: int) -> None:
    """Runs the written file on onnxruntime against PyTorch (fp32) once, and logs the difference."""
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))  # (2, 3, S, S)
    diff = max_abs_difference(path, module, images)
    logger.info("onnxruntime check: max |logit difference| %.2e against PyTorch fp32 on 2 random images", diff)
