"""``vitpipe pr-report``: a pull request's report from what it commits, without training.

By default nothing runs: the report compares the committed metrics with the base's
(:func:`vitpipe.report.report.write_report`), and a freshness check says whether those metrics
belong to the committed params and code. A CI checkout has no DVC data (no cache; a remote may
not be configured), so the check decides as ``dvc repro --allow-missing --dry`` does: from
``dvc status``, an input or output that is only *missing* does not count; a changed param, code
file, command or git-tracked output does, and so does a stage whose recorded input differs from
what the stage before it recorded as its output (both in ``dvc.lock``). Every stage after a stale
one is stale too. ``dvc repro --dry`` itself is not used: in DVC 3.67 it fails with "No such file"
on a changed stage whose data is missing (it hashes the inputs for a run-cache lookup).

With a DVC remote configured, the check also asks the remote whether it holds this commit's
outputs (``dvc status --cloud``), so reviewers can ``dvc pull`` them. ``retrain=True`` (opt-in)
reproduces the pipeline first (``dvc repro``, with ``--pull`` when a remote is configured, so
unchanged stages are pulled and the run-cache can restore the rest) and says so in the report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vitpipe.errors import VitpipeError
from vitpipe.report.report import (
    _dvc_command,
    _git,
    _run,
    git_root,
    resolve_revision,
    write_report,
)

logger = logging.getLogger(__name__)

_MISSING_DEP = ("deleted",)  # what `--allow-missing` ignores: data absent from this checkout
_MISSING_OUT = ("deleted", "not in cache")


@dataclass(frozen=True)
class Freshness:
    """Whether the committed results belong to the committed params and code."""

    stale: dict[str, list[str]]  # stage -> why, in pipeline order
    stale_files: list[str] = field(default_factory=list)  # git-tracked outputs of stale stages
    remote: str | None = None  # the default DVC remote, if one is configured
    not_in_remote: list[str] = field(default_factory=list)
    remote_error: str | None = None

    @property
    def fresh(self) -> bool:
        return not self.stale


def _dvc(root: Path, *args: str) -> str:
    done = _run([*_dvc_command(), *args], root)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()] or [f"exit status {done.returncode}"]
        raise VitpipeError(f"`dvc {' '.join(args)}` failed in {root}: {lines[-1].strip()}")
    return done.stdout


def read_lock(root: Path) -> dict[str, dict]:
    """The stages recorded in ``dvc.lock`` (empty when there is none)."""
    path = root / "dvc.lock"
    if not path.is_file():
        return {}
    fix = "restore it with `git checkout dvc.lock` or rerun `dvc repro`"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise VitpipeError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); {fix}.") from None
    stages = doc.get("stages", {}) if isinstance(doc, dict) else None
    if not isinstance(stages, dict) or not all(isinstance(s, dict) for s in stages.values()):
        raise VitpipeError(f"{path}: not a dvc.lock (no mapping of stages); {fix}.")
    return stages


def _describe(kind: str, path: str, state: object) -> str:
    if isinstance(state, dict):  # a params file: {param: "modified" | "new" | "deleted"}
        return f"{path}: " + ", ".join(f"{key} {value}" for key, value in state.items())
    return f"{kind} {path} {state}"


def status_reasons(entries: Sequence[object]) -> list[str]:
    """Why one stage of ``dvc status --json`` changed, leaving out data missing from this checkout."""
    reasons = []
    for entry in entries:
        if isinstance(entry, str):  # "changed command", "always changed", "changed checksum"
            reasons.append(entry)
            continue
        for kind, paths in entry.items():
            ignored = _MISSING_DEP if kind == "changed deps" else _MISSING_OUT
            noun = "input" if kind == "changed deps" else "output"
            reasons += [_describe(noun, path, state) for path, state in paths.items()
                        if not (isinstance(state, str) and state in ignored)]
    return reasons


def upstream_mismatches(lock: dict[str, dict]) -> dict[str, list[str]]:
    """Stages whose recorded input differs from the output another stage recorded (``dvc.lock``)."""
    produced = {out["path"]: (name, out.get("md5")) for name, stage in lock.items() for out in stage.get("outs", [])}
    found: dict[str, list[str]] = {}
    for name, stage in lock.items():
        for dep in stage.get("deps", []):
            producer, md5 = produced.get(dep["path"], (None, None))
            if producer is not None and dep.get("md5") != md5:
                found.setdefault(name, []).append(
                    f"input {dep['path']} is not the version `{producer}` recorded (rerun `{name}`)")
    return found


def _depends_on(stage: dict, upstream: dict) -> bool:
    outs = [out["path"] for out in upstream.get("outs", [])]
    return any(dep["path"] == o or dep["path"].startswith(o.rstrip("/") + "/")
               for dep in stage.get("deps", []) for o in outs)


def with_downstream(lock: dict[str, dict], stale: dict[str, list[str]]) -> dict[str, list[str]]:
    """``stale`` plus every stage that (transitively) reads an output of a stale stage, in pipeline order."""
    names = set(stale)
    grew = True
    while grew:
        grew = False
        for name, stage in lock.items():
            if name not in names and any(_depends_on(stage, lock[u]) for u in names if u in lock):
                names.add(name)
                grew = True
    result = {}
    for name in [*lock, *sorted(set(stale) - set(lock))]:
        if name in names:
            after = [u for u in lock if u in names and u != name and name in lock and _depends_on(lock[name], lock[u])]
            result[name] = stale.get(name, []) + (["runs after " + ", ".join(f"`{u}`" for u in after)] if after else [])
    return result


def default_remote(root: Path) -> str | None:
    """The default DVC remote's name, or None when none is set."""
    done = _run([*_dvc_command(), "remote", "default"], root)
    name = done.stdout.strip()
    return name if done.returncode == 0 and name else None


