"""Where and how the work runs: device, precision, seeding and determinism."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.metadata
import logging
import os
import platform
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitpipe.errors import VitpipeError

logger = logging.getLogger(__name__)


_DEVICE = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks CUDA when there is a GPU; asking for CUDA without one, or for another device, is an error."""
    match = _DEVICE.fullmatch(spec.strip())
    if match is None:
        raise VitpipeError(f"train.device: {spec} is not a device vitpipe runs on; use auto, cpu, cuda or cuda:N.")
    if spec.strip() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.strip() == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise VitpipeError(f"train.device: {spec} but no CUDA device is visible; set train.device: auto or cpu.")
    index = None if match.group(1) is None else int(match.group(1))
    if index is not None and index >= torch.cuda.device_count():
        raise VitpipeError(f"train.device: {spec} but only {torch.cuda.device_count()} CUDA device(s); "
                           f"pick a lower index or auto.")
    return torch.device("cuda", index)


def device_name(device: torch.device) -> str:
    """``cpu`` or the GPU's marketing name, for metrics/train.json (the same on every CPU host)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def describe_device(device: torch.device) -> str:
    """:func:`device_name`, with a CPU's model and the cores this process may use (for benchmarks)."""
    if device.type == "cuda":
        return device_name(device)
    model = "CPU"
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores"


# train.precision: exact computes in float64 wherever the result's bytes are decided (the random init,
# the frozen feature pass, the head, evaluate's softmax) and rounds once at the end (features to bf16,
# weights to fp32): float64's last-bit differences between instruction sets, thread counts and BLAS
# kernels vanish in that rounding, so every x86-64 CPU writes the same bytes. bf16 and fp32 are faster
# and host-dependent.
EXACT = "exact"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU or CUDA when ``precision`` is ``bf16``, else a no-op."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the head (and, for ``exact``, every step) computes in: float64 for ``exact``, else float32."""
    return torch.float64 if precision == EXACT else torch.float32


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Runs the block with torch's default floating dtype set to ``dtype`` (new modules are created in it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# What changes a CPU's float32/bf16 results besides the code: the instruction sets torch's kernels
# (ATen), oneDNN and MKL pick, the caps a user sets on them, and the thread count (a GEMM's reduction
# split). Emulating another CPU with these variables changes the bytes (measured, BENCHMARKS.md).
ISA_ENVIRONMENT = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                   "MKL_CBWR", "ONEDNN_DEFAULT_FPMATH_MODE", "JSIMD_FORCENONE", "NPY_DISABLE_CPU_FEATURES")
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "avx_vnni",
              "avx512_vnni", "asimd", "sve", "bf16")


def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(vendor, flags) from /proc/cpuinfo; ("", {}) where there is none."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "", frozenset()
    field = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[:60]) if v}
    flags = field.get("flags") or field.get("Features") or ""
    return field.get("vendor_id", field.get("CPU implementer", "")), frozenset(flags.split())


def cpu_isa() -> dict[str, Any]:
    """Everything that decides which kernels a CPU runs (see :data:`ISA_ENVIRONMENT`), for cache keys."""
    vendor, flags = _cpuinfo()
    return {"arch": platform.machine(), "vendor": vendor, "aten": torch.backends.cpu.get_cpu_capability(),
            "flags": sorted(flags.intersection(_ISA_FLAGS)), "threads": torch.get_num_threads(),
            "environment": {k: os.environ[k] for k in ISA_ENVIRONMENT if os.environ.get(k)}}


def host_class(device: torch.device, precision: str) -> str:
    """Where a result was computed, as short as decides its bytes: the GPU's name; ``x86_64 exact`` for
    ``precision: exact`` on a CPU (any x86-64 CPU writes the same bytes); else the CPU's instruction-set
    class, e.g. ``x86_64 AVX512 bf16-native`` or ``x86_64 AVX2 (ONEDNN_MAX_CPU_ISA=AVX2)``."""
    if device.type == "cuda":
        return device_name(device)
    isa = cpu_isa()
    if precision == EXACT:
        return f"{isa['arch']} exact"
    native = [name for name, flag in (("amx", "amx_bf16"), ("bf16-native", "avx512_bf16")) if flag in isa["flags"]]
    caps = [f"{k}={v}" for k, v in isa["environment"].items()]
    return " ".join([isa["arch"], isa["aten"], *native[:1]]) + (f" ({', '.join(caps)})" if caps else "")


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers, e.g. (train.seed, epoch).

    Each epoch's randomness then depends on nothing but its number, so a resumed run replays
    exactly what the killed run would have done.
    """
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python and NumPy from the worker's torch seed."""
    del worker_id
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def configure(device: torch.device, precision: str) -> None:
    """Deterministic algorithms on CPU. On CUDA, cuDNN autotune, and TF32 matmuls and convolutions
    with ``precision: bf16`` only: ``fp32`` (the tutorial's) and ``exact`` compute in true fp32, TF32 off."""
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    tf32 = precision == "bf16"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.benchmark = True


# The libraries whose code decides the numbers: a checkpoint (and a cached result) keys on their versions.
SHAPING_LIBRARIES = ("torch", "torchvision", "timm", "numpy", "pillow", "safetensors")
# ... and those of the onnxruntime feature pass (train.feature_runtime: onnxruntime), when it runs.
ONNX_LIBRARIES = ("onnx", "onnxscript", "onnxruntime")


def library_versions(*extra: str) -> dict[str, str]:
    """``{"torch": "2.14.1", ...}`` for :data:`SHAPING_LIBRARIES` and ``extra``, as installed."""
    return {name: importlib.metadata.version(name) for name in (*SHAPING_LIBRARIES, *extra)}


def code_digest(*parts: str) -> str:
    """SHA-256 over vitpipe's own code in ``parts`` (subpackages such as ``"train"`` or modules such as
    ``"params.py"``), read as syntax trees: an edited comment or blank line does not count, any
    change to what the code does (a docstring included) does."""
    digest = hashlib.sha256()
    for part in parts:
        target = _PACKAGE / part
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for path in files:
            tree = ast.dump(ast.parse(path.read_bytes(), filename=str(path)))
            digest.update(f"{path.relative_to(_PACKAGE).as_posix()}\0{tree}\n".encode())
    return digest.hexdigest()


_PACKAGE = Path(__file__).resolve().parent


@contextlib.contextmanager
def forked_rng(seed: int) -> Iterator[None]:
    """Runs the block with torch's CPU RNG, Python's ``random`` and NumPy's (transforms use all three)
    seeded to ``seed``, and restores their outer state after."""
    state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        random.setstate(state)
        np.random.set_state(np_state)
