"""What ``train.precision: exact`` costs: CPU ms per image of the frozen feature pass, exact / bf16 / fp32.

The three precisions run interleaved in one process on the same 32-image batch (the CPU's batch size),
so a loaded host slows each alike; CPU time (``time.process_time``) is less sensitive to other
processes than wall time, and both are printed. Emulate another CPU with the variables of
``vitpipe.runtime.ISA_ENVIRONMENT``, e.g. ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2 python tools/exact_cost.py``. Prints one markdown table row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from vitpipe.model.classifier import build_model
from vitpipe.model.features import Extractor
from vitpipe.params import ModelParams
from vitpipe.runtime import ISA_ENVIRONMENT, describe_device

PRECISIONS = ("exact", "bf16", "fp32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone = build_model(ModelParams(name=args.model), 8, seed=0)[0].backbone.eval()
    size = backbone.pretrained_cfg["input_size"][-1]
    images = torch.randn(32, 3, size, size, generator=torch.Generator().manual_seed(0))  # (B, 3, H, W)
    cpu = torch.device("cpu")
    extractors = {p: Extractor.for_backbone(backbone, cpu, p, num_workers=0) for p in PRECISIONS}
    cpu_ms: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    wall_ms: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    with torch.inference_mode():
        for extractor in extractors.values():
            extractor._forward(images)  # warm-up: oneDNN's kernels are built on first use
        for _ in range(args.rounds):
            for p, extractor in extractors.items():
                started_cpu, started = time.process_time(), time.perf_counter()
                extractor._forward(images)
                cpu_ms[p].append((time.process_time() - started_cpu) * 1000 / len(images))
                wall_ms[p].append((time.perf_counter() - started) * 1000 / len(images))
    caps = " ".join(f"{k}={os.environ[k]}" for k in ISA_ENVIRONMENT if os.environ.get(k)) or "native"
    ms = {p: statistics.median(cpu_ms[p]) for p in PRECISIONS}
    walls = {p: statistics.median(wall_ms[p]) for p in PRECISIONS}
    cells = [time.strftime("%Y-%m-%d"), describe_device(cpu), caps, args.model, str(args.threads),
             *(f"{ms[p]:.1f}" for p in PRECISIONS), f"{ms['exact'] / ms['bf16']:.1f}x", f"{ms['exact'] / ms['fp32']:.1f}x",
             " / ".join(f"{walls[p]:.0f}" for p in PRECISIONS)]
    print("| " + " | ".join(cells) + " |")  # noqa: T201 - the row is this tool's output


if __name__ == "__main__":
    main()
