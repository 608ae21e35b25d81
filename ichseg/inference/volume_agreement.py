"""Agreement of estimated bleed volumes with the true (planimetric) ones, in mL, the way clinical
volume studies report it.

For n volumes with true volume t_i and estimate e_i, d_i = e_i - t_i:
- `mae_ml`, `median_ae_ml`: mean and median of |d_i|;
- Bland-Altman (Bland & Altman, Lancet 1986): `bias_ml` = mean d, `loa_low_ml`/`loa_high_ml` =
  bias ∓ 1.96 · SD(d) (sample SD, n - 1), the 95% limits of agreement;
- Lin's concordance correlation coefficient (Lin, Biometrics 1989): `ccc` = 2 s_te /
  (s_t² + s_e² + (mean t - mean e)²) with moments over n; its 95% confidence interval
  (`ccc_low`, `ccc_high`) from Fisher's z = atanh(ccc) with Lin's asymptotic variance, as
  R's epiR::epi.ccc computes it; NaN below 3 volumes or when either set of volumes is constant;
- `within_share`: the share of volumes whose |d_i| is at most `WITHIN_ML` mL or at most
  `WITHIN_FRACTION` of t_i (whichever allows more): a small bleed is judged in mL, a large one
  relative to its size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

WITHIN_ML = 5.0
WITHIN_FRACTION = 0.10
Z_95 = 1.959963984540054  # the standard normal's 97.5th percentile

DEFINITIONS = {
    "mae_ml": "mean |estimate - truth| in mL",
    "median_ae_ml": "median |estimate - truth| in mL",
    "bias_ml": "Bland-Altman bias: mean (estimate - truth) in mL",
    "loa_ml": "Bland-Altman 95% limits of agreement: bias ∓ 1.96 × sample SD of the differences",
    "ccc": "Lin's concordance correlation coefficient (moments over n), 95% CI from Fisher's z "
    "with Lin's asymptotic variance (as epiR::epi.ccc)",
    "within_share": f"share of volumes with |estimate - truth| ≤ {WITHIN_ML:g} mL or ≤ "
    f"{WITHIN_FRACTION:.0%} of the true volume",
}


def concordance(truth: np.ndarray, estimate: np.ndarray) -> tuple[float, float, float]:
    """Lin's CCC of two samples and its 95% confidence interval (NaN where undefined)."""
    n = truth.size
    mean_t, mean_e = truth.mean(), estimate.mean()
    var_t, var_e = truth.var(), estimate.var()
    cov = float(np.mean((truth - mean_t) * (estimate - mean_e)))
    if n < 3 or var_t == 0 or var_e == 0:
        return math.nan, math.nan, math.nan
    ccc = 2 * cov / (var_t + var_e + (mean_t - mean_e) ** 2)
    r = cov / math.sqrt(var_t * var_e)
    if abs(ccc) >= 1 or r == 0:
        return float(ccc), math.nan, math.nan
    u = (mean_t - mean_e) / (var_t * var_e) ** 0.25
    variance = (
        (1 - r**2) * ccc**2 / ((1 - ccc**2) * r**2)
        + 2 * ccc**3 * (1 - ccc) * u**2 / (r * (1 - ccc**2) ** 2)
        - ccc**4 * u**4 / (2 * r**2 * (1 - ccc**2) ** 2)
    ) / (n - 2)
    z, half = math.atanh(ccc), Z_95 * math.sqrt(max(variance, 0.0))
    return float(ccc), math.tanh(z - half), math.tanh(z + half)


def agreement(truth_ml: Sequence[float], estimate_ml: Sequence[float]) -> dict:
    """Every statistic of the module docstring for paired volumes (mL); None where no volume."""
    truth, estimate = np.asarray(truth_ml, float), np.asarray(estimate_ml, float)
    n = int(truth.size)
    if n == 0:
        return {"n": 0}
    diff = estimate - truth
    sd = float(diff.std(ddof=1)) if n > 1 else math.nan
    bias = float(diff.mean())
    ccc, low, high = concordance(truth, estimate)
    within = np.abs(diff) <= np.maximum(WITHIN_ML, WITHIN_FRACTION * truth)
    return {
        "n": n,
        "mae_ml": float(np.abs(diff).mean()),
        "median_ae_ml": float(np.median(np.abs(diff))),
        "bias_ml": bias,
        "sd_diff_ml": sd,
        "loa_low_ml": bias - Z_95 * sd,
        "loa_high_ml": bias + Z_95 * sd,
        "ccc": ccc,
        "ccc_low": low,
        "ccc_high": high,
        "within_share": float(within.mean()),
    }
