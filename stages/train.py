"""DVC stage `train`: the best-validation model, its metrics and training curves (see vitpipe.training)."""

import time

STARTED = time.perf_counter()  # train_seconds is the stage's whole wall time, imports included

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

from vitpipe.data.index import DatasetIndex  # noqa: E402
from vitpipe.logs import run_stage  # noqa: E402
from vitpipe.params import load_params  # noqa: E402
from vitpipe.train.training import TrainOutputs, run_training  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", type=Path, required=True, help="dataset index from split-check")
    parser.add_argument("--model", type=Path, required=True, help="best weights (.safetensors) to write")
    parser.add_argument("--checkpoint", type=Path, required=True, help="per-epoch checkpoint (resume)")
    parser.add_argument("--metrics", type=Path, required=True, help="train metrics JSON to write")
    parser.add_argument("--history", type=Path, required=True, help="per-epoch CSV to write")
    args = parser.parse_args(argv)
    outputs = TrainOutputs(model=args.model, checkpoint=args.checkpoint, metrics=args.metrics, history=args.history)
    run_training(load_params(), DatasetIndex.load(args.index), outputs, started=STARTED)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
