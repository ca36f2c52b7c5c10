"""Prefetch Agent sizing: pure, driven with explicit timestamps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreshard_broker.client.prefetch import FixedPrefetch, PrefetchAgent, PrefetchPolicy, RateMeter

pytestmark = pytest.mark.unit


def warmed(
    agent: PrefetchAgent,
    processing_s: float,
    round_trip_s: float,
    backlog: bool,
    seconds: float = 3.0,
    acks_per_step: int | None = None,
) -> float:
    """Feed the agent `seconds` of steady observations (10 ms steps); returns the time reached."""
    now = 0.0
    step = 0.01
    while now < seconds:
        now += step
        agent.record_processing(now, processing_s)
        at_capacity = max(1, round(step * agent.concurrency / processing_s))
        agent.record_acks(now, at_capacity if acks_per_step is None else acks_per_step)
        asked = 10
        agent.record_fetch(now, round_trip_s, asked, asked, 2560)
        if not backlog:  # ... then a long-poll that found nothing: the broker ran dry
            agent.record_fetch(now, round_trip_s, asked, 0, 0)
    return now


def test_with_a_backlog_the_target_covers_capacity_times_round_trip_plus_margin() -> None:
    agent = PrefetchAgent(PrefetchPolicy(safety_margin=1.5), concurrency=4)
    now = warmed(agent, processing_s=0.002, round_trip_s=0.05, backlog=True)
    # capacity 4 / 2 ms = 2000/s; 2000 * 50 ms * 1.5 = 150, plus 4 in process and 4 ready
    assert agent.target_messages(now) == pytest.approx(158, abs=3)


def test_the_target_shrinks_when_demand_falls() -> None:
    agent = PrefetchAgent(PrefetchPolicy(), concurrency=4)
    now = warmed(agent, processing_s=0.002, round_trip_s=0.05, backlog=True)
    busy = agent.target_messages(now)
    for _ in range(500):  # five seconds of empty fetches and no acks
        now += 0.01
        agent.record_fetch(now, 0.05, 10, 0, 0)
        agent.record_acks(now, 0)
    assert agent.target_messages(now) < busy / 8


def test_the_target_never_exceeds_max_messages_nor_the_byte_budget() -> None:
    agent = PrefetchAgent(PrefetchPolicy(max_messages=100, max_bytes=10_000), concurrency=64)
    now = warmed(agent, processing_s=0.0001, round_trip_s=0.5, backlog=True)
    assert agent.target_messages(now) == 10_000 // 256  # 256-byte messages: the byte budget binds first


def test_the_operators_forecast_raises_the_target_but_not_above_capacity() -> None:
    agent = PrefetchAgent(PrefetchPolicy(), concurrency=1)
    now = warmed(agent, processing_s=0.01, round_trip_s=0.1, backlog=False, acks_per_step=0)
    before = agent.target_messages(now)
    agent.set_forecast(50.0)
    with_forecast = agent.target_messages(now)
    agent.set_forecast(10_000.0)
    capped = agent.target_messages(now)
    assert before < with_forecast
    assert capped == pytest.approx(100 * 0.1 * 1.5 + 2, abs=2)  # capacity 1 / 10 ms = 100/s


def test_a_cold_agent_starts_small() -> None:
    agent = PrefetchAgent(PrefetchPolicy(), concurrency=8)
    assert agent.target_messages(0.0) <= 16


def test_a_fixed_prefetch_holds_its_count_whatever_the_demand() -> None:
    agent = FixedPrefetch(PrefetchPolicy(), count=300, concurrency=4)
    now = warmed(agent, processing_s=0.002, round_trip_s=0.001, backlog=True)
    assert agent.target_messages(now) == 300


def test_the_rate_meter_decays_when_events_stop() -> None:
    meter = RateMeter(horizon_s=0.5)
    for i in range(100):
        meter.add(i * 0.01, 10)
    busy = meter.rate(1.0)
    assert busy == pytest.approx(1000, rel=0.2)
    assert meter.rate(5.0) < busy / 100


@given(
    held_messages=st.integers(0, 5000),
    held_bytes=st.integers(0, 2_000_000),
    max_bytes=st.integers(1, 1_000_000),
    size=st.integers(1, 100_000),
)
def test_a_fetch_never_asks_for_more_bytes_than_the_budget_leaves(
    held_messages: int, held_bytes: int, max_bytes: int, size: int
) -> None:
    agent = PrefetchAgent(PrefetchPolicy(max_bytes=max_bytes), concurrency=4)
    agent.record_fetch(0.0, 0.01, 1, 1, size)
    fetch = agent.next_fetch(0.1, held_messages, held_bytes)
    assert held_bytes + fetch.max_bytes <= max(max_bytes, held_bytes)
    assert fetch.max_messages == 0 or held_messages + fetch.max_messages <= agent.policy.max_messages
