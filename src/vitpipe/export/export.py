"""``vitpipe export`` and the export stage: check the output folder, then write one format into it atomically.

The output is a folder (``models/onnx``, ``models/timm`` by default). It is built beside its
destination and swapped in whole, so a failed export leaves the previous one untouched. A folder
that holds anything but a previous export of the same format is refused, never emptied: vitpipe
deletes only what it wrote.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch

from vitpipe.errors import VitpipeError
from vitpipe.export.model_card import render_model_card
from vitpipe.export.onnx_file import (
    ExportedLogits,
    export_classifier,
    max_abs_difference,
)
from vitpipe.export.timm_folder import check_timm_compatible, write_timm_folder
from vitpipe.fileio import atomic_dir, file_sha256, write_text
from vitpipe.model.model_file import load_model
from vitpipe.params import Params

logger = logging.getLogger(__name__)

# What each format writes into its folder, and all it may find there from a previous export.
FILES = {"onnx": ("model.onnx",), "timm": ("config.json", "model.safetensors", "README.md")}


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
        if fmt == "onnx":
            export_classifier(model, card, tmp / "model.onnx", source_sha256=file_sha256(Path(model_path)))
            _log_check(tmp / "model.onnx", ExportedLogits(model, round_features=bool(card.feature_dtype)),
                       card.eval_transform.crop)
        else:
            write_timm_folder(model, card, tmp)
            write_text(tmp / "README.md", render_model_card(card, model_path=Path(model_path),
                                                            metrics_dir=metrics_dir, params=params))
        _shareable(tmp)
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
        foreign = sorted(p.name for p in out.iterdir() if p.name not in FILES[fmt] or p.is_symlink() or not p.is_file())
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise VitpipeError(f"--out {out}: holds {', '.join(foreign[:3])}{more}, not written by "
                               f"`vitpipe export --format {fmt}`; give a new or empty directory "
                               f"(vitpipe never deletes files it did not write).")
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


def _shareable(folder: Path) -> None:
    """The usual permissions (umask applied): temporary files and folders are created private."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _log_check(path: Path, module: torch.nn.Module, size: int) -> None:
    """Runs the written file on onnxruntime against PyTorch (fp32) once, and logs the difference."""
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))  # (2, 3, S, S)
    diff = max_abs_difference(path, module, images)
    logger.info("onnxruntime check: max |logit difference| %.2e against PyTorch fp32 on 2 random images", diff)
