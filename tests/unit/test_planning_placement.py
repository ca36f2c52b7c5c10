"""Placement invariants (hypothesis) and the hot-key split."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foreshard.core.planning.placement import UNOWNED, place, split_hot_keys

pytestmark = pytest.mark.unit

loads = st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=1, max_size=64)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, dict[str, float], dict[str, int]]:
    slot_load = np.array(draw(loads))
    before = draw(st.integers(1, 12))
    owner = np.array(
        draw(st.lists(st.integers(-1, before - 1), min_size=len(slot_load), max_size=len(slot_load)))
    )
    shards = draw(st.integers(1, 12))
    names = draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True, max_size=3))
    pins = {n: draw(st.floats(0.0, 20.0)) for n in names}
    pin_owner = {n: draw(st.integers(-1, before - 1)) for n in names}
    return slot_load, owner, shards, pins, pin_owner


@settings(max_examples=150, deadline=None)
@given(scenarios(), st.floats(1.0, 200.0))
def test_every_slot_and_pin_is_owned_by_exactly_one_existing_shard(scenario, capacity) -> None:
    slot_load, owner, shards, pins, pin_owner = scenario
    placement = place(slot_load, pins, owner, pin_owner, shards, capacity)
    assert placement.slot_owner.shape == slot_load.shape
    assert ((placement.slot_owner >= 0) & (placement.slot_owner < shards)).all()
    assert sorted(placement.pin_owner) == sorted(pins)
    assert all(0 <= s < shards for s in placement.pin_owner.values())


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_capacity_is_respected_whenever_mean_load_plus_largest_item_fits(scenario) -> None:
    slot_load, owner, shards, pins, pin_owner = scenario
    items = np.concatenate((slot_load, np.array(list(pins.values()), dtype=np.float64)))
    capacity = float(items.sum()) / shards + float(items.max()) + 1e-6
    placement = place(slot_load, pins, owner, pin_owner, shards, capacity)
    assert placement.within_capacity
    assert (placement.shard_load <= capacity * (1 + 1e-9)).all()


@settings(max_examples=100, deadline=None)
@given(scenarios(), st.floats(1.0, 200.0))
def test_plans_are_deterministic(scenario, capacity) -> None:
    slot_load, owner, shards, pins, pin_owner = scenario
    first = place(slot_load, pins, owner, pin_owner, shards, capacity)
    second = place(
        slot_load.copy(), dict(reversed(list(pins.items()))), owner.copy(), pin_owner, shards, capacity
    )
    assert np.array_equal(first.slot_owner, second.slot_owner)
    assert first.pin_owner == second.pin_owner
    assert first.moves == second.moves


@settings(max_examples=150, deadline=None)
@given(scenarios(), st.floats(1.0, 200.0))
def test_an_item_moves_only_when_its_shard_is_gone_or_above_its_limit(scenario, capacity) -> None:
    slot_load, owner, shards, pins, pin_owner = scenario
    placement = place(slot_load, pins, owner, pin_owner, shards, capacity)
    items = np.concatenate((slot_load, np.array([pins[k] for k in sorted(pins)], dtype=np.float64)))
    before = np.concatenate((owner, np.array([pin_owner[k] for k in sorted(pins)], dtype=np.int64)))
    limit = min(capacity, float(items.sum()) / shards * 1.1)
    surviving = (before >= 0) & (before < shards)
    load_before = np.bincount(before[surviving], weights=items[surviving], minlength=shards)
    calm = {s for s in range(shards) if load_before[s] <= limit}
    moved = {m.item for m in placement.moves}
    names = [f"slot/{i}" for i in range(len(slot_load))] + [f"key/{k}" for k in sorted(pins)]
    for name, was in zip(names, before.tolist(), strict=True):
        if was in calm:
            assert name not in moved


@settings(max_examples=100, deadline=None)
@given(scenarios(), st.floats(1.0, 200.0))
def test_scale_in_leaves_nothing_on_the_removed_ordinals(scenario, capacity) -> None:
    slot_load, owner, shards, pins, pin_owner = scenario
    placement = place(slot_load, pins, owner, pin_owner, shards, capacity)
    assert int(placement.slot_owner.max()) < shards
    drained = [m for m in placement.moves if m.source >= shards]
    assert len(drained) == int((owner >= shards).sum()) + sum(1 for s in pin_owner.values() if s >= shards)


def test_a_key_hotter_than_one_shard_is_pinned_and_reported() -> None:
    keys = ["cold-1", "cold-2", "hot"]
    hot = split_hot_keys(keys, np.array([0, 1, 1]), np.array([1.0, 2.0, 50.0]), slots=4, threshold=10.0)
    assert hot.pins == {"hot": 50.0}
    assert hot.slot_load.tolist() == [1.0, 2.0, 0.0, 0.0]
    placement = place(hot.slot_load, hot.pins, np.full(4, UNOWNED), {}, shards=2, capacity=40.0)
    assert placement.unsplittable == ("hot",)
    assert not placement.within_capacity


def test_event_keys_are_pinned_even_when_quiet() -> None:
    hot = split_hot_keys(
        ["a", "launch"], np.array([0, 0]), np.array([1.0, 0.5]), 2, 10.0, event_keys=["launch"]
    )
    assert hot.pins == {"launch": 0.5}
    assert hot.slot_load.tolist() == [1.0, 0.0]


def test_scale_out_moves_load_onto_the_new_shards_and_keeps_the_rest() -> None:
    owner = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    placement = place(np.ones(8), {}, owner, {}, shards=4, capacity=100.0)
    assert np.bincount(placement.slot_owner, minlength=4).tolist() == [2, 2, 2, 2]
    assert len(placement.moves) == 4
    assert {m.target for m in placement.moves} == {2, 3}
