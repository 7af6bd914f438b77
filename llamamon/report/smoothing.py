"""The smoothed loss line: TensorBoard's debiased exponential moving average, its weight chosen per curve.

TensorBoard smooths a scalar curve with ``s_i = w·s_{i-1} + (1 - w)·x_i`` started at zero and divides by
``1 - w^(i+1)`` (debiasing), so the first points are not dragged towards zero; it applies that to the
points it draws, not to every logged value. The report does the same over the columns it draws (at most
``report.tables.BUCKETS`` per curve), but picks ``w`` from how many there are instead of a fixed slider.
"""

from __future__ import annotations

import math

import numpy as np

MAX_WEIGHT = 0.95


def smoothing_weight(points: int) -> float:
    """EMA weight for a curve of ``points`` drawn points: ``1 - 3/sqrt(points)``, from 0 to 0.95.

    Why from the count: an EMA of weight ``w`` lags about ``1/(1 - w)`` points behind, so a fixed weight
    (α = 0.1, w = 0.9: ten points) was right for a long curve but lagged a third of the run behind on a
    Trainer that logs 31 times. With ``w = 1 - 3/sqrt(n)`` the lag is ``sqrt(n)/3`` points, a shrinking
    share of the run as it gets longer (6 % of 31 points, 1.2 % of 800), and nine points or fewer are
    drawn as they are (w = 0): too few to tell noise from trend.
    """
    if points <= 9:
        return 0.0
    return min(MAX_WEIGHT, 1.0 - 3.0 / math.sqrt(points))


def debiased_ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's smoothing of ``values`` with ``weight``; NaN points stay NaN and do not reset it."""
    y = np.asarray(values, dtype=float)
    out = np.full(len(y), np.nan)
    last, count = 0.0, 0
    for i, v in enumerate(y.tolist()):
        if not math.isfinite(v):
            continue
        last = last * weight + (1.0 - weight) * v
        count += 1
        out[i] = last / (1.0 - weight**count) if weight > 0 else v
    return out
