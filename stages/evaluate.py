"""DVC stage `evaluate`: score every test image -> test.json, per_class.csv, per_class.json, predictions.csv."""

import time

STARTED = time.perf_counter()  # the start-up line counts the stage's imports

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

from vitpipe.data.index import DatasetIndex  # noqa: E402
from vitpipe.evaluate.evaluation import EvalOutputs, run_evaluation  # noqa: E402
from vitpipe.logs import run_stage  # noqa: E402
from vitpipe.params import load_params  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", type=Path, required=True, help="dataset index from split-check")
    parser.add_argument("--model", type=Path, required=True, help="model from the train stage")
    parser.add_argument("--metrics", type=Path, required=True, help="test metrics JSON to write (DVC metrics)")
    parser.add_argument("--per-class", type=Path, required=True, help="per-class CSV to write")
    parser.add_argument("--per-class-json", type=Path, required=True, help="per-class JSON to write (not metrics)")
    parser.add_argument("--predictions", type=Path, required=True, help="per-image CSV to write")
    args = parser.parse_args(argv)
    outputs = EvalOutputs(metrics=args.metrics, per_class=args.per_class, predictions=args.predictions,
                          per_class_json=args.per_class_json)
    run_evaluation(load_params(), DatasetIndex.load(args.index), args.model, outputs, started=STARTED)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
