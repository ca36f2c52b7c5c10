"""Forecast cycle cost at fleet scale: 10k synthetic keys with daily seasonality and noise.

    .venv/bin/python bench/forecast_scale.py [--keys 10000] [--days 7] [--sample 200]

Measures (CPU time, this process):
* refit_cpu_s_per_key: full model selection (`selection.fit`) on one key's history, averaged
  over --sample keys;
* cycle_cpu_s: one operator cycle over all keys: fold the newest interval of every key into its
  state and forecast 12 steps with 3 quantiles (`fleet.update` + `fleet.predict`);
* staggered_refit_cpu_s_per_cycle: refits spread so each key is refitted once a day;
* rss_mb: peak resident memory of the run (histories included).

Keys beyond the fitted sample take the chosen spec and residual table of a fitted key (round
robin) but their own profile and level, so the fleet has realistic shape without spending
10k refits on a benchmark. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np

from foreshard.core.forecasting import fleet, selection
from foreshard.core.forecasting.models import estimate_profile, transform

STEP = 300.0
DAY = 288
QUANTILES = (0.5, 0.9, 0.99)
HORIZON = 12


def histories(keys: int, days: int, seed: int = 42) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY)
    level = rng.lognormal(2.0, 1.2, keys)[:, None]
    amplitude = rng.uniform(0.2, 0.9, keys)[:, None]
    phase = rng.uniform(0, 2 * np.pi, keys)[:, None]
    out = np.empty((keys, len(t)), dtype=np.float32)
    for first in range(0, keys, 1000):  # chunks keep the float64 temporaries small
        rows = slice(first, min(keys, first + 1000))
        rate = level[rows] * (1 + amplitude[rows] * np.sin(2 * np.pi * t / DAY + phase[rows]))
        out[rows] = rng.poisson(rate)
    return out


def member_like(template: selection.Fitted, y: np.ndarray, next_index: int) -> fleet.KeyModel:
    """A fitted key's spec and residuals with this key's own profile and level."""
    spec = fleet.level_spec(template)
    profiles = dict(template.profiles)
    if spec.season:
        phases = np.arange(len(y), dtype=np.int64)
        own = estimate_profile(transform(y, spec.log), phases, spec.season, 28)
        if own is not None:
            profiles[selection.profile_key(spec)] = own
    borrowed = selection.Fitted((spec,), profiles, template.residuals, template.samples)
    return fleet.key_model(borrowed, y, next_index, QUANTILES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args()

    data = histories(args.keys, args.days)
    n = data.shape[1] - args.cycles  # the last intervals arrive during the timed cycles
    started = time.process_time()
    fits = [selection.fit(data[i, :n].astype(np.float64), 0, STEP, HORIZON) for i in range(args.sample)]
    refit = (time.process_time() - started) / args.sample
    print(f"refit: {refit * 1000:.1f} ms CPU per key over {args.sample} keys", file=sys.stderr)

    members = [fleet.key_model(f, data[i, :n].astype(np.float64), n, QUANTILES) for i, f in enumerate(fits)]
    for i in range(args.sample, args.keys):
        members.append(member_like(fits[i % args.sample], data[i, :n].astype(np.float64), n))
    state = fleet.assemble([f"key-{i}" for i in range(args.keys)], members, n, QUANTILES)
    del members

    started = time.process_time()
    for cycle in range(args.cycles):
        state = fleet.update(state, data[:, n + cycle].astype(np.float64))
        point, bands = fleet.predict(state, HORIZON)
    cycle_cpu = (time.process_time() - started) / args.cycles
    assert np.all(np.isfinite(point)) and np.all(bands >= 0)

    per_cycle_refits = args.keys / DAY  # each key refitted once a day at one cycle per step
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result = {
        "keys": args.keys,
        "cycle_cpu_s": round(cycle_cpu, 4),
        "refit_cpu_s_per_key": round(refit, 4),
        "staggered_refit_cpu_s_per_cycle": round(per_cycle_refits * refit, 3),
        "rss_mb": round(rss_mb, 1),
        "history_steps": n,
        "horizon_steps": HORIZON,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
