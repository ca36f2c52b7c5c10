"""Many keys at once: vectorised state update and forecast between staggered refits.

A refit (`selection.fit`, tens of milliseconds per key) chooses each key's model; a cycle
only folds the newest interval of every key into its smoothed level and reads the forecast
off level + seasonal profile, as array operations over all keys. The operator refits a slice
of the keys per cycle (`due_for_refit`), so every key is refitted once per period while a
cycle over 10k keys stays well under a second of CPU.

The fleet runs the smoothed-level family (raw or log1p, optional daily/weekly profile, burst
resets); it never runs the statsmodels candidates, which are for tracked series only. A key
whose chosen model is an ensemble uses its best level member; a key whose choice is seasonal
naive, TSB or a statsmodels model uses a log-space level (alpha 0.15), the closest level model,
and can always be forecast exactly, one key at a time, with `forecasting.forecast`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from foreshard.core.forecasting import models
from foreshard.core.forecasting.intervals import conformal_level, residual_quantile
from foreshard.core.forecasting.models import LEVEL, Spec
from foreshard.core.forecasting.selection import Fitted, profile_key
from foreshard.core.series import FloatArray

BoolArray = npt.NDArray[np.bool_]
IndexArray = npt.NDArray[np.int64]
FALLBACK = Spec(LEVEL, log=True, alpha=0.15)


@dataclass(frozen=True)
class Fleet:
    keys: tuple[str, ...]
    next_index: int  # absolute step index (start_s / step_s) of the next interval, shared by all keys
    log: BoolArray
    alpha: FloatArray
    reset: FloatArray  # +inf: no resets
    level: FloatArray
    profiles: dict[int, tuple[IndexArray, FloatArray]]  # season -> (key rows, profile rows)
    shifts: FloatArray  # (keys, quantiles, horizon) log1p residual quantiles
    quantiles: tuple[float, ...]


@dataclass(frozen=True)
class KeyModel:
    """One key's share of the fleet: what `assemble` needs from a fit."""

    spec: Spec
    profile: FloatArray | None
    level: float
    shifts: FloatArray  # (quantiles, horizon)


def level_spec(fitted: Fitted) -> Spec:
    return next((s for s in fitted.specs if isinstance(s, Spec) and s.kind == LEVEL), FALLBACK)


def key_model(fitted: Fitted, y: FloatArray, next_index: int, quantiles: Sequence[float]) -> KeyModel:
    """Bring a fit up to date with the history `y` that ends just before `next_index`."""
    spec = level_spec(fitted)
    profile = fitted.profiles.get(profile_key(spec)) if spec.season else None
    z = models.transform(y, spec.log)
    if profile is not None:
        z = z - profile[(next_index - len(y) + np.arange(len(y))) % len(profile)]
    level = (
        models.smooth_with_resets(z, spec.alpha, spec.reset) if spec.reset else models.smooth(z, spec.alpha)
    )
    shifts = np.stack(
        [residual_quantile(fitted.residuals, conformal_level(q, fitted.samples)) for q in quantiles]
    )
    return KeyModel(spec, profile, float(level[-1]) if len(level) else 0.0, shifts)


def assemble(
    keys: Sequence[str], members: Sequence[KeyModel], next_index: int, quantiles: Sequence[float]
) -> Fleet:
    seasons = sorted({len(m.profile) for m in members if m.profile is not None})
    profiles = {}
    for season in seasons:
        rows = [i for i, m in enumerate(members) if m.profile is not None and len(m.profile) == season]
        profiles[season] = (np.array(rows, dtype=np.int64), np.stack([members[i].profile for i in rows]))  # type: ignore[misc]
    return Fleet(
        tuple(keys),
        next_index,
        np.array([m.spec.log for m in members], dtype=np.bool_),
        np.array([m.spec.alpha for m in members]),
        np.array([m.spec.reset if m.spec.reset else np.inf for m in members]),
        np.array([m.level for m in members]),
        profiles,
        np.stack([m.shifts for m in members]),
        tuple(quantiles),
    )


def seasonal(fleet: Fleet, offsets: IndexArray) -> FloatArray:
    """Profile values (keys x len(offsets)) at absolute step indices next_index + offsets."""
    out = np.zeros((len(fleet.keys), len(offsets)))
    for season, (rows, table) in fleet.profiles.items():
        out[rows] = table[:, (fleet.next_index + offsets) % season]
    return out


def update(fleet: Fleet, values: FloatArray) -> Fleet:
    """Fold one new interval per key (NaN: not observed, the level holds) into the fleet."""
    seen = np.isfinite(values) & (values >= 0)
    clean = np.where(seen, values, 0.0)
    z = np.where(fleet.log, np.log1p(clean), clean) - seasonal(fleet, np.zeros(1, dtype=np.int64))[:, 0]
    gap = z - fleet.level
    moved = np.where(np.abs(gap) > fleet.reset, z, fleet.level + fleet.alpha * gap)
    return replace(fleet, level=np.where(seen, moved, fleet.level), next_index=fleet.next_index + 1)


def predict(fleet: Fleet, horizon: int) -> tuple[FloatArray, FloatArray]:
    """Point forecasts (keys x horizon) and quantiles (keys x quantiles x horizon), counts per step."""
    path = fleet.level[:, None] + seasonal(fleet, np.arange(horizon, dtype=np.int64))
    point = path.copy()
    point[fleet.log] = np.expm1(
        np.minimum(path[fleet.log], 700.0)
    )  # only log rows: raw counts overflow expm1
    point = np.maximum(np.nan_to_num(point, nan=0.0, posinf=0.0), 0.0)
    shifts = fleet.shifts[:, :, :horizon]
    if shifts.shape[2] < horizon:
        shifts = np.concatenate(
            [shifts, np.repeat(shifts[:, :, -1:], horizon - shifts.shape[2], axis=2)], axis=2
        )
    bands = np.maximum(np.expm1(np.log1p(point)[:, None, :] + shifts), 0.0)
    return point, np.asarray(bands, dtype=np.float64)


def replace_key(fleet: Fleet, row: int, member: KeyModel) -> Fleet:
    """Swap in one key's refit (staggered refits touch a few keys per cycle)."""
    members_log, alpha, reset, level = (
        fleet.log.copy(),
        fleet.alpha.copy(),
        fleet.reset.copy(),
        fleet.level.copy(),
    )
    members_log[row], alpha[row], level[row] = member.spec.log, member.spec.alpha, member.level
    reset[row] = member.spec.reset if member.spec.reset else np.inf
    profiles = {s: (r[r != row], t[r != row]) for s, (r, t) in fleet.profiles.items()}
    if member.profile is not None:
        rows, table = profiles.get(
            len(member.profile), (np.zeros(0, dtype=np.int64), np.zeros((0, len(member.profile))))
        )
        profiles[len(member.profile)] = (np.append(rows, row), np.vstack([table, member.profile]))
    shifts = fleet.shifts.copy()
    shifts[row] = member.shifts
    return replace(
        fleet, log=members_log, alpha=alpha, reset=reset, level=level, profiles=profiles, shifts=shifts
    )


def due_for_refit(keys: int, cycle: int, period: int) -> IndexArray:
    """Rows refitted at this cycle: each key once every `period` cycles, spread evenly."""
    return np.arange(cycle % period, keys, period, dtype=np.int64)
