"""DVC stage `train`: the best-validation model, its metrics and DVCLive's curves (see vitpipe.train.training)."""

import time

STARTED = time.perf_counter()  # the logged wall time is the stage's whole, imports included

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
    parser.add_argument("--metrics", type=Path, required=True, help="train metrics JSON to write (DVC metrics)")
    parser.add_argument("--live", type=Path, required=True, help="DVCLive's folder: per-epoch metrics")
    args = parser.parse_args(argv)
    outputs = TrainOutputs(model=args.model, metrics=args.metrics, live=args.live)
    run_training(load_params(), DatasetIndex.load(args.index), outputs, started=STARTED)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
