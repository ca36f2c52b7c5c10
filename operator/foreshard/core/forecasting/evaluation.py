"""Rolling-origin evaluation of the forecaster against simple baselines (pure; no I/O).

The last `test_share` of a series is the test region. Forecasts are made at up to
`max_origins` evenly spaced origins in it, for steps 1..horizon (steps past the end of the
series are not scored). Foreshard's model is refitted at `refits` staggered points, each fit
seeing only the data before it; between refits its state is rolled forward with the data, as
the operator does between refits. Errors are MASE: mean absolute error over all scored
(origin, step) pairs divided by the in-sample mean absolute one-step change, so that methods
compare on one scale per series.

Baselines: naive (last value), seasonal naive (same time one day earlier) and simple
exponential smoothing with its parameter fitted in-sample (statsmodels) on the training part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from foreshard.core.forecasting import models, selection, statistical
from foreshard.core.forecasting.intervals import quantile_paths
from foreshard.core.forecasting.models import IntArray
from foreshard.core.forecasting.types import InsufficientHistory
from foreshard.core.series import FloatArray, Series

FORESHARD = "foreshard"
NAIVE = "naive"
SEASONAL_NAIVE = "seasonal_naive"
SES = "ses"
BASELINES = (NAIVE, SEASONAL_NAIVE, SES)
MIN_EVALUATION = 10  # intervals: a few to fit on, a few to score


@dataclass(frozen=True)
class SeriesResult:
    key: str
    horizon_steps: int
    origins: int
    mase: dict[str, float]  # method -> MASE; seasonal naive absent when the series is under a day
    coverage_p90: float  # share of scored actuals at or below the forecast 0.9 quantile
    models: list[str] = field(default_factory=list)  # model chosen at each refit

    @property
    def best_baseline(self) -> float:
        return min(self.mase[m] for m in BASELINES if m in self.mase)

    @property
    def ratio_vs_best_baseline(self) -> float:
        return self.mase[FORESHARD] / self.best_baseline if self.best_baseline > 0 else 1.0


@dataclass(frozen=True)
class Paths:
    """Point forecasts (origins x horizon) per method, the 0.9 quantile, and the actuals."""

    origins: IntArray
    actual: FloatArray
    points: dict[str, FloatArray]
    upper: FloatArray
    models: list[str]


def origins_for(n: int, test_share: float, max_origins: int) -> IntArray:
    start = max(2, n - max(1, int(np.ceil(test_share * n))))
    count = min(n - start, max_origins)
    return np.unique(np.linspace(start, n - 1, count).round().astype(np.int64))


def development_split(series: Series, test_share: float) -> Series:
    """The series without its test region: evaluating this scores the window before the test
    window, which is where choices are tuned, so that the reported test numbers stay unseen."""
    keep = len(series) - max(1, int(np.ceil(test_share * len(series))))
    return Series(series.key, series.start_s, series.step_s, series.values[:keep])


def ses_alpha(train: FloatArray) -> float:
    """SES smoothing level fitted in-sample by statsmodels (the published baseline)."""
    alpha = statistical.fit_ses(train)
    return 1.0 if alpha is None else alpha


def baseline_paths(
    y: FloatArray, train_end: int, step_s: float, origins: IntArray, horizon: int
) -> dict[str, FloatArray]:
    flat = models.Spec(models.LEVEL, alpha=1.0)
    out = {NAIVE: models.level_paths(y, flat, None, 0, origins, horizon)}
    day = 86_400.0 / step_s
    if abs(day - round(day)) < 1e-9 and origins[0] > round(day):
        out[SEASONAL_NAIVE] = models.snaive_paths(y, round(day), origins, horizon)
    ses = models.Spec(models.LEVEL, alpha=ses_alpha(y[:train_end]))
    out[SES] = models.level_paths(y, ses, None, 0, origins, horizon)
    return out


def foreshard_paths(
    y: FloatArray, phase_base: int, step_s: float, origins: IntArray, horizon: int, refits: int
) -> tuple[FloatArray, FloatArray, list[str]]:
    """Point and 0.9-quantile forecasts with staggered refits; the model names chosen."""
    points = np.zeros((len(origins), horizon))
    upper = np.zeros((len(origins), horizon))
    names: list[str] = []
    for block in np.array_split(np.arange(len(origins)), max(1, min(refits, len(origins)))):
        if len(block) == 0:
            continue
        at = origins[block]
        fitted = selection.fit(y[: at[0]], phase_base, step_s, horizon, statistical_models=True)
        points[block] = selection.combined_paths(y, fitted, phase_base, at, horizon)
        upper[block] = quantile_paths(points[block], fitted.residuals, 0.9, fitted.samples)
        names.append(fitted.name)
    return points, upper, names


def evaluate_paths(
    series: Series, horizon: int, test_share: float = 0.2, max_origins: int = 200, refits: int = 20
) -> Paths:
    y = series.cleaned().values
    if len(y) < MIN_EVALUATION:
        raise InsufficientHistory(f"{series.key}: {len(y)} intervals; an evaluation needs {MIN_EVALUATION}")
    origins = origins_for(len(y), test_share, max_origins)
    targets = models.target_index(origins, horizon)
    actual = np.where(targets < len(y), y[np.clip(targets, 0, len(y) - 1)], np.nan)
    phase_base = round(series.start_s / series.step_s)
    points = baseline_paths(y, int(origins[0]), series.step_s, origins, horizon)
    ours, upper, names = foreshard_paths(y, phase_base, series.step_s, origins, horizon, refits)
    points[FORESHARD] = ours
    return Paths(origins, actual, points, upper, names)


def evaluate(
    series: Series, horizon: int, test_share: float = 0.2, max_origins: int = 200, refits: int = 20
) -> SeriesResult:
    paths = evaluate_paths(series, horizon, test_share, max_origins, refits)
    y = series.cleaned().values
    scale = float(np.mean(np.abs(np.diff(y[: paths.origins[0]])))) or 1.0
    scored = np.isfinite(paths.actual)
    mase = {m: float(np.mean(np.abs(p - paths.actual)[scored])) / scale for m, p in paths.points.items()}
    coverage = float(np.mean((paths.actual <= paths.upper + 1e-9)[scored]))
    return SeriesResult(series.key, horizon, len(paths.origins), mase, coverage, paths.models)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise(results: list[SeriesResult], horizon_s: float) -> dict[str, object]:
    """The forecast-eval JSON: means over series, the worst series, and per-series detail."""
    methods = sorted({m for r in results for m in r.mase})
    steps = [r.horizon_steps for r in results]
    return {
        "series": len(results),
        "horizon_s": horizon_s,
        "horizon_steps": max(set(steps), key=steps.count) if steps else 0,
        "mase": {m: _mean([r.mase[m] for r in results if m in r.mase]) for m in methods},
        "ratio_vs_seasonal_naive": _mean(
            [r.mase[FORESHARD] / r.mase[SEASONAL_NAIVE] for r in results if r.mase.get(SEASONAL_NAIVE)]
        ),
        "ratio_vs_best_baseline": _mean([r.ratio_vs_best_baseline for r in results]),
        "worst_series_ratio_vs_best_baseline": max((r.ratio_vs_best_baseline for r in results), default=None),
        "coverage_p90": _mean([r.coverage_p90 for r in results]),
        "per_series": {
            r.key: {
                "horizon_steps": r.horizon_steps,
                "origins": r.origins,
                "mase": {m: round(v, 4) for m, v in r.mase.items()},
                "ratio_vs_best_baseline": round(r.ratio_vs_best_baseline, 4),
                "coverage_p90": round(r.coverage_p90, 4),
                "model": r.models[-1] if r.models else "",
            }
            for r in results
        },
    }
