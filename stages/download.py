"""DVC stage `download`: data.source -> data/raw/{train,valid,test}/<class>/ (see vitpipe.download.sources)."""

import argparse
from pathlib import Path

from vitpipe.download.sources import check_watch, fetch
from vitpipe.logs import run_stage
from vitpipe.params import load_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dest", type=Path, help="output directory, replaced atomically")
    args = parser.parse_args(argv)
    data = load_params().data
    check_watch(data)  # the dvc.yaml dep that makes DVC see a local source's changes
    fetch(data.source, args.dest, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
