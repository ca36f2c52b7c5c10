"""Per-series model choice by rolling-origin backtest, and the fitted model it produces.

`fit(y, phase_base, step_s, horizon)` backtests every candidate over the most recent part of
the history (the validation window), keeps the one with the lowest mean absolute error over
steps 1..horizon, and stores the log-space residual quantiles of that backtest per horizon
step, from which calibrated intervals follow (split-conformal style). Seasonal profiles used
in the backtest are estimated only from data before the validation window, so a seasonal
model cannot look good by having seen the days it is scored on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from foreshard.core.forecasting import models
from foreshard.core.forecasting.models import LEVEL, SNAIVE, TSB, IntArray, Spec
from foreshard.core.series import FloatArray

DAY_S = 86_400.0
ALPHAS = (0.01, 0.03, 0.07, 0.15, 0.3, 0.5, 0.75, 1.0)
TSB_SPECS = (
    Spec(TSB, alpha=0.05, beta=0.02),
    Spec(TSB, alpha=0.1, beta=0.05),
    Spec(TSB, alpha=0.2, beta=0.1),
)
RESETS = (1.0, 2.0)  # log1p jump sizes (x2.7, x7.4) that move a level at once
RESET_ALPHAS = (0.07, 0.15, 0.3, 0.5)
MAX_VALIDATION = 2000  # steps; recent behaviour is what the next forecasts face
MAX_ORIGINS = 400  # backtest origins per fit, evenly spaced over the validation window
PROFILE_SEASONS = {1: 28, 7: 6}  # days per season -> how many recent seasons the profile spans
INTERMITTENT_ZEROS = 0.3  # share of empty intervals above which TSB joins the candidates
ENSEMBLE_SIZES = (3, 5, 8)
ENSEMBLE_PREFERENCE = 1.05
RESIDUAL_LEVELS = np.linspace(0.0, 1.0, 201)  # stored so any quantile can be read later


@dataclass(frozen=True)
class Fitted:
    """A chosen model: spec(s), profiles by season, and log1p residual quantiles per step."""

    specs: tuple[Spec, ...]  # one spec, or the members of a median ensemble
    profiles: dict[int, FloatArray]
    residuals: FloatArray  # (len(RESIDUAL_LEVELS), horizon) quantiles of log1p(actual) - log1p(point)
    samples: int  # backtest residuals behind the smallest column: the conformal correction needs it
    scores: dict[str, float] = field(default_factory=dict)  # validation MAE per candidate family
    validation_origins: int = 0

    @property
    def name(self) -> str:
        if len(self.specs) == 1:
            return self.specs[0].name
        return "median(" + ", ".join(s.name for s in self.specs) + ")"

    @property
    def horizon(self) -> int:
        return int(self.residuals.shape[1])


def seasons_for(step_s: float, day_s: float = DAY_S) -> list[int]:
    """Season lengths in steps (daily, weekly) that divide evenly into this step.

    `day_s`: how long a day of the queue's clock is in seconds (a replay compressed 150x has a day
    of 576 s; spec.forecast.timeScale sets it), so the seasons follow the traffic, not the wall.
    """
    out = []
    for days in PROFILE_SEASONS:
        steps = days * day_s / step_s
        if steps >= 2 and abs(steps - round(steps)) < 1e-9:
            out.append(round(steps))
    return out


def paths(
    y: FloatArray,
    spec: Spec,
    profiles: dict[int, FloatArray],
    phase_base: int,
    origins: IntArray,
    horizon: int,
) -> FloatArray:
    """Raw-count forecasts of one spec at each origin."""
    if spec.kind == SNAIVE:
        return models.snaive_paths(y, spec.season, origins, horizon)
    if spec.kind == TSB:
        return models.tsb_paths(y, spec, origins, horizon)
    profile = profiles.get(profile_key(spec)) if spec.season else None
    return models.level_paths(y, spec, profile, phase_base, origins, horizon)


def combined_paths(
    y: FloatArray, fitted: Fitted, phase_base: int, origins: IntArray, horizon: int
) -> FloatArray:
    """Forecasts of a fitted model (median across ensemble members)."""
    stack = [paths(y, s, fitted.profiles, phase_base, origins, horizon) for s in fitted.specs]
    return stack[0] if len(stack) == 1 else np.asarray(np.median(np.stack(stack), axis=0), dtype=np.float64)


def _profiles(y: FloatArray, phase_base: int, step_s: float, day_s: float) -> dict[int, FloatArray]:
    phases = (phase_base + np.arange(len(y))).astype(np.int64)
    out: dict[int, FloatArray] = {}
    for season in seasons_for(step_s, day_s):
        for log in (False, True):
            profile = models.estimate_profile(
                models.transform(y, log), phases, season, PROFILE_SEASONS[round(season * step_s / day_s)]
            )
            if profile is not None:
                out[season * 2 + int(log)] = profile  # one key per (season, space)
    return out


def _candidates(y: FloatArray, profiles: dict[int, FloatArray]) -> list[list[Spec]]:
    """Families of specs; within a family only alpha differs."""
    families: list[list[Spec]] = [[Spec(LEVEL, log, 0, a) for a in ALPHAS] for log in (False, True)]
    families += [[Spec(LEVEL, True, 0, a, reset=r) for a in RESET_ALPHAS] for r in RESETS]
    for key in sorted(profiles):
        season, log = key // 2, bool(key % 2)
        families.append([Spec(LEVEL, log, season, a) for a in ALPHAS])
        if log:
            families += [[Spec(LEVEL, True, season, a, reset=r) for a in RESET_ALPHAS] for r in RESETS]
        if log:
            families.append([Spec(SNAIVE, False, season)])
    if len(y) and float(np.mean(y == 0)) > INTERMITTENT_ZEROS:
        families.append(list(TSB_SPECS))
    return families


def profile_key(spec: Spec) -> int:
    """Profiles are stored per (season, space): a log-space shape is not a raw-space one."""
    return spec.season * 2 + int(spec.log)


def _validation(n: int, horizon: int) -> IntArray:
    length = max(1, min(int(0.3 * n), MAX_VALIDATION, n - 2))
    start = n - length
    count = min(length, MAX_ORIGINS)
    return np.unique(np.linspace(start, n - 1, count).round().astype(np.int64))


def _mae(forecasts: FloatArray, actual: FloatArray) -> float:
    return float(np.nanmean(np.abs(forecasts - actual)))


def _actuals(y: FloatArray, origins: IntArray, horizon: int) -> FloatArray:
    targets = models.target_index(origins, horizon)
    return np.where(targets < len(y), y[np.clip(targets, 0, len(y) - 1)], np.nan)


def _best_per_family(
    y: FloatArray, profiles: dict[int, FloatArray], phase_base: int, origins: IntArray, actual: FloatArray
) -> list[tuple[float, Spec, FloatArray]]:
    horizon = actual.shape[1]
    best: list[tuple[float, Spec, FloatArray]] = []
    for family in _candidates(y[: origins[0]], profiles):
        scored = []
        for spec in family:
            forecasts = paths(y, spec, profiles, phase_base, origins, horizon)
            scored.append((_mae(forecasts, actual), spec, forecasts))
        best.append(min(scored, key=lambda item: item[0]))
    return sorted(best, key=lambda item: item[0])


def residual_table(forecasts: FloatArray, actual: FloatArray) -> tuple[FloatArray, int]:
    """Quantiles of log1p residuals per step; steps never observed borrow the previous step's."""
    with np.errstate(all="ignore"):
        errors = np.log1p(actual) - np.log1p(forecasts)
    table = np.full((len(RESIDUAL_LEVELS), errors.shape[1]), np.nan)
    for k in range(errors.shape[1]):
        column = errors[:, k][np.isfinite(errors[:, k])]
        if len(column):
            table[:, k] = np.quantile(column, RESIDUAL_LEVELS)
        elif k:
            table[:, k] = table[:, k - 1]
    return np.nan_to_num(table), int(np.isfinite(errors).sum(axis=0).min())


def fit(y: FloatArray, phase_base: int, step_s: float, horizon: int, day_s: float = DAY_S) -> Fitted:
    """Choose and fit the model for a cleaned history `y` (counts per step, no NaN)."""
    origins = _validation(len(y), horizon)
    actual = _actuals(y, origins, horizon)
    ranked = _best_per_family(
        y, _profiles(y[: origins[0]], phase_base, step_s, day_s), phase_base, origins, actual
    )
    chosen_score, forecasts = ranked[0][0], ranked[0][2]
    chosen: tuple[Spec, ...] = (ranked[0][1],)
    for size in ENSEMBLE_SIZES:
        if len(ranked) < size:
            continue
        members = np.median(np.stack([item[2] for item in ranked[:size]]), axis=0)
        if _mae(members, actual) < chosen_score * ENSEMBLE_PREFERENCE:
            chosen_score = _mae(members, actual)
            chosen, forecasts = tuple(item[1] for item in ranked[:size]), members
    scores = {item[1].name: item[0] for item in ranked}
    table, samples = residual_table(forecasts, actual)
    return Fitted(chosen, _profiles(y, phase_base, step_s, day_s), table, samples, scores, len(origins))
