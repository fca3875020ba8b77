"""Signal or noise: is the change in test accuracy between two commits more than chance?

Both commits scored the same test images (``metrics/predictions.csv``, matched by ``path``), so
the comparison is paired, image by image:

- the accuracy difference with a 95% **paired bootstrap** interval: the images are resampled
  with replacement and ``mean(head correct - base correct)`` recomputed (:func:`scipy.stats.bootstrap`,
  percentile method, a fixed seed, so the same predictions give the same interval);
- an exact **McNemar test**: only the discordant images carry information, those the base got
  right and the head wrong (``broken``) and the reverse (``fixed``). Under "no difference" each
  discordant image is a fair coin, so the two-sided p-value is the exact binomial test of
  ``fixed`` out of ``broken + fixed`` at 1/2 (:func:`scipy.stats.binomtest`).

A change is called distinguishable from noise when the McNemar p-value is below :data:`ALPHA`.
Per class, the same test runs on the class's images; with many classes some would pass by chance,
so a class is flagged when its p-value, adjusted over the classes tested (Benjamini-Hochberg,
:func:`scipy.stats.false_discovery_control`), is below :data:`ALPHA`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from vitpipe.report.markdown import md_table

ALPHA = 0.05
CONFIDENCE = 0.95
N_RESAMPLES = 10_000
SEED = 0


@dataclass(frozen=True)
class PairedChange:
    """Accuracy of two commits on the same ``n`` images, and whether the change is more than chance."""

    n: int
    base_correct: int
    head_correct: int
    broken: int  # base right, head wrong
    fixed: int  # base wrong, head right
    ci_low: float  # paired bootstrap interval of head - base accuracy
    ci_high: float
    p_value: float  # exact McNemar, two-sided

    @property
    def difference(self) -> float:
        return (self.head_correct - self.base_correct) / self.n

    @property
    def distinguishable(self) -> bool:
        return self.p_value < ALPHA


@dataclass(frozen=True)
class Comparison:
    """The overall change and one per class whose correctness changed on some image."""

    overall: PairedChange
    per_class: dict[str, PairedChange]
    adjusted_p: dict[str, float]  # Benjamini-Hochberg over ``per_class``

    def flagged(self) -> list[str]:
        """Classes whose change is distinguishable from noise after the adjustment."""
        return sorted(c for c, p in self.adjusted_p.items() if p < ALPHA)


def mcnemar_exact(broken: int, fixed: int) -> float:
    """Two-sided exact McNemar p-value; 1.0 when no image changed."""
    if broken + fixed == 0:
        return 1.0
    return float(stats.binomtest(fixed, broken + fixed, 0.5).pvalue)


def paired_bootstrap(base_correct: np.ndarray, head_correct: np.ndarray, *, seed: int = SEED,
                     n_resamples: int = N_RESAMPLES) -> tuple[float, float]:
    """Percentile interval (:data:`CONFIDENCE`) of the accuracy difference, images resampled in pairs."""
    diff = head_correct.astype(np.int8) - base_correct.astype(np.int8)  # (N,) in {-1, 0, 1}
    if not diff.any():
        return 0.0, 0.0  # every resample is 0
    result = stats.bootstrap((diff,), np.mean, n_resamples=n_resamples, confidence_level=CONFIDENCE,
                             method="percentile", rng=np.random.default_rng(seed), batch=1000)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_change(base_correct: np.ndarray, head_correct: np.ndarray, *, seed: int = SEED,
                  n_resamples: int = N_RESAMPLES) -> PairedChange:
    """:class:`PairedChange` of two boolean arrays over the same images, in the same order."""
    broken = int(np.sum(base_correct & ~head_correct))
    fixed = int(np.sum(~base_correct & head_correct))
    low, high = paired_bootstrap(base_correct, head_correct, seed=seed, n_resamples=n_resamples)
    return PairedChange(n=len(base_correct), base_correct=int(base_correct.sum()),
                        head_correct=int(head_correct.sum()), broken=broken, fixed=fixed,
                        ci_low=low, ci_high=high, p_value=mcnemar_exact(broken, fixed))


def why_not_paired(base: pd.DataFrame, head: pd.DataFrame) -> str | None:
    """Why two ``predictions.csv`` cannot be compared image by image, or None when they can."""
    for name, frame in (("the base", base), ("this commit", head)):
        if "path" not in frame.columns:
            return f"{name}'s predictions.csv has no path column"
        if frame["path"].duplicated().any():
            return f"{name}'s predictions.csv lists an image twice"
    base_paths, head_paths = set(base["path"]), set(head["path"])
    if base_paths != head_paths:
        return (f"the test sets differ ({len(base_paths - head_paths)} image(s) only at the base, "
                f"{len(head_paths - base_paths)} only in this commit)")
    labels = pd.merge(base[["path", "actual"]], head[["path", "actual"]], on="path")
    relabelled = int((labels["actual_x"] != labels["actual_y"]).sum())
    if relabelled:
        return f"the test sets differ ({relabelled} image(s) have another label)"
    return None


def compare(base: pd.DataFrame, head: pd.DataFrame, *, seed: int = SEED,
            n_resamples: int = N_RESAMPLES) -> Comparison:
    """Overall and per-class :class:`PairedChange` of two ``predictions.csv`` frames that
    :func:`why_not_paired` accepts."""
    merged = pd.merge(base[["path", "actual", "predicted"]], head[["path", "predicted"]], on="path",
                      suffixes=("_base", "_head")).sort_values("path", kind="stable")
    base_ok = (merged["actual"] == merged["predicted_base"]).to_numpy()
    head_ok = (merged["actual"] == merged["predicted_head"]).to_numpy()
    overall = paired_change(base_ok, head_ok, seed=seed, n_resamples=n_resamples)
    per_class = {}
    for name in sorted(merged["actual"].unique()):
        rows = (merged["actual"] == name).to_numpy()
        if (base_ok[rows] != head_ok[rows]).any():
            per_class[name] = paired_change(base_ok[rows], head_ok[rows], seed=seed, n_resamples=n_resamples)
    adjusted = {}
    if per_class:
        ps = stats.false_discovery_control([c.p_value for c in per_class.values()], method="bh")
        adjusted = {name: float(p) for name, p in zip(per_class, ps)}
    return Comparison(overall=overall, per_class=per_class, adjusted_p=adjusted)


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def _verdict(change: PairedChange) -> str:
    if change.broken + change.fixed == 0:
        return "**No change**: every test image is right or wrong in both, so there is nothing to test."
    interval = "includes 0" if change.ci_low <= 0 <= change.ci_high else "excludes 0"
    if change.distinguishable:
        return (f"**Distinguishable from noise** (p = {change.p_value:.3g} < {ALPHA}; the interval {interval}): "
                f"the change is unlikely to be chance on these images.")
    return (f"**Not distinguishable from noise** (p = {change.p_value:.3g} ≥ {ALPHA}; the interval {interval}): "
            f"a change this size on {change.n} images is within what chance gives; more test images "
            f"would be needed to tell.")


def _verdict_cell(p_value: float, adjusted: float) -> str:
    if adjusted < ALPHA:
        return "**signal**"
    return "noise after the adjustment" if p_value < ALPHA else "noise"


def _class_rows(comparison: Comparison, shown: list[str]) -> list[list[object]]:
    rows = []
    for name in shown:
        c, adjusted = comparison.per_class[name], comparison.adjusted_p[name]
        rows.append([name, c.n, f"{c.base_correct / c.n:.3f}", f"{c.head_correct / c.n:.3f}", _points(c.difference),
                     c.fixed, c.broken, f"{c.p_value:.3g}", f"{adjusted:.3g}", _verdict_cell(c.p_value, adjusted)])
    return rows


def _adjustment_note(comparison: Comparison) -> list[str]:
    """Why a class with p < ALPHA on its own is called noise: the adjustment, in numbers."""
    alone = sorted(c for c, change in comparison.per_class.items()
                   if change.p_value < ALPHA <= comparison.adjusted_p[c])
    if not alone:
        return []
    m = len(comparison.per_class)
    first = comparison.per_class[alone[0]]
    return [f"\"Noise after the adjustment\" ({', '.join(alone)}): p < {ALPHA} for that class alone, but with "
            f"{m} classes tested about {m * ALPHA:.2g} would reach p < {ALPHA} by chance when nothing changed, so "
            f"each p is adjusted for the number tested (Benjamini-Hochberg: {alone[0]}'s {first.p_value:.3g} "
            f"becomes {comparison.adjusted_p[alone[0]]:.3g}), and only an adjusted p below {ALPHA} counts. "
            f"Its change may well be real; these test images cannot tell it from chance.", ""]


def markdown_section(base: pd.DataFrame | None, head: pd.DataFrame, *, base_name: str, top: int = 5,
                     seed: int = SEED) -> list[str]:
    """The report's "Signal or noise?" section: lines of markdown comparing two ``predictions.csv``."""
    out = ["## Signal or noise?", ""]
    if base is None:
        return out + [f"`{base_name}` has no predictions to compare with.", ""]
    reason = why_not_paired(base, head)
    if reason is not None:
        return out + [f"Not compared image by image: {reason}. An accuracy change between different "
                      f"test sets says nothing about the model.", ""]
    comparison = compare(base, head, seed=seed)
    o = comparison.overall
    out += [f"On the same {o.n} test images: accuracy {o.base_correct / o.n:.4f} at `{base_name}`, "
            f"{o.head_correct / o.n:.4f} here, a change of **{_points(o.difference)} points** "
            f"({o.head_correct - o.base_correct:+d} of {o.n} images), 95% interval [{_points(o.ci_low)}, "
            f"{_points(o.ci_high)}] points (paired bootstrap over images, {N_RESAMPLES:,} resamples, seed {seed}).",
            f"Images whose correctness changed: {o.fixed} fixed, {o.broken} broken; exact McNemar test "
            f"p = {o.p_value:.3g}.", "", _verdict(o), ""]
    if not comparison.per_class:
        return out
    flagged = comparison.flagged()
    order = sorted(comparison.per_class, key=lambda c: (comparison.adjusted_p[c], c))
    shown = order[: max(top, len(flagged))]
    which = (f"all {len(shown)} shown" if len(shown) == len(order)
             else f"the {len(shown)} with the smallest adjusted p shown")
    out += [f"Per class ({len(comparison.per_class)} classes with a changed image, {which}; McNemar p-values "
            f"adjusted over those {len(comparison.per_class)}, Benjamini-Hochberg): "
            + (f"**{len(flagged)} distinguishable from noise**: {', '.join(flagged)}." if flagged
               else "no class's change is distinguishable from noise."), ""]
    out += [md_table(["class", "test images", f"accuracy at {base_name}", "accuracy here", "change (points)",
                      "fixed", "broken", "McNemar p", "adjusted p", "verdict"], _class_rows(comparison, shown)), ""]
    return out + _adjustment_note(comparison)
