"""Candidate point forecasters, each computed for many forecast origins at once.

Every model here is causal and has fixed parameters between refits, so running it once over
the whole series yields its state after every interval; the forecast made at origin `t` (the
first interval not yet observed) for step `k` uses only `y[:t]`. That is what makes both the
rolling-origin backtest and the per-cycle update over many keys cheap: one vectorised pass,
no refit per origin.

Models work on counts per step, optionally in log1p space: bursty counts are closer to
additive there, and a forecast made in log space back-transforms to a median, which is what
the absolute-error metric (MASE) rewards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.signal import lfilter

from foreshard.core.series import FloatArray

IntArray = npt.NDArray[np.int64]

LEVEL = "level"  # exponentially smoothed level (+ optional fixed seasonal profile)
SNAIVE = "snaive"  # same phase one season earlier
TSB = "tsb"  # Teunter-Syntetos-Babai: intermittent demand, probability x size


@dataclass(frozen=True)
class Spec:
    """One candidate: `kind`, log1p space or not, season length in steps (0 = none), alpha."""

    kind: str
    log: bool = False
    season: int = 0
    alpha: float = 1.0
    beta: float = 0.1  # TSB only: smoothing of the non-zero probability
    reset: float = 0.0  # level only: a jump larger than this (log1p units) moves the level at once

    @property
    def name(self) -> str:
        space = "log" if self.log else "raw"
        if self.kind == SNAIVE:
            return f"snaive({self.season})"
        if self.kind == TSB:
            return f"tsb(a={self.alpha:g},b={self.beta:g})"
        season = f",season={self.season}" if self.season else ""
        reset = f",reset={self.reset:g}" if self.reset else ""
        return f"level({space},a={self.alpha:g}{season}{reset})"


def transform(y: FloatArray, log: bool) -> FloatArray:
    return np.log1p(y) if log else y


def untransform(z: FloatArray, log: bool) -> FloatArray:
    out = np.expm1(z) if log else z
    return np.asarray(np.maximum(np.nan_to_num(out, nan=0.0, posinf=0.0), 0.0), dtype=np.float64)


def smooth(z: FloatArray, alpha: float) -> FloatArray:
    """Exponentially smoothed level after each observation (a first-order IIR filter)."""
    if len(z) == 0:
        return np.asarray(z, dtype=np.float64)
    zi = np.array([(1.0 - alpha) * z[0]])
    out, _ = lfilter([alpha], [1.0, -(1.0 - alpha)], z, zi=zi)
    return np.asarray(out, dtype=np.float64)


def smooth_with_resets(z: FloatArray, alpha: float, reset: float) -> FloatArray:
    """Smoothed level that jumps to the observation when it leaves the band `level ± reset`.

    News-driven bursts move raw-count errors far more than anything else; a plain smoothed
    level lags them for many steps, the last value does not. This keeps the noise filtering of
    smoothing inside the band and the reaction of the last value outside it. Sequential by
    nature; a plain loop over floats is a few milliseconds for 16k steps.
    """
    out = np.empty(len(z))
    level = float(z[0]) if len(z) else 0.0
    for i, value in enumerate(z.tolist()):
        gap = value - level
        level = value if abs(gap) > reset else level + alpha * gap
        out[i] = level
    return out


def estimate_profile(z: FloatArray, phases: IntArray, season: int, max_seasons: int) -> FloatArray | None:
    """Additive seasonal profile indexed by absolute phase, from the last whole seasons of `z`.

    Each season is de-meaned before the per-phase median, so that level shifts between days
    do not leak into the shape and a single burst does not move it. None when fewer than two
    seasons of history exist.
    """
    count = min(len(z) // season, max_seasons)
    if season < 2 or count < 2:
        return None
    rows = z[len(z) - count * season :].reshape(count, season)
    rows = rows - rows.mean(axis=1, keepdims=True)
    shape = np.median(rows, axis=0)
    first_phase = int(phases[len(z) - count * season])
    profile = np.empty(season)
    profile[(first_phase + np.arange(season)) % season] = shape
    return np.asarray(profile - profile.mean(), dtype=np.float64)


def target_index(origins: IntArray, horizon: int) -> IntArray:
    """Index of the interval forecast at each origin (rows) and step 1..horizon (columns)."""
    return np.asarray(origins[:, None] + np.arange(horizon)[None, :], dtype=np.int64)


def level_paths(
    y: FloatArray,
    spec: Spec,
    profile: FloatArray | None,
    phase_base: int,
    origins: IntArray,
    horizon: int,
) -> FloatArray:
    """Forecasts (origins x horizon, raw counts) of an exponentially smoothed level model."""
    z = transform(y, spec.log)
    index = np.arange(len(y) + horizon + 1)
    seasonal = profile[(phase_base + index) % len(profile)] if profile is not None else np.zeros(len(index))
    deseasonalised = z - seasonal[: len(z)]
    if spec.reset > 0:
        level = smooth_with_resets(deseasonalised, spec.alpha, spec.reset)
    else:
        level = smooth(deseasonalised, spec.alpha)
    path = level[origins - 1][:, None] + seasonal[target_index(origins, horizon)]
    return untransform(path, spec.log)


def snaive_paths(y: FloatArray, season: int, origins: IntArray, horizon: int) -> FloatArray:
    """Same phase in the most recent season that was observed before the origin."""
    targets = target_index(origins, horizon)
    steps_ahead = targets - origins[:, None] + 1
    source = targets - season * np.ceil(steps_ahead / season).astype(np.int64)
    return np.asarray(y[np.clip(source, 0, len(y) - 1)], dtype=np.float64)


def tsb_paths(y: FloatArray, spec: Spec, origins: IntArray, horizon: int) -> FloatArray:
    """Probability of a non-zero interval times the smoothed non-zero size; flat over the horizon."""
    nonzero = (y > 0).astype(np.float64)
    probability = smooth(nonzero, spec.beta)
    sizes = y[y > 0]
    if len(sizes) == 0:
        return np.zeros((len(origins), horizon))
    smoothed = smooth(sizes, spec.alpha)
    # size level after each interval: the smoothed size of the last non-zero interval so far
    last = np.cumsum(nonzero).astype(np.int64) - 1
    size = np.where(last >= 0, smoothed[np.clip(last, 0, None)], 0.0)
    point = probability[origins - 1] * size[origins - 1]
    return np.repeat(point[:, None], horizon, axis=1)
