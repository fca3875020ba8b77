"""The split-check: refuse a dataset that would train or score wrongly, before any training starts.

:func:`check_dataset` walks ``root/{train,valid,test}/<class>/<files>``, reads, hashes and decodes
every image (:mod:`vitpipe.check.imagescan`), and checks the class sets, unreadable images, duplicates,
class sizes and stray files. Its :class:`DatasetIndex` uses ONE class map, from train's folders,
for every split. :func:`run_split_check` is the DVC stage; ``vitpipe check-data`` prints
:func:`format_report`.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vitpipe.check.imagescan import DatasetTree, FileScan, list_tree, scan_files
from vitpipe.data.index import SPLITS, DatasetIndex, Sample
from vitpipe.errors import VitpipeError
from vitpipe.fileio import write_json
from vitpipe.params import DataParams

logger = logging.getLogger(__name__)

# Check id -> title, in report order.
CHECKS = {"splits": "Split folders", "n_classes": "Number of classes", "classes": "Class sets",
          "unreadable": "Unreadable images",
          "duplicates": "Duplicate images", "class_sizes": "Class sizes", "stray": "Stray files (not used)"}
LIST_CAP = 50  # longest list written to the report (metrics/data.json); counts stay exact
LOG_CAP = 20  # warnings logged one by one by run_split_check

# How a Pillow mode is counted in report["converted"]; RGB is not converted and not counted.
_MODE_KINDS = {"CMYK": "cmyk", "L": "grayscale", "1": "grayscale", "P": "palette", "RGBA": "alpha",
               "LA": "alpha", "PA": "alpha", "I;16": "16bit", "I;16B": "16bit", "I;16L": "16bit",
               "I": "32bit", "F": "32bit"}


@dataclass(frozen=True)
class Finding:
    """One problem, naming the file, folder or class it concerns."""

    check: str  # a key of CHECKS
    level: Literal["error", "warning"]
    message: str


@dataclass(frozen=True)
class CheckResult:
    """The outcome of :func:`check_dataset`; ``index`` is None when the dataset is refused."""

    root: Path
    accepted: bool
    errors: list[str]
    warnings: list[str]
    findings: tuple[Finding, ...]
    index: DatasetIndex | None
    report: dict[str, Any]


def _layout_findings(tree: DatasetTree) -> list[Finding]:
    out = [Finding("splits", "warning", f"{name}/: not a split folder ({', '.join(SPLITS)}), not used; "
                   f"rename it if it is one.") for name in tree.other_dirs]
    needs = {"train": "nothing to train on", "valid": "train picks the best epoch on it",
             "test": "evaluate scores it"}
    out += [Finding("splits", "error", f"no {split}/ split ({needs[split]}).")
            for split in SPLITS if split not in tree.splits]
    if tree.splits.get("train") == {}:
        out.append(Finding("splits", "error", "train/: no class folders (expected train/<class>/<images>)."))
    return out + [Finding("stray", "warning", f"{path}: {why}; not used.") for path, why in tree.stray]


def _class_findings(tree: DatasetTree, usable: dict[str, dict[str, list[FileScan]]],
                    classes: list[str], data: DataParams) -> list[Finding]:
    out: list[Finding] = []
    if not tree.splits.get("train"):
        return out  # reported as a split problem; every class would be "not in train/"
    if len(classes) == 1:
        out.append(Finding("n_classes", "error", f"train/: one class only ({classes[0]}); a classifier needs "
                           f"two at least (its accuracy, F1 and top-5 would all be 1.0)."))
    for split, by_class in tree.splits.items():
        for name in sorted(set(by_class) - set(classes)):
            out.append(Finding("classes", "error", f"{split}/{name}: class not in train/ (its images "
                               f"cannot be labelled)."))
        for name in sorted(set(classes) - set(by_class)):
            out.append(Finding("classes", "warning", f"{split}/: no folder for train class {name!r}; "
                               f"{split} has no {name} images."))
        for name in sorted(set(classes) & set(by_class)):
            n = len(usable[split][name])
            if n == 0 and split == "train":
                out.append(Finding("class_sizes", "error", f"train/{name}: no usable images (the model "
                                   f"cannot learn this class)."))
            elif n == 0:
                out.append(Finding("class_sizes", "warning", f"{split}/{name}: no usable images."))
            elif split == "train" and n < data.min_class_images:
                out.append(Finding("class_sizes", "warning", f"train/{name}: only {n} images "
                                   f"(< data.min_class_images = {data.min_class_images})."))
    return out


def _duplicate_groups(scans: list[FileScan]) -> list[list[str]]:
    by_hash: dict[str, list[str]] = defaultdict(list)
    for s in scans:
        by_hash[s.sha256].append(s.path)
    return sorted(sorted(paths) for paths in by_hash.values() if len(paths) > 1)


def _duplicate_finding(group: list[str], strict: bool) -> Finding:
    splits = [split for split in SPLITS if any(p.startswith(f"{split}/") for p in group)]
    labels = sorted({p.split("/")[1] for p in group})
    where = f"across splits {', '.join(splits)} (leaks into scoring)" if len(splits) > 1 else f"within {splits[0]}"
    clash = f"; labelled {' and '.join(labels)}" if len(labels) > 1 else ""
    return Finding("duplicates", "error" if strict else "warning",
                   f"identical files {where}: {' = '.join(group)}{clash}.")


def _split_stats(by_class: dict[str, list[FileScan]]) -> dict[str, Any]:
    counts = {name: len(scans) for name, scans in sorted(by_class.items())}
    present = [n for n in counts.values() if n > 0]
    scans = [s for group in by_class.values() for s in group]
    size = None
    if scans:
        size = {"min_w": min(s.width for s in scans), "max_w": max(s.width for s in scans),
                "min_h": min(s.height for s in scans), "max_h": max(s.height for s in scans)}
    return {"images": len(scans), "classes": counts,
            "imbalance_ratio": max(present) / min(present) if present else None, "size": size}


def _kinds(scan: FileScan) -> list[str]:
    kinds = [] if scan.mode == "RGB" else [_MODE_KINDS.get(scan.mode, scan.mode.lower())]
    return kinds + (["exif_rotated"] if scan.orientation != 1 else [])


def _build_report(tree: DatasetTree, usable: dict[str, dict[str, list[FileScan]]], classes: list[str],
                  skipped: list[FileScan], groups: list[list[str]], findings: list[Finding]) -> dict[str, Any]:
    ok = [s for by_class in usable.values() for scans in by_class.values() for s in scans]
    within = sum(1 for g in groups if len({p.split("/")[0] for p in g}) == 1)
    n_errors = sum(f.level == "error" for f in findings)
    return {
        "accepted": n_errors == 0, "n_errors": n_errors, "n_warnings": len(findings) - n_errors,
        "n_classes": len(classes), "classes": classes,
        "splits": {split: _split_stats(usable[split]) for split in SPLITS if split in usable},
        "missing_classes": {split: sorted(set(classes) - set(by_class))
                            for split, by_class in tree.splits.items() if set(classes) - set(by_class)},
        "converted": dict(sorted(Counter(k for s in ok for k in _kinds(s)).items())),
        "duplicates": {"within_split": within, "cross_split": len(groups) - within, "groups": groups[:LIST_CAP]},
        "skipped_images": [{"path": s.path, "reason": s.error} for s in skipped[:LIST_CAP]],
        "n_skipped_images": len(skipped),
        "stray_files": [path for path, _ in tree.stray[:LIST_CAP]], "n_stray_files": len(tree.stray),
    }


def check_dataset(root: Path, data: DataParams) -> CheckResult:
    """Checks the dataset under ``root`` and builds its index when it passes.

    Raises:
        VitpipeError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise VitpipeError(f"{root}: not a folder; pass the dataset root that holds train/, valid/ "
                           f"and test/ (e.g. data/raw after `dvc repro download`).")
    tree = list_tree(root)
    paths = [p for by_class in tree.splits.values() for images in by_class.values() for p in images]
    scans = {s.path: s for s in scan_files(root, paths, workers=data.workers)}
    bad = [scans[p] for p in paths if not scans[p].ok]
    skip = data.bad_images == "skip"
    findings = _layout_findings(tree)
    findings += [Finding("unreadable", "warning" if skip else "error",
                         f"{s.path}: {s.error}{' (skipped)' if skip else ''}") for s in bad]
    usable = {split: {name: [scans[p] for p in images if scans[p].ok] for name, images in by_class.items()}
              for split, by_class in tree.splits.items()}
    classes = sorted(tree.splits.get("train", {}))
    findings += _class_findings(tree, usable, classes, data)
    groups = _duplicate_groups([s for p, s in sorted(scans.items()) if s.ok])
    findings += [_duplicate_finding(g, data.strict) for g in groups]
    findings.sort(key=lambda f: list(CHECKS).index(f.check))  # stable: keeps walk order within a check
    report = _build_report(tree, usable, classes, bad if skip else [], groups, findings)
    index = None
    if report["accepted"]:
        label = {name: i for i, name in enumerate(classes)}
        index = DatasetIndex(root=root, classes=tuple(classes), splits={
            split: tuple(sorted((Sample(s.path, label[name], s.sha256) for name, group in usable[split].items()
                                 for s in group), key=lambda sample: sample.path))
            for split in SPLITS})
    return CheckResult(root=root, accepted=report["accepted"], index=index, report=report,
                       errors=[f.message for f in findings if f.level == "error"],
                       warnings=[f.message for f in findings if f.level == "warning"],
                       findings=tuple(findings))


