"""Per-series model choice by rolling-origin backtest, and the fitted model it produces.

`fit(y, phase_base, step_s, horizon)` backtests every candidate over the most recent part of
the history (the validation window), keeps the one with the lowest mean absolute error over
steps 1..horizon, and stores the log-space residual quantiles of that backtest per horizon
step, from which calibrated intervals follow (split-conformal style). Seasonal profiles used
in the backtest are estimated only from data before the validation window, so a seasonal
model cannot look good by having seen the days it is scored on.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from foreshard.core.forecasting import models, statistical
from foreshard.core.forecasting.models import LEVEL, SNAIVE, TSB, IntArray, Spec
from foreshard.core.forecasting.statistical import StatSpec
from foreshard.core.series import FloatArray

Candidate = Spec | StatSpec
BoolArray = npt.NDArray[np.bool_]

# Model classes: the names spec.forecast.models (the CRD's enum) restricts the candidates to.
NAIVE_CLASS = "Naive"  # last value
SEASONAL_NAIVE_CLASS = "SeasonalNaive"  # same phase one season earlier
SES_CLASS = "SES"  # smoothed level without season (raw or log1p, with or without burst resets)
ETS_CLASS = "ETS"  # level + seasonal profile (ETS(A,N,A)); Holt-Winters by statsmodels when tracked
ARIMA_CLASS = "ARIMA"  # statsmodels, tracked series only
SARIMAX_CLASS = "SARIMAX"  # statsmodels, ARIMA errors around the seasonal profiles; tracked only
CROSTON_CLASS = "Croston"  # TSB, Croston's method with a decaying probability; intermittent keys
ENSEMBLE_CLASS = "Ensemble"  # median of the best 3, 5 or 8 families
MODEL_CLASSES = (
    NAIVE_CLASS,
    SEASONAL_NAIVE_CLASS,
    SES_CLASS,
    ETS_CLASS,
    ARIMA_CLASS,
    SARIMAX_CLASS,
    CROSTON_CLASS,
    ENSEMBLE_CLASS,
)
STATSMODELS_ONLY = frozenset({ARIMA_CLASS, SARIMAX_CLASS})  # classes without a fast candidate
NAIVE = Spec(LEVEL, False, 0, 1.0)  # what is left when nothing allowed can be fitted


def only_statsmodels(allowed: Collection[str] | None) -> bool:
    """True when the allowed classes have no fast candidate (only statsmodels fits can serve)."""
    return allowed is not None and set(allowed) - {ENSEMBLE_CLASS} <= STATSMODELS_ONLY


DAY_S = 86_400.0
ALPHAS = (0.01, 0.03, 0.07, 0.15, 0.3, 0.5, 0.75, 1.0)
TSB_SPECS = (
    Spec(TSB, alpha=0.05, beta=0.02),
    Spec(TSB, alpha=0.1, beta=0.05),
    Spec(TSB, alpha=0.2, beta=0.1),
)
RESETS = (1.0, 2.0)  # log1p jump sizes (x2.7, x7.4) that move a level at once
RESET_ALPHAS = (0.07, 0.15, 0.3, 0.5)
SAFETY_RESET = 3.0  # statsmodels members follow a jump of more than x20 (log1p units)
FOLLOW_LEVELS = ((0.01, 0.99), (0.025, 0.975))  # residual quantiles beyond which the last value leads
MAX_VALIDATION = 2000  # steps; recent behaviour is what the next forecasts face
MAX_ORIGINS = 400  # backtest origins per fit, evenly spaced over the validation window
PROFILE_SEASONS = {1: 28, 7: 6}  # days per season -> how many recent seasons the profile spans
INTERMITTENT_ZEROS = 0.3  # share of empty intervals above which TSB joins the candidates
MIN_SELECTION_ORIGINS = 30  # fewer backtest origins cannot tell many candidates apart: baselines only
ENSEMBLE_SIZES = (3, 5, 8)
ENSEMBLE_PREFERENCE = 1.05
RESIDUAL_LEVELS = np.linspace(0.0, 1.0, 201)  # stored so any quantile can be read later


@dataclass(frozen=True)
class Fitted:
    """A chosen model: spec(s), profiles by season, and log1p residual quantiles per step."""

    specs: tuple[Candidate, ...]  # one spec, or the members of a median ensemble
    profiles: dict[int, FloatArray]
    residuals: FloatArray  # (len(RESIDUAL_LEVELS), horizon) quantiles of log1p(actual) - log1p(point)
    samples: int  # backtest residuals behind the smallest column: the conformal correction needs it
    scores: dict[str, float] = field(default_factory=dict)  # validation MAE per candidate family
    validation_origins: int = 0
    # (low, high) log1p residuals: when the newest interval's one-step residual falls outside,
    # the forecast is the newest value (a burst or a break the model has not caught up with)
    follow: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        name = (
            self.specs[0].name
            if len(self.specs) == 1
            else "median(" + ", ".join(s.name for s in self.specs) + ")"
        )
        return f"{name}+follow" if self.follow else name

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


def model_class(spec: Candidate) -> str:
    """The spec.forecast.models name a candidate belongs to."""
    if isinstance(spec, StatSpec):
        return {statistical.ETS: ETS_CLASS, statistical.ARIMA: ARIMA_CLASS}.get(spec.kind, SARIMAX_CLASS)
    if spec.kind == SNAIVE:
        return SEASONAL_NAIVE_CLASS
    if spec.kind == TSB:
        return CROSTON_CLASS
    if spec.season:
        return ETS_CLASS
    if spec.alpha == 1.0 and not spec.reset:
        return NAIVE_CLASS  # in log1p space too: expm1(log1p(y)) is y
    return SES_CLASS


def log_profiles(profiles: dict[int, FloatArray]) -> dict[int, FloatArray]:
    """The log1p-space profiles by season length (what the statsmodels candidates use)."""
    return {key // 2: profile for key, profile in profiles.items() if key % 2}


def _statistical_paths(
    y: FloatArray,
    spec: StatSpec,
    profiles: dict[int, FloatArray],
    phase_base: int,
    origins: IntArray,
    horizon: int,
) -> FloatArray:
    by_season = log_profiles(profiles)
    if spec.kind == statistical.ETS:
        profile = by_season.get(spec.season) if spec.season else None
        return statistical.ets_paths(y, spec, profile, phase_base, origins, horizon)
    return statistical.arima_paths(y, spec, by_season, phase_base, origins, horizon)


def paths(
    y: FloatArray,
    spec: Candidate,
    profiles: dict[int, FloatArray],
    phase_base: int,
    origins: IntArray,
    horizon: int,
) -> FloatArray:
    """Raw-count forecasts of one spec at each origin."""
    if isinstance(spec, StatSpec):
        # a safety valve like the log-space levels' reset, but without memory: when the newest
        # interval is more than SAFETY_RESET (x20) from the model's one-step forecast, the member
        # forecasts the newest value; the next origin is the model's own again
        forecasts = _statistical_paths(y, spec, profiles, phase_base, origins, horizon)
        prior = _statistical_paths(y, spec, profiles, phase_base, np.maximum(origins - 1, 1), 1)[:, 0]
        return _followed(y, origins, forecasts, prior, (-SAFETY_RESET, SAFETY_RESET))
    if spec.kind == SNAIVE:
        return models.snaive_paths(y, spec.season, origins, horizon)
    if spec.kind == TSB:
        return models.tsb_paths(y, spec, origins, horizon)
    profile = profiles.get(profile_key(spec)) if spec.season else None
    return models.level_paths(y, spec, profile, phase_base, origins, horizon)


def combined_paths(
    y: FloatArray, fitted: Fitted, phase_base: int, origins: IntArray, horizon: int
) -> FloatArray:
    """Forecasts of a fitted model (median across ensemble members; the newest value after a
    surprise when the fit follows surprises)."""
    plain = _median_paths(y, fitted.specs, fitted.profiles, phase_base, origins, horizon)
    if fitted.follow is None:
        return plain
    prior = _median_paths(y, fitted.specs, fitted.profiles, phase_base, np.maximum(origins - 1, 1), 1)
    return _followed(y, origins, plain, prior[:, 0], fitted.follow)


def _median_paths(
    y: FloatArray,
    specs: tuple[Candidate, ...],
    profiles: dict[int, FloatArray],
    phase_base: int,
    origins: IntArray,
    horizon: int,
) -> FloatArray:
    stack = [paths(y, s, profiles, phase_base, origins, horizon) for s in specs]
    return stack[0] if len(stack) == 1 else np.asarray(np.median(np.stack(stack), axis=0), dtype=np.float64)


def _surprised(y: FloatArray, origins: IntArray, prior: FloatArray, bounds: tuple[float, float]) -> BoolArray:
    """Origins whose newest interval is outside `bounds` (log1p residual) of its forecast `prior`."""
    with np.errstate(all="ignore"):
        residual = np.log1p(y[origins - 1]) - np.log1p(prior)
    return np.asarray(((residual < bounds[0]) | (residual > bounds[1])) & (origins >= 2), dtype=np.bool_)


def _followed(
    y: FloatArray, origins: IntArray, plain: FloatArray, prior: FloatArray, follow: tuple[float, float]
) -> FloatArray:
    """`plain`, except at origins whose newest interval surprised the model's one-step forecast
    (`prior`) beyond `follow`: there, the newest value for every step."""
    last = y[origins - 1]
    surprised = _surprised(y, origins, prior, follow)
    out = plain.copy()
    out[surprised] = last[surprised][:, None]
    return out


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


def _candidates(y: FloatArray, profiles: dict[int, FloatArray]) -> list[list[Candidate]]:
    """Families of specs; within a family only alpha differs."""
    families: list[list[Candidate]] = [[Spec(LEVEL, log, 0, a) for a in ALPHAS] for log in (False, True)]
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


def _statistical(
    y: FloatArray, end: int, profiles: dict[int, FloatArray], phase_base: int, allowed: Collection[str]
) -> list[list[Candidate]]:
    """Statsmodels families fitted on at most FIT_WINDOW intervals before `end` (the first origin)."""
    start = max(0, end - statistical.FIT_WINDOW)
    z = np.log1p(y[start:end])
    by_season = log_profiles(profiles)
    seasons = tuple(sorted(by_season))
    families: list[list[Candidate]] = []
    if ETS_CLASS in allowed:
        daily = by_season.get(seasons[0]) if seasons else None
        ets = statistical.fit_ets(z, daily, phase_base, start)
        if ets is None and daily is not None:
            ets = statistical.fit_ets(z, None, phase_base, start)
        families.append([ets] if ets else [])
    for name, used in ((ARIMA_CLASS, ()), (SARIMAX_CLASS, seasons)):
        if name not in allowed or (name == SARIMAX_CLASS and not used):
            continue
        exog = statistical.regressors(by_season, used, phase_base, start, len(z))
        fits = [statistical.fit_arima(z, order, exog, used) for order in statistical.ARIMA_ORDERS]
        families.append([f for f in fits if f is not None])
    return [family for family in families if family]


def _restricted(families: list[list[Candidate]], allowed: Collection[str]) -> list[list[Candidate]]:
    kept = [[spec for spec in family if model_class(spec) in allowed] for family in families]
    return [family for family in kept if family]


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


Scored = tuple[float, Candidate, FloatArray]


def _best_per_family(
    y: FloatArray,
    families: list[list[Candidate]],
    profiles: dict[int, FloatArray],
    phase_base: int,
    origins: IntArray,
    actual: FloatArray,
) -> list[Scored]:
    horizon = actual.shape[1]
    best: list[Scored] = []
    clipped: list[Scored] = []
    for family in families:
        scored: list[Scored] = []
        dropped: list[Scored] = []
        for spec in family:
            forecasts = paths(y, spec, profiles, phase_base, origins, horizon)
            item = (_mae(forecasts, actual), spec, forecasts)
            (dropped if _clipped(spec, forecasts, actual) else scored).append(item)
        if scored:
            best.append(min(scored, key=lambda item: item[0]))
        clipped += dropped
    # every candidate clipped (a restricted fit): the best of them rather than none
    return sorted(best or [min(clipped, key=lambda item: item[0])], key=lambda item: item[0])


def _clipped(spec: Candidate, forecasts: FloatArray, actual: FloatArray) -> bool:
    """A raw-space seasonal level whose backtest forecast 0 where the series had arrivals.

    Its additive profile took the level below zero and the forecast was clipped there. MAE
    barely notices (the trough is small in counts), but the intervals are log1p residuals: each
    such origin adds log1p(actual) to the table (5.75 for a trough of 313 per step), and the
    table's upper quantiles then multiply every forecast of the series, its peaks too, by
    hundreds. Log-space profiles and the other candidates never reach 0 on a positive series.
    """
    if not (isinstance(spec, Spec) and spec.kind == LEVEL and spec.season and not spec.log):
        return False
    return bool(np.any((forecasts <= 0) & (actual > 0)))


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


def fit(
    y: FloatArray,
    phase_base: int,
    step_s: float,
    horizon: int,
    *,
    allowed: Collection[str] | None = None,
    statistical_models: bool = False,
    day_s: float = DAY_S,
) -> Fitted:
    """Choose and fit the model for a cleaned history `y` (counts per step, no NaN).

    `day_s`: a day on the queue's clock (spec.forecast.timeScale shortens it for replays).

    `allowed`: model classes (MODEL_CLASSES) the choice is restricted to; None allows all.
    `statistical_models`: add the statsmodels candidates (tracked series only: they cost tens of
    milliseconds each per fit). With fewer than MIN_SELECTION_ORIGINS backtest origins only the
    baselines (naive, SES, seasonal naive) compete, if allowed. When nothing allowed can be
    fitted, naive is used.
    """
    permitted = set(MODEL_CLASSES if allowed is None else allowed)
    origins = _validation(len(y), horizon)
    actual = _actuals(y, origins, horizon)
    profiles = _profiles(y[: origins[0]], phase_base, step_s, day_s)
    families = _restricted(_candidates(y[: origins[0]], profiles), permitted)
    short = len(origins) < MIN_SELECTION_ORIGINS
    if short and SES_CLASS in permitted:
        # too few origins to choose among many: SES (naive when alpha is 1) fitted by likelihood
        # on the whole history, which uses every interval, not a dozen scored ones; seasonal
        # naive still competes, or a few days of a clean daily ramp would be forecast flat
        alpha = statistical.fit_ses(y)
        seasonal = [[s for s in family if model_class(s) == SEASONAL_NAIVE_CLASS] for family in families]
        ses: list[Candidate] = [Spec(LEVEL, False, 0, 1.0 if alpha is None else alpha)]
        families = [ses] + [f for f in seasonal if f]
    elif short:
        baselines = [[s for s in family if is_baseline(s)] for family in families]
        families = [family for family in baselines if family] or families
    elif statistical_models:
        if SES_CLASS in permitted:
            alpha = statistical.fit_ses(y[: origins[0]])
            families += [[Spec(LEVEL, False, 0, alpha)]] if alpha is not None and alpha < 0.99 else []
        families += _statistical(y, int(origins[0]), profiles, phase_base, permitted)
    ranked = _best_per_family(y, families or [[NAIVE]], profiles, phase_base, origins, actual)
    chosen, forecasts = _choose(ranked, actual, ENSEMBLE_CLASS in permitted)
    follow = None
    if not short and NAIVE_CLASS in permitted:
        follow, forecasts = _follow_choice(y, chosen, profiles, phase_base, origins, forecasts, actual)
    scores = {item[1].name: item[0] for item in ranked}
    table, samples = residual_table(forecasts, actual)
    return Fitted(
        chosen, _profiles(y, phase_base, step_s, day_s), table, samples, scores, len(origins), follow
    )


def _follow_choice(
    y: FloatArray,
    chosen: tuple[Candidate, ...],
    profiles: dict[int, FloatArray],
    phase_base: int,
    origins: IntArray,
    forecasts: FloatArray,
    actual: FloatArray,
) -> tuple[tuple[float, float] | None, FloatArray]:
    """Whether to follow surprises, and at which residual quantiles: kept only when it lowers the
    backtest error. Bursts on news-driven keys last several intervals; a model that smooths them
    lags, the newest value does not."""
    table, _ = residual_table(forecasts, actual)
    prior = _median_paths(y, chosen, profiles, phase_base, np.maximum(origins - 1, 1), 1)[:, 0]
    best: tuple[float, tuple[float, float] | None, FloatArray] = (_mae(forecasts, actual), None, forecasts)
    for low, high in FOLLOW_LEVELS:
        bounds = (
            float(np.interp(low, RESIDUAL_LEVELS, table[:, 0])),
            float(np.interp(high, RESIDUAL_LEVELS, table[:, 0])),
        )
        followed = _followed(y, origins, forecasts, prior, bounds)
        if _mae(followed, actual) < best[0]:
            best = (_mae(followed, actual), bounds, followed)
    return best[1], best[2]


def is_baseline(spec: Candidate) -> bool:
    """Naive, SES and seasonal naive: the simple forecasts every other candidate must beat."""
    return model_class(spec) in (NAIVE_CLASS, SES_CLASS, SEASONAL_NAIVE_CLASS) and not (
        isinstance(spec, Spec) and (spec.log or spec.reset)
    )


def _choose(
    ranked: list[Scored], actual: FloatArray, ensembles: bool
) -> tuple[tuple[Candidate, ...], FloatArray]:
    """The best family, or the median of the best few when it backtests about as well (within
    ENSEMBLE_PREFERENCE): combinations are steadier out of sample than the winner of close races.
    A baseline that backtests better than the combination wins over it."""
    chosen_score, forecasts = ranked[0][0], ranked[0][2]
    chosen: tuple[Candidate, ...] = (ranked[0][1],)
    for size in ENSEMBLE_SIZES if ensembles else ():
        if len(ranked) < size:
            continue
        members = np.median(np.stack([item[2] for item in ranked[:size]]), axis=0)
        if _mae(members, actual) < chosen_score * ENSEMBLE_PREFERENCE:
            chosen_score = _mae(members, actual)
            chosen, forecasts = tuple(item[1] for item in ranked[:size]), members
    baseline = next((item for item in ranked if is_baseline(item[1])), None)
    if baseline is not None and baseline[0] < chosen_score:
        return (baseline[1],), baseline[2]
    return chosen, forecasts
