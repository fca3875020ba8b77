"""DVC stage `check-params`: refuse a params.yaml with an unknown section or key, a wrong type or a bad value.

Each stage lists only the params it reads, and DVC reruns a stage only when those change, so a
misspelt section (`trian:`) is read by no stage and `dvc repro` would say "up to date". This
stage depends on the whole params file (and nothing depends on it): it runs, in well under a
second and without torch, whenever params.yaml changes.
"""

import argparse
import logging
from pathlib import Path

from vitpipe.logs import run_stage
from vitpipe.params import PARAMS_FILE, load_params

logger = logging.getLogger("vitpipe.stages.check_params")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params file to check")
    args = parser.parse_args(argv)
    load_params(args.params)
    logger.info("%s: every section, key and value is valid", args.params)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
