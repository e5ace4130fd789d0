"""Forecast accuracy metrics (numpy only). ``q`` is [m, 3] with P10, P50, P90."""

from __future__ import annotations

import numpy as np

QUANTILES = (0.1, 0.5, 0.9)


def mape(y: np.ndarray, p50: np.ndarray) -> float:
    """Mean absolute percentage error, in percent (rows with y == 0 are skipped)."""
    ok = y != 0
    return float(np.mean(np.abs(p50[ok] - y[ok]) / np.abs(y[ok])) * 100.0)


def mae(y: np.ndarray, p50: np.ndarray) -> float:
    return float(np.mean(np.abs(p50 - y)))


def rmae(y: np.ndarray, p50: np.ndarray) -> float:
    """MAE relative to the range of the actuals (OpenSTEF's rMAE)."""
    span = float(np.max(y) - np.min(y))
    return mae(y, p50) / span if span > 0 else float("nan")


def pinball(y: np.ndarray, q: np.ndarray) -> float:
    """Mean pinball loss over P10, P50 and P90, in MW."""
    losses = []
    for j, tau in enumerate(QUANTILES):
        d = y - q[:, j]
        losses.append(np.mean(np.maximum(tau * d, (tau - 1) * d)))
    return float(np.mean(losses))


def coverage(y: np.ndarray, q: np.ndarray) -> float:
    """Fraction of actuals inside [P10, P90]."""
    return float(np.mean((y >= q[:, 0]) & (y <= q[:, 2])))


def all_metrics(y: np.ndarray, q: np.ndarray) -> dict[str, float]:
    return {
        "mape": mape(y, q[:, 1]),
        "mae": mae(y, q[:, 1]),
        "rmae": rmae(y, q[:, 1]),
        "pinball": pinball(y, q),
        "coverage_80": coverage(y, q),
    }
