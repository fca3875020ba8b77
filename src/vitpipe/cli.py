"""The ``vitpipe`` console script: the same code the DVC stages run, for use outside the pipeline."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from vitpipe.logs import run_guarded, setup_logging
from vitpipe.params import PARAMS_FILE, DataParams, Params, load_params

logger = logging.getLogger(__name__)


def _params_or_defaults(path: Path | None) -> Params:
    """The ``--params`` file (which must exist); without one ./params.yaml if present, else the defaults."""
    if path is not None:
        return load_params(path)
    return load_params(PARAMS_FILE) if PARAMS_FILE.exists() else Params()


def _cmd_download(args: argparse.Namespace) -> int:
    from vitpipe.download.sources import fetch

    data = _params_or_defaults(args.params).data
    overrides = {k: v for k, v in (("sha256", args.sha256),) if v is not None}
    fetch(args.source, Path(args.dest), dataclasses.replace(data, **overrides))
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    from vitpipe.check.datacheck import check_dataset, format_report

    data: DataParams = _params_or_defaults(args.params).data
    overrides = {"bad_images": args.bad_images, "strict": args.strict or None}
    data = dataclasses.replace(data, **{k: v for k, v in overrides.items() if v is not None})
    result = check_dataset(Path(args.dir), data)
    print(format_report(result))  # noqa: T201 - the report is this command's output
    return 0 if result.accepted else 1


def _cmd_predict(args: argparse.Namespace) -> int:
    from vitpipe.evaluate.predict import ImageError, predict_paths

    params = _params_or_defaults(args.params)
    tta = params.evaluate.tta if args.tta is None else args.tta
    results = predict_paths(args.paths, args.model, top_k=args.top_k, batch_size=args.batch_size,
                            device=args.device, tta=tta)
    if args.json:
        done = list(results)
        doc = {"model": str(args.model),
               "results": [r.to_dict() for r in done if not isinstance(r, ImageError)],
               "errors": [r.to_dict() for r in done if isinstance(r, ImageError)]}
        print(json.dumps(doc, indent=2, ensure_ascii=False))  # noqa: T201 - the command's output
        n_failed = len(doc["errors"])
    else:
        n_failed = 0
        for r in results:
            failed = isinstance(r, ImageError)
            n_failed += failed
            print(r.format(), file=sys.stderr if failed else sys.stdout, flush=True)  # noqa: T201
    if n_failed:
        logger.warning("%d file(s) could not be predicted", n_failed)
    return 1 if n_failed else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from vitpipe.report.report import write_report

    write_report(args.base, args.out, top=args.top)
    return 0


def _cmd_pr_report(args: argparse.Namespace) -> int:
    from vitpipe.report.ci import pr_report

    pr_report(args.base, args.out, top=args.top, retrain=args.retrain)
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from vitpipe import cachedir

    if args.clear:
        root, files, size = cachedir.clear()
        logger.info("removed %s (%d files, %.1f MB)", root, files, size / 1e6)
        return 0
    root = cachedir.cache_root()
    files, size = cachedir.usage(root) if root.is_dir() else (0, 0)
    print(f"{root}: {files} files, {size / 1e6:.1f} MB")  # noqa: T201 - the command's output
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_bench(args: argparse.Namespace) -> int:
    import tempfile

    from vitpipe.bench.bench import bench_params, format_table, resolve_data, run_bench
    from vitpipe.bench.cachebench import format_table as format_cache_table
    from vitpipe.bench.cachebench import run_cache_bench
    from vitpipe.bench.outfile import check_out

    check_out(args.out)  # before the work: a run's results are never lost to an unwritable --out
    params = bench_params(_params_or_defaults(args.params), epochs=args.epochs, model=args.model,
                          img_size=args.img_size, weights=args.weights)
    suite = _bench_suite(args)
    if suite in ("gpu", "host"):
        from vitpipe.bench import suites

        with tempfile.TemporaryDirectory(prefix="vitpipe-bench-suite-") as scratch:
            if suite == "gpu":
                sizes = suites.small_sizes() if args.small else suites.Sizes()
                rows = suites.run_gpu_suite(params, out=args.out, work=Path(scratch), sizes=sizes,
                                            rounds=args.rounds or 1)
            else:
                root, name = resolve_data(args.data, params.data, Path(scratch) / "data")
                rows = suites.run_host_suite(params, root, out=args.out, work=Path(scratch), data_name=name,
                                             against=args.startup_against, rounds=args.rounds or 3)
        print("\n".join(rows))  # noqa: T201 - the rows are this command's output
        return 0
    with tempfile.TemporaryDirectory(prefix="vitpipe-bench-data-") as scratch:
        root, name = resolve_data(args.data, params.data, Path(scratch))
        if not args.cache_only:
            result = run_bench(params, root, out=args.out, data_name=name, skip_loop=args.skip_loop,
                               loop_workers=args.loop_workers, views=args.views, precisions=args.precisions,
                               runtimes=args.runtimes, variants=args.variant, probe=args.probe)
            print(format_table(result))  # noqa: T201 - the table is this command's output
        if not args.skip_cache:
            with tempfile.TemporaryDirectory(prefix="vitpipe-bench-cache-") as work:
                cached = run_cache_bench(params, root, out=args.out, work=Path(work), data_name=name,
                                         added=args.added)
            print(format_cache_table(cached))  # noqa: T201
    return 0


# Options that pick the CPU suite's rows: with any of them, `--suite auto` is that suite on a GPU too.
_CPU_SUITE_OPTIONS = ("data", "cache_only", "skip_cache", "skip_loop", "views", "precisions", "runtimes")


def _bench_suite(args: argparse.Namespace) -> str:
    """``--suite``, with auto resolved: the GPU rows where CUDA is visible (unless a CPU-suite option is given)."""
    if args.suite != "auto":
        return args.suite
    if any(getattr(args, name) for name in _CPU_SUITE_OPTIONS):
        return "cpu"
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def _precision_list(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values or any(v not in ("exact", "bf16", "fp32") for v in values):
        raise argparse.ArgumentTypeError(f"must be exact, bf16 and/or fp32, comma-separated, got {text!r}")
    return values


def _runtime_list(text: str) -> tuple[str, ...]:
    from vitpipe.bench.bench import RUNTIMES

    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values or any(v not in RUNTIMES for v in values):
        raise argparse.ArgumentTypeError(f"must be {', '.join(RUNTIMES)}, comma-separated, got {text!r}")
    return values


def _variant(text: str) -> dict[str, object]:
    """``KEY=VALUE[,KEY=VALUE]`` -> ``{"section.key": value}``, each value read as YAML (true, 0.5, balanced)."""
    import yaml

    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or "." not in key:
            raise argparse.ArgumentTypeError(f"must be section.key=value[,section.key=value], got {text!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise argparse.ArgumentTypeError(f"{key}: {value!r} is not a YAML value") from None
    if not out:
        raise argparse.ArgumentTypeError(f"must be section.key=value[,section.key=value], got {text!r}")
    return out


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(_non_negative_int(part) for part in text.split(",") if part.strip())


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _worker_count(text: str) -> int:
    from vitpipe.params import MAX_PROCESSES

    value = _non_negative_int(text)
    if value > MAX_PROCESSES:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_PROCESSES} (each worker is a process), got {value}")
    return value


def _cmd_export(args: argparse.Namespace) -> int:
    from vitpipe.errors import VitpipeError
    from vitpipe.export.export import export_model

    if not args.format:
        raise VitpipeError("--format: give onnx or timm, e.g. `vitpipe export --format onnx`.")
    if args.metrics is not None and args.format == "onnx":
        raise VitpipeError("--metrics: --format onnx quotes no metrics (the timm folder's model card does); "
                           "drop --metrics.")
    if args.metrics is not None and not args.metrics.is_dir():
        raise VitpipeError(f"--metrics {args.metrics}: not a folder; give the folder holding test.json, data.json "
                           f"and per_class.json (default: metrics).")
    # quoted in the timm folder's model card: the --params file, else ./params.yaml when there is one
    params = load_params(args.params) if args.params is not None else (
        load_params(PARAMS_FILE) if PARAMS_FILE.exists() else None)
    metrics = Path("metrics") if args.metrics is None else args.metrics
    for path in export_model(args.model, args.format, args.out, metrics_dir=metrics, params=params):
        print(path)  # noqa: T201 - the files written are this command's output
    return 0


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the model as ONNX or as a timm / Hugging Face Hub folder")
    p.add_argument("--model", type=Path, default=Path("models/model.safetensors"), help="model file from the train stage")
    p.add_argument("--format", metavar="onnx|timm",
                   help="onnx: model.onnx (class names and preprocessing in its metadata); timm: config.json, "
                        "model.safetensors and README.md (needs model.head_hidden: 0)")
    p.add_argument("--out", type=Path, help="folder to write (default: models/onnx or models/timm); "
                   "created, or replaced when it holds only a previous export")
    p.add_argument("--metrics", type=Path, default=None,
                   help="timm: the model card quotes test.json, per_class.json and data.json from here "
                        "(default: metrics)")
    p.set_defaults(func=_cmd_export)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="vitpipe", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--params", type=Path, default=None,
                        help="params file for defaults (default: ./params.yaml if present, else the built-in defaults)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="fetch a dataset into DEST/{train,valid,test}/<class>/")
    p.add_argument("source", help="synthetic | DIR | ARCHIVE | https://...(zip|tar|tar.gz) | kaggle:OWNER/SLUG[@VERSION]")
    p.add_argument("dest", help="destination directory (replaced atomically)")
    p.add_argument("--sha256", help="expected SHA-256 of an https:// archive (data.sha256)")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("check-data", help="check a dataset's splits and images; non-zero exit if refused")
    p.add_argument("dir", help="dataset folder in any layout the download stage accepts (train/<class>/, <class>/)")
    p.add_argument("--bad-images", choices=["refuse", "skip"], help="data.bad_images")
    p.add_argument("--strict", action="store_true", help="refuse duplicate images (data.strict)")
    p.set_defaults(func=_cmd_check_data)

    p = sub.add_parser("predict", help="class probabilities for image files and directories (evaluate's transform)")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files, or directories searched recursively")
    p.add_argument("--model", type=Path, default=Path("models/model.safetensors"),
                   help="model file from the train stage, or its .onnx from `vitpipe export`")
    p.add_argument("--top-k", type=_positive_int, default=5, help="classes shown per image (default: 5)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with a horizontal flip (default: evaluate.tta from params)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of one line per image")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("report", help="markdown report of metrics, params and plots against a git revision")
    p.add_argument("--base", default="main", help="git revision to compare with (default: main)")
    p.add_argument("--out", type=Path, default=Path("report.md"), help="markdown file; plots go to its stem/ folder")
    p.add_argument("--top", type=_positive_int, default=5, help="rows in the class and confusion tables (default: 5)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("pr-report", help="the pull request's report from what it commits (no training), "
                       "with a check that its metrics belong to its params and code")
    p.add_argument("--base", default="main", help="git revision of the pull request's base (default: main)")
    p.add_argument("--out", type=Path, default=Path("report.md"), help="markdown file; plots go to its stem/ folder")
    p.add_argument("--top", type=_positive_int, default=5, help="rows in the class and confusion tables (default: 5)")
    p.add_argument("--retrain", action="store_true",
                   help="reproduce the pipeline first (dvc repro; --pull when a DVC remote is set)")
    p.set_defaults(func=_cmd_pr_report)

    p = sub.add_parser("cache", help="size of vitpipe's cache folder ($VITPIPE_CACHE_DIR, default ~/.cache/vitpipe); "
                       "--clear")
    p.add_argument("--clear", action="store_true", help="delete it, if vitpipe created it (all of it is recomputed "
                   "when needed)")
    p.set_defaults(func=_cmd_cache)

    p = sub.add_parser("bench", help="time the tutorial's loop against vitpipe's train stage, and the feature "
                       "cache as images are added; append to BENCHMARKS.md")
    p.add_argument("--data", type=Path, help="dataset root with train/, valid/, test/ (default: "
                   "../shared/data/butterflies-10 beside the repo, else a synthetic set)")
    p.add_argument("--epochs", type=_positive_int, help="train.epochs (default: params.yaml's)")
    p.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"), help="markdown file to append to")
    p.add_argument("--model", help="model.name, a timm model (default: params.yaml's)")
    p.add_argument("--img-size", type=_positive_int, help="model.img_size (default: params.yaml's)")
    p.add_argument("--weights", help="model.weights, e.g. package:efficientnet-lite0 with --model "
                   "tf_efficientnet_lite0 (default: params.yaml's)")
    p.add_argument("--skip-loop", action="store_true", help="run vitpipe's side only")
    p.add_argument("--loop-workers", type=_worker_count, default=4,
                   help="DataLoader workers of the tutorial loop (default: the tutorial's 4)")
    p.add_argument("--views", type=_int_list, default=(),
                   help="comma-separated train.cache_views values, one vitpipe run each (default: params.yaml's)")
    p.add_argument("--precisions", type=_precision_list, default=(),
                   help="comma-separated train.precision values (exact,bf16,fp32), one vitpipe run each (torch)")
    p.add_argument("--runtimes", type=_runtime_list, default=(),
                   help="comma-separated feature runtimes: torch (with --precisions), onnxruntime-fp32, "
                   "onnxruntime-int8; one vitpipe run each")
    p.add_argument("--variant", type=_variant, action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="one more vitpipe run with these params changed, e.g. evaluate.tta=true (repeatable)")
    p.add_argument("--probe", action="store_true", help="add a logistic-regression probe on the frozen backbone's "
                   "view-0 features (scikit-learn)")
    p.add_argument("--added", type=_positive_int, default=50,
                   help="feature cache row: train images held back, then added (default: 50)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--skip-cache", action="store_true", help="no feature cache row")
    which.add_argument("--cache-only", action="store_true", help="the feature cache row only")
    p.add_argument("--suite", choices=["auto", "cpu", "gpu", "host"], default="auto",
                   help="cpu: the loop against vitpipe and the feature cache rows; gpu: seed-sized and 12,500-image "
                   "sets, fine-tune against the compute ceiling, stage start-up; host: the data path per worker, "
                   "split-check with 1 and 2 processes, stage start-up (default auto: gpu where CUDA is visible)")
    p.add_argument("--small", action="store_true", help="--suite gpu on tiny sets (a dry run, any machine)")
    p.add_argument("--rounds", type=_positive_int, help="stage start-up rounds, median (default: 3 host, 1 gpu)")
    p.add_argument("--startup-against", type=Path, metavar="CHECKOUT",
                   help="--suite host: also time another vitpipe checkout's stages, in the same rounds")
    p.set_defaults(func=_cmd_bench)

    _add_export_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vitpipe`` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_guarded(lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
