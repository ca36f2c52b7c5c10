"""Planner at scale: 100k keys, 4096 slots, 256 shards. Last line: JSON with plan_s (target <= 1 s)."""

from __future__ import annotations

import json
import time
import zlib

import numpy as np

from foreshard.core.forecasting.types import Forecast
from foreshard.core.planning import Observed, TargetPolicy, decide, split_hot_keys

KEYS, SLOTS, SHARDS = 100_000, 4096, 256


def main() -> None:
    rng = np.random.default_rng(7)
    keys = [f"key-{i}" for i in range(KEYS)]
    key_load = rng.pareto(1.5, KEYS) * 0.5  # heavy-tailed per-key rates, messages/s
    capacity = float(key_load.sum()) / (SHARDS * 0.7)
    started = time.perf_counter()
    key_slot = np.array([zlib.crc32(k.encode()) % SLOTS for k in keys], dtype=np.int64)
    hot = split_hot_keys(keys, key_slot, key_load, SLOTS, threshold=0.05 * capacity)
    owner = np.arange(SLOTS, dtype=np.int64) % (SHARDS - 16)  # grow from 240 shards to the target
    policy = TargetPolicy(capacity, headroom=0.4, max_shards=SHARDS)
    path = np.full(12, 255.5 * capacity * policy.utilization * 300.0)  # a peak that needs all 256 shards
    forecast = Forecast("queue", 0.0, 300.0, path, {0.9: path})
    observed = Observed(0.0, SHARDS - 16, float(key_load.sum()), hot.slot_load, owner, hot.pins)
    plan = decide(observed, forecast, policy)
    elapsed = time.perf_counter() - started
    print(
        f"target {plan.target.target} shards, {len(plan.placement.moves)} moves, {len(hot.pins)} pinned keys"
    )
    print(f"within capacity: {plan.placement.within_capacity}; {plan.target.message}")
    print(
        json.dumps({"keys": KEYS, "slots": SLOTS, "shards": plan.target.target, "plan_s": round(elapsed, 4)})
    )


if __name__ == "__main__":
    main()
