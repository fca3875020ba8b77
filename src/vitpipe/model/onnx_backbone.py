"""The frozen backbone on ONNX Runtime (``train.feature_runtime: onnxruntime``, ``train.precision`` fp32 | int8).

The backbone (images -> features) is exported with ``torch.onnx.export`` and, for int8, quantized
with onnxruntime's dynamic quantization (int8 weights per output channel, activations quantized at
run time). Exporting DeiT-tiny takes 5-15 s, so the file is cached in vitpipe's cache folder
(``onnx/``), named by a key of everything that makes it: the weights (hashed), the architecture,
the input size, the precision, the opset, the versions of torch, onnx, onnxscript and onnxruntime
and this module's code. A cached file whose bytes do not match the digest written beside it, or that
onnxruntime cannot load, is rebuilt with a warning; a cache folder that cannot be written means a
warning and an export for this run only.

Each image runs alone (batch 1). Dynamic quantization takes an activation's scale from the whole
tensor, so in a batch an image's int8 feature depends on the images beside it (up to 0.14 apart on
DeiT-tiny, measured); alone it depends on the image only, as the per-image feature cache and
``vitpipe predict`` need. onnxruntime's CPU kernels gave the same bytes run after run and with 1 or
2 intra-op threads (measured, fp32 and int8), and on 2 cores batch 1 ran as fast as batch 32 (fp32)
or faster (int8).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import torch
from torch import nn

from vitpipe.cachedir import ENV, cache_subdir, make_cache_dir
from vitpipe.errors import VitpipeError
from vitpipe.fileio import atomic_path, file_sha256, write_text
from vitpipe.runtime import ONNX_LIBRARIES, code_digest

logger = logging.getLogger(__name__)

OPSET = 18  # ai.onnx opset: ONNX Runtime >= 1.14 runs it
MAX_WEIGHT_BYTES = 2**31 - 2**26  # protobuf's 2 GiB cap on one file, less room for the graph itself
INPUT_NAME = "image"
FEATURES_NAME = "features"
PRECISIONS = ("fp32", "int8")
SUBDIR = "onnx"  # in vitpipe's cache folder
_LIBRARIES = ("torch", *ONNX_LIBRARIES)
_RUNTIME_FIX = "set train.feature_runtime: torch"


def to_onnx(module: nn.Module, size: int | tuple[int, int], path: Path, *, output_name: str,
            metadata: dict[str, str], what: str, fix: str) -> None:
    """Writes ``module`` (``image (B, 3, H, W)`` -> ``output_name``) as one self-contained ONNX file.

    Args:
        size: the input's side, or (H, W); the batch axis is dynamic.
        what: names the model in an error; ``fix``: what the error tells to do instead.
    """
    height, width = (size, size) if isinstance(size, int) else size
    weight_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    if weight_bytes > MAX_WEIGHT_BYTES:
        raise VitpipeError(f"{what}: {weight_bytes / 2**30:.1f} GiB of weights is over the 2 GiB a single-file "
                           f"ONNX model can hold; {fix}.")
    example = torch.zeros(2, 3, height, width)  # (B, 3, H, W); values do not matter, B becomes dynamic
    with quiet_loggers():
        try:
            program = torch.onnx.export(module, (example,), dynamo=True, opset_version=OPSET, verbose=False,
                                        input_names=[INPUT_NAME], output_names=[output_name],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},))
        except (torch.onnx.errors.OnnxExporterError, torch.onnx.errors.UnsupportedOperatorError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise VitpipeError(f"{what}: torch.onnx.export cannot export this model ({first}); {fix}.") from None
        program.model.metadata_props.update(metadata)
        with atomic_path(path) as tmp:
            program.save(str(tmp), external_data=False)  # one file: weights inside the graph


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """The exporter's graph passes log every step at INFO (hundreds of lines): show only what is at ``level``."""
    loggers = [logging.getLogger(name or None) for name in names or ("onnx_ir", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in zip(loggers, levels):
            lg.setLevel(old)


def export_backbone(backbone: nn.Module, path: Path, *, input_size: int | tuple[int, int], int8: bool = False,
                    fix: str = "use --format timm or another model.name") -> Path:
    """The backbone alone, ``image (B, 3, H, W) -> features (B, D)``, as ONNX.

    Args:
        backbone: a timm model without classifier (``num_classes=0``), on the CPU.
        path: the ``.onnx`` file to write (atomically).
        input_size: the input's side, or (H, W).
        int8: ``onnxruntime.quantization.quantize_dynamic``: int8 weights (per output channel),
            activations quantized per tensor at run time. Faster on CPUs with VNNI; the features are
            not bit-equal to fp32 (DeiT-tiny, random init: cosine 0.9995 on average, 0.9992 at worst).
        fix: what an export error tells to do instead.
    """
    if not int8:
        to_onnx(backbone.eval(), input_size, path, output_name=FEATURES_NAME, metadata={}, what="backbone", fix=fix)
        return path
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="vitpipe-onnx-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        to_onnx(backbone.eval(), input_size, fp32, output_name=FEATURES_NAME, metadata={}, what="backbone", fix=fix)
        # the quantizer logs each tensor, and advice to pre-process, to the root logger
        with atomic_path(path) as out, quiet_loggers("", level=logging.ERROR):
            quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, per_channel=True)
    return path


def cpu_threads() -> int:
    """The cores this process may use (its CPU affinity), for onnxruntime's intra-op thread pool."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load_session(path: Path) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU provider: one intra-op thread per usable core,
    one graph at a time. Raises ``VitpipeError`` naming ``path`` when onnxruntime cannot load it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: its warnings go to stderr and are not ours
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises InvalidProtobuf, Fail, InvalidGraph...
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise VitpipeError(f"{path}: onnxruntime cannot load it ({first}); {_RUNTIME_FIX}.") from None


class OnnxBackbone:
    """``backbone`` on onnxruntime's CPU provider: ``(B, 3, H, W)`` images -> ``(B, D)`` fp32 features.

    The session (and the export, when the cache lacks the file) is made at the first call, per input size.
    ``export_seconds`` adds up the time spent exporting.
    """

    def __init__(self, backbone: nn.Module, *, digest: str, precision: str, root: Path | None = None):
        if precision not in PRECISIONS:
            raise VitpipeError(f"train.precision: {precision!r} does not run on onnxruntime; use fp32 or int8, "
                               f"or {_RUNTIME_FIX}.")
        self.backbone, self.digest, self.precision = backbone, digest, precision
        self.root = root  # None: vitpipe's cache folder, looked up at first use
        self.sessions: dict[tuple[int, int], Any] = {}
        self.export_seconds = 0.0

    def key_parts(self) -> dict[str, Any]:
        """What decides the features besides the weights, the images and the transform: part of their cache key."""
        return {"precision": self.precision, "opset": OPSET, "per_channel": True, "session_batch": 1,
                "libraries": {name: importlib.metadata.version(name) for name in _LIBRARIES},
                "code": code_digest("model/onnx_backbone.py")}

    def file_key(self, size: tuple[int, int]) -> str:
        """The cached file's name: a digest of the weights, the architecture, the input size and :meth:`key_parts`."""
        architecture = f"{type(self.backbone).__qualname__}\n{self.backbone!r}"
        parts = {**self.key_parts(), "backbone": self.digest, "input": list(size),
                 "architecture": hashlib.sha256(architecture.encode()).hexdigest()}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features of ``images`` (B, 3, H, W), each image run alone: (B, D) float32 on the CPU."""
        x = images.detach().float().cpu().contiguous().numpy()  # (B, 3, H, W)
        session = self.session((int(x.shape[-2]), int(x.shape[-1])))
        out = [session.run([FEATURES_NAME], {INPUT_NAME: x[i:i + 1]})[0] for i in range(x.shape[0])]  # (1, D) each
        return torch.from_numpy(np.concatenate(out)) if out else torch.empty(0, 0)

    def session(self, size: tuple[int, int]) -> Any:
        """The session for inputs of ``size`` (H, W): from the cached file, else exported (and cached)."""
        if size not in self.sessions:
            self.sessions[size] = self._open(size)
        return self.sessions[size]

    def _open(self, size: tuple[int, int]) -> Any:
        root = self.root if self.root is not None else cache_subdir(SUBDIR)
        path = root / f"{self.file_key(size)}.onnx"
        try:
            make_cache_dir(root)
            lock = filelock.FileLock(root / f"{path.stem}.lock")
            lock.acquire()
        except OSError as exc:  # a read-only or full disk, a file in the way
            logger.warning("cannot keep the ONNX backbone in %s (%s); exporting it for this run only (free space "
                           "there or set %s to a writable folder)", root, exc.strerror or exc, ENV)
            return self._build(size, None)
        try:  # one process exports, others wait and load its file (queued experiments)
            return self._cached(path) or self._build(size, path)
        finally:
            lock.release()

    def _cached(self, path: Path) -> Any | None:
        """The session of the cached file, or None when there is none or it is damaged (then rebuilt)."""
        if path.is_symlink():  # the cache holds the files vitpipe wrote: nothing is read through a link
            logger.warning("cached ONNX backbone %s is a link, not a file vitpipe wrote; rebuilding it", path)
            return None
        if not path.exists():
            return None
        recorded = path.with_suffix(".sha256")
        try:
            intact = recorded.read_text(encoding="ascii").strip() == file_sha256(path)
        except (OSError, UnicodeDecodeError):
            intact = False
        if intact:
            try:
                return load_session(path)
            except VitpipeError as exc:
                logger.warning("%s; rebuilding it", exc)
                return None
        logger.warning("cached ONNX backbone %s is damaged (its bytes do not match %s); rebuilding it",
                       path, recorded.name)
        return None

    def _build(self, size: tuple[int, int], path: Path | None) -> Any:
        """Exports the backbone, loads it, and keeps the file at ``path`` (unless None) with its digest."""
        start = time.perf_counter()
        logger.info("exporting the backbone to ONNX (%s) for onnxruntime: once per weights and settings",
                    self.precision)
        with tempfile.TemporaryDirectory(prefix="vitpipe-onnx-") as tmp:
            built = export_backbone(self.backbone.cpu(), Path(tmp) / "backbone.onnx", input_size=size,
                                    int8=self.precision == "int8", fix=_RUNTIME_FIX)
            session = load_session(built)
            if path is not None:
                try:
                    with atomic_path(path) as out:
                        shutil.copyfile(built, out)
                    write_text(path.with_suffix(".sha256"), file_sha256(path) + "\n")
                except (OSError, VitpipeError) as exc:
                    logger.warning("could not keep the ONNX backbone in the cache (%s); the next run exports it "
                                   "again", exc)
        self.export_seconds += time.perf_counter() - start
        logger.info("ONNX backbone ready in %.1f s", time.perf_counter() - start)
        return session
