"""Tests a reviewer trusts: paired t-tests against the baseline, Holm's correction over a table's methods, and
the smallest gain a table can resolve (minimal detectable effect) with the seeds it has.

Conventions (stated in the report):
- a method is compared with the no-distillation row of the same table and student over the seeds both ran
  (paired: seed s of the method against seed s of the baseline): two-sided paired t-test, ``scipy.stats.ttest_rel``;
- the p-values of all methods of one table and student form one family, adjusted by Holm's step-down procedure
  (Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Statist. 6, 1979), as
  ``statsmodels.stats.multitest.multipletests(method="holm")`` computes it; a method with fewer than two common
  seeds has no test and is not part of the family;
- a gain is significant when its Holm-adjusted p-value is below ALPHA;
- the minimal detectable effect (MDE) is the true mean paired gain a two-sided paired t-test at ALPHA detects with
  probability POWER, from the exact noncentral t distribution (``statsmodels.stats.power.TTestPower``), times the
  per-seed standard deviation of the paired differences pooled over the table's methods.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping

import numpy as np
from scipy import stats

#: Two-sided significance level of the paired tests and of the detectable effect.
ALPHA = 0.05
#: Probability with which the detectable effect is detected.
POWER = 0.80
#: The multiple-comparison correction, as the report names it.
CORRECTION = "Holm"
#: Beyond this many seeds a claimed gain is called unresolvable in practice.
MAX_SEEDS = 1000


def finite(value) -> bool:
    return value is not None and isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value)


def common_seeds(values: Mapping[int, float], baseline: Mapping[int, float]) -> list[int]:
    """The seeds both a method and the baseline finished with a finite number, sorted."""
    return sorted(s for s, v in values.items() if finite(v) and s in baseline and finite(baseline[s]))


def paired_test(values: Mapping[int, float], baseline: Mapping[int, float]) -> tuple[float, int]:
    """Two-sided paired t-test of a method against the baseline over their common seeds: (p-value, pairs).

    ``scipy.stats.ttest_rel`` on the per-seed numbers; NaN with fewer than two pairs (no test is possible).
    """
    seeds = common_seeds(values, baseline)
    if len(seeds) < 2:
        return math.nan, len(seeds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical differences: t = ±inf, p = 0, as scipy says
        result = stats.ttest_rel([values[s] for s in seeds], [baseline[s] for s in seeds])
    return float(result.pvalue), len(seeds)


def holm(p_values: Iterable[float]) -> list[float]:
    """Holm-adjusted p-values of one family, in the given order; NaN entries (no test) stay NaN and are not
    counted in the family's size."""
    p_values = [float(p) if finite(p) else math.nan for p in p_values]
    tested = [i for i, p in enumerate(p_values) if math.isfinite(p)]
    adjusted = [math.nan] * len(p_values)
    if tested:
        from statsmodels.stats.multitest import multipletests

        corrected = multipletests([p_values[i] for i in tested], alpha=ALPHA, method="holm")[1]
        for i, p in zip(tested, corrected):
            adjusted[i] = float(p)
    return adjusted


def pooled_sd(groups: Iterable[Iterable[float]]) -> tuple[float, int, int]:
    """Pooled sample standard deviation of several groups, sqrt(Σ(n_i − 1)·s_i² / Σ(n_i − 1)):
    (sd, degrees of freedom, groups that contributed). A group of one value contributes nothing; NaN without any."""
    sum_squares, dof, used = 0.0, 0, 0
    for group in groups:
        array = np.asarray([v for v in group if finite(v)], dtype=float)
        if array.size < 2:
            continue
        sum_squares += float(((array - array.mean()) ** 2).sum())
        dof += int(array.size) - 1
        used += 1
    if dof == 0:
        return math.nan, 0, 0
    return math.sqrt(sum_squares / dof), dof, used


def _standardised_effect(pairs: int, alpha: float, power: float) -> float:
    from statsmodels.stats.power import TTestPower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(TTestPower().solve_power(effect_size=None, nobs=pairs, alpha=alpha, power=power,
                                              alternative="two-sided"))


def detectable_effect(sd: float, pairs: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimal detectable effect (in the units of ``sd``) of a two-sided paired t-test on ``pairs`` seeds.

    Solves power(d) = ``power`` for the standardised effect d with the noncentral t distribution (n − 1 degrees
    of freedom, noncentrality d·√n), then scales by ``sd``. NaN with fewer than two pairs or no finite ``sd``.
    """
    if pairs < 2 or not finite(sd):
        return math.nan
    return _standardised_effect(int(pairs), alpha, power) * float(sd)


def seeds_to_resolve(effect: float, sd: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """The fewest seeds whose detectable effect is at most ``|effect|`` (at least 2); None when the effect is 0,
    unknown, or needs more than MAX_SEEDS."""
    if not finite(effect) or not finite(sd) or effect == 0:
        return None
    if sd == 0:
        return 2
    target = abs(float(effect))

    def resolves(n: int) -> bool:
        return detectable_effect(sd, n, alpha, power) <= target

    if not resolves(MAX_SEEDS):
        return None
    low, high = 2, MAX_SEEDS  # the detectable effect falls as seeds are added: bisect for the first that resolves
    while low < high:
        middle = (low + high) // 2
        if resolves(middle):
            high = middle
        else:
            low = middle + 1
    return low
