"""The split-check: refuse a dataset that would train or score wrongly, before any training starts.

:func:`check_dataset` walks ``root/{train,valid,test}/<class>/<files>`` (or any layout the download
stage accepts, missing splits carved as it carves them), reads, hashes and decodes every image
(:mod:`vitpipe.check.imagescan`), maps folders to classes by ``data.class_aliases`` and
``data.drop_classes`` (:mod:`vitpipe.check.classmap`), and checks the class sets, unreadable images,
identical and near-duplicate images (:mod:`vitpipe.check.neardup`), class sizes and stray files. Its
:class:`DatasetIndex` uses ONE class map, from train's classes, for every split.
:func:`run_split_check` is the DVC stage; ``vitpipe check-data`` prints :func:`format_report`.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vitpipe.check.classmap import (
    Reconciled,
    class_fix,
    control_fix,
    control_messages,
    normalisation_twin,
    reconcile,
    shown_name,
    unknown_folders,
)
from vitpipe.check.imagescan import DatasetTree, FileScan, list_tree, scan_files
from vitpipe.check.neardup import NearDuplicate, near_duplicates, summary
from vitpipe.data.index import SPLITS, DatasetIndex, Sample
from vitpipe.errors import VitpipeError
from vitpipe.fileio import write_json
from vitpipe.params import DataParams

logger = logging.getLogger(__name__)

# Check id -> title, in report order.
CHECKS = {"splits": "Split folders", "n_classes": "Number of classes", "classes": "Class sets",
          "unreadable": "Unreadable images", "duplicates": "Duplicate images",
          "near_duplicates": "Near-duplicate images", "class_sizes": "Class sizes", "stray": "Stray files (not used)"}
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
    """The outcome of :func:`check_dataset`: its findings decide everything else.

    The dataset is accepted when no finding is an error; ``index`` is built then, and only then,
    and ``report["accepted"]`` (metrics/data.json) says the same.
    """

    root: Path
    findings: tuple[Finding, ...]
    index: DatasetIndex | None
    report: dict[str, Any]
    fixes: dict[str, str] = field(default_factory=dict)  # check -> the fix for this dataset, where it differs
    layout: str = ""  # the split root found and any splits carved, as in the download stage's log
    relocated: bool = False  # paths are named as data/raw will hold them, not as they lie under root

    @property
    def errors(self) -> list[str]:
        """The error findings' messages: any one refuses the dataset."""
        return [f.message for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[str]:
        """The warning findings' messages."""
        return [f.message for f in self.findings if f.level == "warning"]

    @property
    def accepted(self) -> bool:
        """No error finding (the index exists exactly then)."""
        return self.index is not None


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


def _class_findings(rec: Reconciled, usable: dict[str, dict[str, list[FileScan]]],
                    classes: list[str], data: DataParams) -> list[Finding]:
    out = [Finding("classes", "error", message) for message in rec.errors]
    if not rec.splits.get("train"):
        return out  # reported as a split problem; every class would be "not in train/"
    if len(classes) == 1:
        out.append(Finding("n_classes", "error", f"train/: one class only ({classes[0]}); a classifier needs "
                           f"two at least (its accuracy, F1 and top-5 would all be 1.0)."))
    out += [Finding("classes", "error", message) for message in control_messages(rec)]
    for split, by_class in rec.splits.items():
        for name in sorted(set(by_class) - set(classes)):
            twin = normalisation_twin(name, classes)
            same = (f"; it differs from train class {shown_name(twin)} only in Unicode normalisation "
                    f"(NFC/NFD), so the two look alike") if twin else ""
            out.append(Finding("classes", "error", f"{rec.shown(split, name)}: class not in train/ (its "
                               f"images cannot be labelled{same})."))
        for name in sorted(set(classes) - set(by_class)):
            out.append(Finding("classes", "warning", f"{split}/: no folder for train class {shown_name(name)!r}; "
                               f"{split} has no {shown_name(name)} images."))
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


_NEEDS = {"valid": "train picks the best epoch on it", "test": "evaluate scores it"}


def _empty_splits(tree: DatasetTree, usable: dict[str, dict[str, list[FileScan]]], data: DataParams) -> dict[str, str]:
    """The valid or test split without an image (a carve fraction of 0, an empty folder) -> its fix: refused
    here, naming the param, not by train or evaluate later ("Check data.source")."""
    out = {}
    for split, key in (("valid", "val_fraction"), ("test", "test_fraction")):
        if split in usable and tree.splits.get("train") and not any(usable[split].values()):
            out[split] = (f"data.{key} is {getattr(data, key)}: set it above 0 (e.g. 0.1) to carve {split}/ off "
                          f"train/" if split in tree.carved else f"add images to {split}/ in data.source")
    return out


def _duplicate_groups(scans: list[FileScan]) -> list[list[str]]:
    by_hash: dict[str, list[str]] = defaultdict(list)
    for s in scans:
        by_hash[s.sha256].append(s.path)
    return sorted(sorted(paths) for paths in by_hash.values() if len(paths) > 1)


def _duplicate_finding(group: list[str], strict: bool, label: dict[str, str]) -> Finding:
    splits = [split for split in SPLITS if any(p.startswith(f"{split}/") for p in group)]
    labels = sorted({label[p] for p in group})
    where = f"across splits {', '.join(splits)} (leaks into scoring)" if len(splits) > 1 else f"within {splits[0]}"
    clash = f"; labelled {' and '.join(labels)}" if len(labels) > 1 else ""
    return Finding("duplicates", "error" if strict else "warning",
                   f"identical files {where}: {' = '.join(group)}{clash}.")


def _near_duplicate_finding(pair: NearDuplicate, strict: bool, label: dict[str, str]) -> Finding:
    a, b = pair.splits
    where = f"across splits {a} and {b} (leaks into scoring)" if pair.cross_split else f"within {a}"
    clash = f"; labelled {label[pair.a]} and {label[pair.b]}" if label[pair.a] != label[pair.b] else ""
    return Finding("near_duplicates", "error" if strict and pair.cross_split else "warning",
                   f"near-duplicates {where}, pHash distance {pair.distance}: {pair.a} ~ {pair.b}{clash}.")


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


def _build_report(tree: DatasetTree, rec: Reconciled, usable: dict[str, dict[str, list[FileScan]]],
                  classes: list[str], skipped: list[FileScan], groups: list[list[str]], pairs: list[NearDuplicate],
                  findings: list[Finding], data: DataParams) -> dict[str, Any]:
    ok = [s for by_class in usable.values() for scans in by_class.values() for s in scans]
    within = sum(1 for g in groups if len({p.split("/")[0] for p in g}) == 1)
    n_errors = sum(f.level == "error" for f in findings)
    return {
        "accepted": n_errors == 0, "n_errors": n_errors, "n_warnings": len(findings) - n_errors,
        "n_classes": len(classes), "classes": classes,
        "class_aliases": dict(sorted(data.class_aliases.items())),
        "dropped_classes": {name: dict(sorted(counts.items())) for name, counts in sorted(rec.dropped.items())},
        "splits": {split: _split_stats(usable[split]) for split in SPLITS if split in usable},
        "missing_classes": {split: sorted(set(classes) - set(by_class))
                            for split, by_class in rec.splits.items() if set(classes) - set(by_class)},
        "converted": dict(sorted(Counter(k for s in ok for k in _kinds(s)).items())),
        "duplicates": {"within_split": within, "cross_split": len(groups) - within, "groups": groups[:LIST_CAP]},
        "near_duplicates": summary(pairs, max_distance=data.near_duplicate_distance, cap=LIST_CAP),
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
        raise VitpipeError(f"{root}: not a folder; pass a dataset folder (train/<class>/ with optional "
                           f"valid/ and test/, or <class>/ folders), e.g. data/raw or your own photos.")
    tree = list_tree(root, carve_with=data)
    rec = reconcile(tree.splits, data.class_aliases, data.drop_classes)  # dropped classes are never read
    label = {p: name for by_class in rec.splits.values() for name, images in by_class.items() for p in images}
    paths = sorted(label, key=lambda p: (SPLITS.index(p.split("/", 1)[0]), p))  # walk order: train, valid, test
    near = data.near_duplicate_distance >= 0
    scans = {s.path: s for s in scan_files(root, paths, workers=data.workers, files=tree.files, phash=near)}
    bad = [scans[p] for p in paths if not scans[p].ok]
    skip = data.bad_images == "skip"
    findings = _layout_findings(tree)
    findings += [Finding("unreadable", "warning" if skip else "error",
                         f"{s.path}: {s.error}{' (skipped)' if skip else ''}") for s in bad]
    usable = {split: {name: [scans[p] for p in images if scans[p].ok] for name, images in by_class.items()}
              for split, by_class in rec.splits.items()}
    classes = sorted(rec.splits.get("train", {}))
    if tree.splits.get("train") and not classes:
        findings.append(Finding("classes", "error", "data.drop_classes leaves no class in train/; drop fewer."))
    empty = _empty_splits(tree, usable, data)  # split -> the fix
    findings += _class_findings(rec, usable, classes, data) + [
        Finding("splits", "error", f"{split}/: no images ({_NEEDS[split]})") for split in empty]
    ok = [scans[p] for p in paths if scans[p].ok]
    groups = _duplicate_groups(ok)
    findings += [_duplicate_finding(g, data.strict, label) for g in groups]
    pairs = near_duplicates([s.path for s in ok], [s.phash for s in ok], [s.sha256 for s in ok],
                            max_distance=data.near_duplicate_distance) if near else []
    findings += [_near_duplicate_finding(p, data.strict, label) for p in pairs]
    findings.sort(key=lambda f: list(CHECKS).index(f.check))  # stable: keeps walk order within a check
    report = _build_report(tree, rec, usable, classes, bad if skip else [], groups, pairs, findings, data)
    unknown = unknown_folders(rec.splits, rec.folders, classes) if classes else {}
    fixes = {"classes": class_fix(unknown, classes, report["missing_classes"], aliases=data.class_aliases,
                                  drop=data.drop_classes)} if unknown else {}
    if empty:
        fixes["splits"] = "; ".join(empty.values())
    if control_messages(rec):
        fixes["classes"] = "; ".join(filter(None, (control_fix(rec), fixes.get("classes"))))
    index = None
    if report["accepted"]:
        ids = {name: i for i, name in enumerate(classes)}
        where = {rel: path.relative_to(root).as_posix() for rel, path in tree.files.items()}
        index = DatasetIndex(root=root, classes=tuple(classes), splits={
            split: tuple(sorted((Sample(where[s.path], ids[name], s.sha256) for name, group in usable[split].items()
                                 for s in group), key=lambda sample: sample.path))
            for split in SPLITS}, class_aliases=dict(data.class_aliases), dropped_classes=tuple(sorted(rec.dropped)))
    relocated = any(path != root / rel for rel, path in tree.files.items())
    return CheckResult(root=root, index=index, report=report, fixes=fixes, layout=tree.layout, relocated=relocated,
                       findings=tuple(findings))


# Check id -> (singular, plural) of what its errors count, and the fix named in a refusal.
_REFUSALS = {
    "splits": (("split problem", "split problems"),
               "add a train/ folder of class folders, or point at a folder of class folders (valid/ and "
               "test/ are carved off train when missing: data.val_fraction, data.test_fraction)"),
    "n_classes": (("dataset with one class", "datasets with one class"),
                  "add a folder of another class's images to train/ (and to valid/ and test/)"),
    "classes": (("class problem", "class problems"), "fix data.class_aliases or data.drop_classes as said"),
    "unreadable": (("unreadable image", "unreadable images"), "set data.bad_images: skip"),
    "duplicates": (("group of identical files", "groups of identical files"),
                   "remove the copies or set data.strict: false"),
    "near_duplicates": (("near-duplicate pair across splits", "near-duplicate pairs across splits"),
                        "remove one image of each pair, or set data.strict: false (or lower "
                        "data.near_duplicate_distance if they are distinct photos)"),
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
            fixes.append(result.fixes.get(check, fix))
    return "; ".join(parts), fixes


def refused(result: CheckResult) -> VitpipeError:
    """The one-line error for a refused dataset: what (the first example of each check), how to fix."""
    reasons, fixes = refusal_reasons(result)
    return VitpipeError(f"{result.root}: refused: {reasons}. To fix: {'; '.join(fixes)}; see "
                        f"`vitpipe check-data {result.root}` for the full report.")


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
    lines = [f"Dataset check of {result.root}: {report['n_classes']} classes (from train/)",
             f"Layout: {result.layout}" + ("; paths below are as data/raw will hold them" if result.relocated else ""),
             "",
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


def totals(report: dict[str, Any]) -> dict[str, Any]:
    """The report's headline (``metrics/data_totals.json``, DVC metrics): a few counts, never per class,
    so ``dvc exp show`` stays readable whatever the number of classes. The rest is ``metrics/data.json``."""
    return {"classes": report["n_classes"], "warnings": report["n_warnings"],
            "cross_split_duplicates": report["duplicates"]["cross_split"],
            "cross_split_near_duplicates": report["near_duplicates"]["cross_split"],
            "skipped_images": report["n_skipped_images"]}


def run_split_check(root: Path, data: DataParams, *, index_path: Path, report_path: Path,
                    totals_path: Path | None = None) -> DatasetIndex:
    """The split-check stage: writes the index, the report and its :func:`totals` (when
    ``totals_path`` is given) only for an accepted dataset.

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
        raise refused(result)
    result.index.save(index_path)
    write_json(report_path, result.report)
    if totals_path is not None:
        write_json(totals_path, totals(result.report))
    counts = ", ".join(f"{s['images']} {split}" for split, s in result.report["splits"].items())
    logger.info("%s: accepted: %d classes, %s images; %d warnings", root, result.report["n_classes"],
                counts, len(result.warnings))
    return result.index