# Check id -> (singular, plural) of what its errors count, and the fix named in a refusal.
_REFUSALS = {
    "splits": (("split problem", "split problems"),
               "add the missing split and class folders, or fetch a train-only source with the download "
               "stage, which carves valid/ and test/ off train (data.val_fraction, data.test_fraction)"),
    "n_classes": (("dataset with one class", "datasets with one class"),
                  "add a folder of another class's images to train/ (and to valid/ and test/)"),
    "classes": (("class folder that train/ lacks", "class folders that train/ lacks"),
                "rename or remove those class folders, or add them to train/"),
    "unreadable": (("unreadable image", "unreadable images"), "set data.bad_images: skip"),
    "duplicates": (("group of identical files", "groups of identical files"),
                   "remove the copies or set data.strict: false"),
    "class_sizes": (("empty train class", "empty train classes"),
                    "add images to the empty train classes or remove their folders"),
}


def refusal_reasons(result: CheckResult) -> tuple[str, list[str]]:
    """Why ``result`` was refused, as one line (count and first finding per check), and the fixes."""
    parts, fixes = [], []
    for check, ((one, many), fix) in _REFUSALS.items():
        errors = [f.message for f in result.findings if f.check == check and f.level == "error"]
        if errors:
            parts.append(f"{len(errors)} {one if len(errors) == 1 else many} (first: {errors[0].rstrip('.')})")
            fixes.append(fix)
    return "; ".join(parts), fixes


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _size_text(size: dict[str, int] | None, axis: str) -> str:
    if size is None:
        return "-"
    low, high = size[f"min_{axis}"], size[f"max_{axis}"]
    return str(low) if low == high else f"{low}-{high}"


