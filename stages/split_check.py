"""DVC stage `split-check`: one class map for all splits, checked images -> data/index.json, metrics/data.json
(the report) and metrics/data_totals.json (its headline counts, DVC metrics)."""

import argparse
from pathlib import Path

from vitpipe.check.datacheck import run_split_check
from vitpipe.logs import run_stage
from vitpipe.params import load_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path, help="dataset root (the download stage's output)")
    parser.add_argument("--index", type=Path, required=True, help="dataset index to write")
    parser.add_argument("--report", type=Path, required=True, help="data report to write (JSON, not metrics)")
    parser.add_argument("--totals", type=Path, required=True, help="its headline counts to write (DVC metrics)")
    args = parser.parse_args(argv)
    run_split_check(args.root, load_params().data, index_path=args.index, report_path=args.report,
                    totals_path=args.totals)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
