"""DVC stage `export` (export/dvc.yaml, a DVC project of its own: `dvc --cd export repro`): the model as
ONNX -> models/onnx/model.onnx."""

import argparse
from pathlib import Path

from vitpipe.export.export import export_model
from vitpipe.logs import run_stage
from vitpipe.params import load_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="model from the train stage")
    parser.add_argument("--out", type=Path, required=True, help="folder to write model.onnx into")
    args = parser.parse_args(argv)
    load_params()  # like every stage, refuse a params.yaml with a misspelt section or key
    export_model(args.model, "onnx", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