def format_report(result: CheckResult) -> str:
    """The readable report ``vitpipe check-data`` prints: split table, findings by check, verdict."""
    report = result.report
    lines = [f"Dataset check of {result.root}: {report['n_classes']} classes (from train/)", "",
             f"{'split':<6} {'images':>7} {'classes':>7} {'imbalance':>9} {'width':>11} {'height':>11}"]
    for split, stats in report["splits"].items():
        ratio = "-" if stats["imbalance_ratio"] is None else f"{stats['imbalance_ratio']:.2f}"
        lines.append(f"{split:<6} {stats['images']:>7} {len(stats['classes']):>7} {ratio:>9} "
                     f"{_size_text(stats['size'], 'w'):>11} {_size_text(stats['size'], 'h'):>11}")
    if report["converted"]:
        kinds = ", ".join(f"{n} {kind}" for kind, n in report["converted"].items())
        lines += ["", f"Converted to RGB when loaded (accepted): {kinds}."]
    for check, title in CHECKS.items():
        found = [f for f in result.findings if f.check == check]
        if found:
            n_err = sum(f.level == "error" for f in found)
            lines += ["", f"{title}: {_plural(n_err, 'error')}, {_plural(len(found) - n_err, 'warning')}"]
            lines += [f"  {'ERROR' if f.level == 'error' else 'warning'}: {f.message}" for f in found]
    lines.append("")
    if result.accepted:
        counts = "/".join(str(s["images"]) for s in report["splits"].values())
        lines.append(f"ACCEPTED: {counts} images ({'/'.join(report['splits'])}), "
                     f"{_plural(len(result.warnings), 'warning')}.")
    else:
        reasons, fixes = refusal_reasons(result)
        lines.append(f"REFUSED: {reasons}. To fix: {'; '.join(fixes)}.")
    return "\n".join(lines)


def run_split_check(root: Path, data: DataParams, *, index_path: Path, report_path: Path) -> DatasetIndex:
    """The split-check stage: writes the index and the report only for an accepted dataset.

    Raises:
        VitpipeError: the dataset is refused (one line: what, the first example, how to fix).
    """
    result = check_dataset(root, data)
    for message in result.warnings[:LOG_CAP]:
        logger.warning("%s: %s", root, message)
    if len(result.warnings) > LOG_CAP:
        logger.warning("%s: ... and %d more warnings; see `vitpipe check-data %s`",
                       root, len(result.warnings) - LOG_CAP, root)
    if result.index is None:
        reasons, fixes = refusal_reasons(result)
        raise VitpipeError(f"{root}: refused: {reasons}. To fix: {'; '.join(fixes)}; see "
                           f"`vitpipe check-data {root}` for the full report.")
    result.index.save(index_path)
    write_json(report_path, result.report)
    counts = ", ".join(f"{s['images']} {split}" for split, s in result.report["splits"].items())
    logger.info("%s: accepted: %d classes, %s images; %d warnings", root, result.report["n_classes"],
                counts, len(result.warnings))
    return result.index