def _not_in_remote(root: Path) -> tuple[list[str], str | None]:
    """Outputs of this commit the default remote lacks, or the error that stopped the check."""
    try:
        status = json.loads(_dvc(root, "data", "status", "--not-in-remote", "--json") or "{}")
    except (VitpipeError, json.JSONDecodeError) as exc:
        return [], str(exc)
    return sorted(status.get("not_in_remote", [])), None


def _tracked(root: Path, paths: list[str]) -> list[str]:
    done = _git(root, "ls-files", "--", *paths) if paths else None
    return sorted(done.stdout.split("\n")[:-1]) if done is not None and done.returncode == 0 else []


def check_freshness(root: Path) -> Freshness:
    """Do the committed results belong to the committed params and code? (no data needed)"""
    lock = read_lock(root)
    try:
        # dvc.yaml's stages only: they make the metrics; the optional export/dvc.yaml stage, when
        # never run, would show as changed in every pull request.
        status = json.loads(_dvc(root, "status", "dvc.yaml", "--json") or "{}")
    except json.JSONDecodeError:
        raise VitpipeError(f"`dvc status dvc.yaml --json` in {root} printed no JSON; is DVC 3 installed?") from None
    stale = {name: reasons for name, entries in status.items() if (reasons := status_reasons(entries))}
    for name, reasons in upstream_mismatches(lock).items():
        stale.setdefault(name, []).extend(reasons)
    stale = with_downstream(lock, stale)
    outputs = [out["path"] for name in stale for out in lock.get(name, {}).get("outs", [])]
    remote = default_remote(root)
    not_in_remote, remote_error = _not_in_remote(root) if remote else ([], None)
    return Freshness(stale=stale, stale_files=_tracked(root, outputs), remote=remote,
                     not_in_remote=not_in_remote, remote_error=remote_error)


def freshness_markdown(check: Freshness, *, retrained: bool) -> list[str]:
    """The report's first section: whether its numbers belong to the committed params and code."""
    if check.fresh:
        out = ["**Results are fresh**: `dvc.lock` matches the committed params, code and outputs of every stage "
               "(`dvc status`, data not downloaded), so the metrics below belong to this commit."]
    else:
        out = ["> [!WARNING]",
               "> **The committed results are STALE**: they do not belong to the committed params and code.",
               ">"]
        out += [f"> - `{name}`: {'; '.join(reasons)}" for name, reasons in check.stale.items()]
        if check.stale_files:
            out += [">", "> Stale files: " + ", ".join(f"`{f}`" for f in check.stale_files) + "."]
        out += [">", "> Run `dvc repro` (or `dvc exp run`), then commit `dvc.lock` and `metrics/`"
                + (" and `dvc push`." if check.remote else ".")]
    if retrained:
        out += ["", "**Reproduced in this CI run** (opt-in): the numbers below come from `dvc repro` here, "
                "not from the commit; the check above is about the commit."]
    if check.remote_error:
        out += ["", f"Could not ask the DVC remote `{check.remote}` what it holds: {check.remote_error}"]
    elif check.not_in_remote:
        out += ["", f"Not in the DVC remote `{check.remote}` (reviewers cannot `dvc pull` them; run `dvc push`): "
                + ", ".join(f"`{p}`" for p in check.not_in_remote) + "."]
    elif check.remote:
        out += ["", f"Every output of this commit is in the DVC remote `{check.remote}` (`dvc pull` gets them)."]
    return out + [""]


def pr_report(base: str, out: Path, *, top: int = 5, repo: Path | None = None, retrain: bool = False) -> Freshness:
    """Writes the pull request's report ``out`` (see :func:`write_report`), headed by the freshness check.

    Args:
        base: git revision of the pull request's base (``origin/main`` in CI).
        out: markdown file to write; its plots go to a folder named after it.
        top: rows in the class tables.
        repo: a path inside the repository (default: the current directory).
        retrain: reproduce the pipeline first (``dvc repro``; ``--pull`` with a remote).
    """
    root = git_root(Path(repo) if repo is not None else Path.cwd())
    resolve_revision(root, base)  # a wrong --base fails before any work
    check = check_freshness(root)
    logger.info("committed results: %s", "fresh" if check.fresh else "STALE (" + ", ".join(check.stale) + ")")
    if retrain:
        logger.info("reproducing the pipeline (retrain requested)")
        _dvc(root, "repro", *(["--pull"] if check.remote else []))
    write_report(base, out, top=top, repo=root, notes=freshness_markdown(check, retrained=retrain))
    return check
