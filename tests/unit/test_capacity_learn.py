"""capacity.learn: one shard's capacity from broker CPU against messages (realistic series)."""

from __future__ import annotations

import numpy as np
import pytest

from foreshard.core.planning.capacity import InsufficientLoad, LoadSample, learn_capacity, learn_cost
from foreshard.reconcile.capacity import cores

pytestmark = pytest.mark.unit


def day_of_load(base: float = 0.03, cost: float = 40e-6, seed: int = 5) -> list[LoadSample]:
    """Three brokers over a day at 1-minute samples: a daily wave with bursts, CPU = base + cost x
    rate with scrape jitter (CPU counters move in 10 ms ticks) and a GC spike now and then."""
    rng = np.random.default_rng(seed)
    minutes = np.arange(1440)
    out = []
    for broker in range(3):
        rate = 800 * (1 + 0.8 * np.sin(2 * np.pi * (minutes - 300 * broker) / 1440)) + rng.exponential(
            150, 1440
        )
        cpu = base + cost * rate + rng.normal(0, 0.004, 1440) + (rng.random(1440) < 0.02) * 0.05
        sizes = rate * rng.normal(512, 20, 1440)
        out += [
            LoadSample(float(r), float(b), float(max(c, 0.0)))
            for r, b, c in zip(rate, sizes, cpu, strict=True)
        ]
    return out


def test_the_base_load_and_the_cost_per_message_are_told_apart() -> None:
    cost = learn_cost(day_of_load())
    assert cost.base_cores == pytest.approx(0.03, abs=0.005)
    assert cost.per_message == pytest.approx(40e-6, rel=0.05)


def test_capacity_is_the_spare_cpu_of_one_core_over_the_cost() -> None:
    found = learn_capacity(day_of_load(), cpu_limit_cores=None, disk_bytes_per_s=None)
    # (0.8 x 1 core - 0.03 base) / 40 us = 19,250 msg/s
    assert found.messages_per_s == pytest.approx(19_250, rel=0.06)
    assert found.basis.startswith("CPU:") and "4320 samples" in found.basis


def test_a_cpu_limit_below_a_core_lowers_capacity_and_one_above_cannot_raise_it() -> None:
    half = learn_capacity(day_of_load(), cpu_limit_cores=0.5, disk_bytes_per_s=None)
    four = learn_capacity(day_of_load(), cpu_limit_cores=4.0, disk_bytes_per_s=None)
    one = learn_capacity(day_of_load(), cpu_limit_cores=1.0, disk_bytes_per_s=None)
    assert half.messages_per_s < one.messages_per_s == four.messages_per_s


def test_a_slow_disk_bounds_capacity_by_bytes_per_message() -> None:
    found = learn_capacity(day_of_load(), cpu_limit_cores=None, disk_bytes_per_s=4_000_000)
    assert found.basis.startswith("disk:")
    assert found.messages_per_s == pytest.approx(0.8 * 4_000_000 / 512, rel=0.05)


def test_steady_load_charges_the_base_to_the_messages_erring_towards_less_capacity() -> None:
    steady = [LoadSample(1000.0, 512_000.0, 0.03 + 0.04) for _ in range(20)]
    cost = learn_cost(steady)
    assert cost.base_cores == 0.0 and cost.per_message == pytest.approx(70e-6)


def test_too_little_load_is_refused_with_what_was_seen() -> None:
    with pytest.raises(InsufficientLoad, match="2 loaded broker samples"):
        learn_cost([LoadSample(10.0, 0.0, 0.01), LoadSample(0.0, 0.0, 0.01), LoadSample(5.0, 0.0, 0.01)])


@pytest.mark.parametrize(("quantity", "expected"), [("2", 2.0), ("500m", 0.5), ("1.5", 1.5), ("lots", None)])
def test_cpu_quantities_read_as_cores(quantity: str, expected: float | None) -> None:
    assert cores(quantity) == expected
