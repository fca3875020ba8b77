"""The ``vitpipe`` console script: the same code the DVC stages run, for use outside the pipeline."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from vitpipe.logs import run_guarded, setup_logging
from vitpipe.params import PARAMS_FILE, DataParams, Params, load_params


def _params_or_defaults(path: Path) -> Params:
    """params.yaml when there is one (in a vitpipe checkout), else the built-in defaults."""
    return load_params(path) if path.exists() else Params()


def _cmd_download(args: argparse.Namespace) -> int:
    from vitpipe.sources import fetch

    data = _params_or_defaults(args.params).data
    overrides = {k: v for k, v in (("sha256", args.sha256),) if v is not None}
    fetch(args.source, Path(args.dest), dataclasses.replace(data, **overrides))
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    from vitpipe.datacheck import check_dataset, format_report

    data: DataParams = _params_or_defaults(args.params).data
    overrides = {"bad_images": args.bad_images, "strict": args.strict or None}
    data = dataclasses.replace(data, **{k: v for k, v in overrides.items() if v is not None})
    result = check_dataset(Path(args.dir), data)
    print(format_report(result))  # noqa: T201 - the report is this command's output
    return 0 if result.accepted else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="vitpipe", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE,
                        help="params file for defaults (default: ./params.yaml if present)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="fetch a dataset into DEST/{train,valid,test}/<class>/")
    p.add_argument("source", help="synthetic | DIR | ARCHIVE | https://...(zip|tar|tar.gz) | kaggle:OWNER/SLUG[@VERSION]")
    p.add_argument("dest", help="destination directory (replaced atomically)")
    p.add_argument("--sha256", help="expected SHA-256 of an https:// archive (data.sha256)")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("check-data", help="check a dataset's splits and images; non-zero exit if refused")
    p.add_argument("dir", help="dataset root holding train/ (and valid/, test/)")
    p.add_argument("--bad-images", choices=["refuse", "skip"], help="data.bad_images")
    p.add_argument("--strict", action="store_true", help="refuse duplicate images (data.strict)")
    p.set_defaults(func=_cmd_check_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vitpipe`` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_guarded(lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
