"""Signal or noise: paired bootstrap and exact McNemar on hand-checked toy predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vitpipe.report.significance import (
    compare,
    markdown_section,
    mcnemar_exact,
    paired_bootstrap,
    why_not_paired,
)


def _predictions(outcomes: dict[str, str]) -> pd.DataFrame:
    """One row per image; ``outcomes[class]`` is a string of 1 (right) and 0 (wrong), one per image."""
    rows = []
    for name, marks in outcomes.items():
        for i, mark in enumerate(marks):
            rows.append({"path": f"test/{name}/{i:02d}.jpg", "actual": name,
                         "predicted": name if mark == "1" else "OTHER", "confidence": 0.5})
    return pd.DataFrame(rows)


# Class A: the base gets 2 of 10 right, the head all 10: 8 fixed, 0 broken.
# Class B: the base gets 5 of 10 right; the head breaks image 0 and fixes images 5 and 6: 2 fixed, 1 broken.
BASE = _predictions({"A": "1100000000", "B": "1111100000"})
HEAD = _predictions({"A": "1111111111", "B": "0111111000"})

# Exact McNemar by hand: under "no difference" each discordant image is a fair coin; the two-sided
# p-value is twice the probability of the rarer side, capped at 1.
P_A = 2 * 0.5**8                           # 8 fixed, 0 broken: 2 * C(8,0)/2^8 = 0.0078125
P_B = 1.0                                  # 2 fixed, 1 broken: 2 * (C(3,0)+C(3,1))/2^3 = 1.0
P_ALL = 2 * (1 + 11) / 2**11               # 10 fixed, 1 broken: 2 * (C(11,0)+C(11,1))/2^11 = 0.01171875
# Benjamini-Hochberg over the 2 classes tested, by hand: the smaller p times 2/1, the larger times 2/2.
ADJ_A, ADJ_B = min(P_A * 2 / 1, 1.0), 1.0  # 0.015625, 1.0


def test_exact_mcnemar_matches_the_hand_computed_binomial_tails():
    assert mcnemar_exact(broken=0, fixed=8) == pytest.approx(0.0078125)
    assert mcnemar_exact(broken=8, fixed=0) == pytest.approx(0.0078125)  # two-sided: symmetric
    assert mcnemar_exact(broken=1, fixed=2) == pytest.approx(1.0)
    assert mcnemar_exact(broken=1, fixed=10) == pytest.approx(0.01171875)
    assert mcnemar_exact(broken=2, fixed=4) == pytest.approx(2 * (1 + 6 + 15) / 64)  # 0.6875
    assert mcnemar_exact(broken=0, fixed=0) == 1.0  # nothing changed: nothing to test


def test_overall_and_per_class_changes_on_the_toy_predictions():
    result = compare(BASE, HEAD)
    o = result.overall
    assert (o.n, o.base_correct, o.head_correct, o.fixed, o.broken) == (20, 7, 16, 10, 1)
    assert o.difference == pytest.approx(9 / 20)
    assert o.p_value == pytest.approx(P_ALL) and o.distinguishable
    a, b = result.per_class["A"], result.per_class["B"]
    assert (a.fixed, a.broken, a.p_value) == (8, 0, pytest.approx(P_A))
    assert (b.fixed, b.broken, b.p_value) == (2, 1, pytest.approx(P_B))
    assert result.adjusted_p == pytest.approx({"A": ADJ_A, "B": ADJ_B})
    assert result.flagged() == ["A"]


def test_a_class_significant_alone_is_not_flagged_after_the_adjustment():
    # 6 fixed, 0 broken: p = 2/64 = 0.03125 < 0.05 alone; with 3 classes tested, BH gives
    # 0.03125 * 3/1 = 0.09375, so it is not flagged.
    base = _predictions({"A": "000000", "B": "10", "C": "10"})
    head = _predictions({"A": "111111", "B": "01", "C": "01"})
    result = compare(base, head)
    assert result.per_class["A"].p_value == pytest.approx(2 / 64)
    assert result.adjusted_p["A"] == pytest.approx(3 * 2 / 64)
    assert result.flagged() == []


def test_the_paired_bootstrap_is_seeded_and_brackets_the_change():
    base_ok = BASE["actual"].eq(BASE["predicted"]).to_numpy()
    head_ok = HEAD["actual"].eq(HEAD["predicted"]).to_numpy()
    low, high = paired_bootstrap(base_ok, head_ok)
    assert (low, high) == paired_bootstrap(base_ok, head_ok)  # same inputs, same interval
    few = [paired_bootstrap(base_ok, head_ok, seed=s, n_resamples=30) for s in range(5)]
    assert len(set(few)) > 1  # it is random (30 resamples): the seed is what makes it repeatable
    assert few == [paired_bootstrap(base_ok, head_ok, seed=s, n_resamples=30) for s in range(5)]
    # By hand: the differences are ten +1, one -1 and nine 0: mean 0.45, population sd
    # sqrt(11/20 - 0.45^2) = 0.5895, standard error 0.5895/sqrt(20) = 0.1318, so the interval is
    # close to the normal one, 0.45 -+ 1.96 * 0.1318 = [0.19, 0.71] (resampled means are multiples of 1/20).
    assert low == pytest.approx(0.19, abs=0.06) and high == pytest.approx(0.71, abs=0.06)
    assert paired_bootstrap(base_ok, base_ok) == (0.0, 0.0)
    everything_fixed = paired_bootstrap(np.zeros(5, bool), np.ones(5, bool))
    assert everything_fixed == pytest.approx((1.0, 1.0))


def test_the_comparison_does_not_depend_on_the_row_order():
    shuffled = HEAD.sample(frac=1.0, random_state=3)
    assert compare(BASE, shuffled) == compare(BASE, HEAD)


def test_test_sets_that_differ_are_not_compared():
    assert why_not_paired(BASE, HEAD) is None
    assert "1 image(s) only at the base, 0 only in this commit" in why_not_paired(BASE, HEAD.iloc[1:])
    relabelled = HEAD.assign(actual=HEAD["actual"].where(HEAD.index != 0, "B"))
    assert "1 image(s) have another label" in why_not_paired(BASE, relabelled)
    assert "lists an image twice" in why_not_paired(BASE, pd.concat([HEAD, HEAD.iloc[:1]]))
    assert "no path column" in why_not_paired(BASE.drop(columns="path"), HEAD)
    text = "\n".join(markdown_section(BASE, HEAD.iloc[1:], base_name="main"))
    assert "Not compared image by image: the test sets differ" in text
    assert "McNemar" not in text and "points" not in text  # no numbers across different test sets


def test_the_section_says_in_words_whether_the_change_is_signal_or_noise():
    text = "\n".join(markdown_section(BASE, HEAD, base_name="main"))
    assert "On the same 20 test images: accuracy 0.3500 at `main`, 0.8000 here, a change of **+45.0 points**" in text
    assert "10 fixed, 1 broken; exact McNemar test p = 0.0117" in text
    assert "**Distinguishable from noise** (p = 0.0117 < 0.05; the interval excludes 0)" in text
    assert "**1 distinguishable from noise**: A." in text
    assert ("| class | test images | accuracy at main | accuracy here | change (points) | fixed | broken | "
            "McNemar p | adjusted p | verdict |") in text  # no blank header
    assert "Per class (2 classes with a changed image, all 2 shown;" in text
    assert "| A | 10 | 0.200 | 1.000 | +80.0 | 8 | 0 | 0.00781 | 0.0156 | **signal** |" in text
    assert "| B | 10 | 0.500 | 0.600 | +10.0 | 2 | 1 | 1 | 1 | noise |" in text

    small_base, small_head = _predictions({"A": "1100"}), _predictions({"A": "1011"})  # 2 fixed, 1 broken
    text = "\n".join(markdown_section(small_base, small_head, base_name="main"))
    assert "**Not distinguishable from noise** (p = 1 ≥ 0.05; the interval includes 0)" in text
    assert "no class's change is distinguishable from noise" in text

    text = "\n".join(markdown_section(BASE, BASE, base_name="main"))
    assert "**No change**" in text and "Per class" not in text
    assert "has no predictions to compare with" in "\n".join(markdown_section(None, HEAD, base_name="main"))


def test_a_class_called_noise_only_after_the_adjustment_says_why_and_a_cut_table_says_so():
    """Issue 21, item 7: 0/12 -> 8/12 (p = 0.0078 alone) among 8 changed classes was labelled "noise"
    without a word; a 5-row table sat under "Per class (8 with a changed image...)"."""
    base = {"C": "0" * 12, **{f"K{k}": "10" for k in range(7)}}
    head = {"C": "1" * 8 + "0" * 4, **{f"K{k}": "01" for k in range(7)}}  # each K: 1 fixed, 1 broken
    text = "\n".join(markdown_section(_predictions(base), _predictions(head), base_name="main", top=5))
    assert "Per class (8 classes with a changed image, the 5 with the smallest adjusted p shown;" in text
    assert "| C | 12 | 0.000 | 0.667 | +66.7 | 8 | 0 | 0.00781 | 0.0625 | noise after the adjustment |" in text
    note = text.split('"Noise after the adjustment" (C)')[1]
    assert "with 8 classes tested about 0.4 would reach p < 0.05 by chance" in note
    assert "C's 0.00781 becomes 0.0625" in note
    assert len([line for line in text.splitlines() if line.startswith("| K")]) == 4  # 5 rows: C and 4 of K
