"""Which keys get an OrderParamForecast, which are deleted, and how the tail is formed."""

from __future__ import annotations

import numpy as np
import pytest

from foreshard.api.orderparamforecast import ForecastObject, Target, manifest, object_name, target_of
from foreshard.core.forecasting import tracking
from foreshard.core.series import Series

pytestmark = pytest.mark.unit

QUEUE = {
    "apiVersion": "foreshard.io/v1alpha1",
    "kind": "ShardAllocation",
    "metadata": {"name": "orders", "namespace": "shop", "uid": "1234"},
}


def existing(target: Target, managed: bool = True, name: str | None = None) -> ForecastObject:
    return ForecastObject(name or object_name("orders", target), "shop", "orders", target, managed=managed)


def test_the_heaviest_keys_are_tracked_ties_by_name_and_the_overflow_bucket_never() -> None:
    volumes = {"b": 10.0, "a": 10.0, "c": 50.0, "": 999.0, "quiet": 0.0, "d": 1.0}
    assert tracking.heaviest(volumes, 3) == ["c", "a", "b"]


def test_event_keys_are_tracked_even_when_quiet() -> None:
    events = tracking.event_keys([{"name": "sale", "keys": ["quiet", "c"]}, {"name": "all"}])
    assert events == ["c", "quiet"]
    assert tracking.wanted({"c": 5.0, "a": 1.0}, events, limit=1) == ["c", "quiet"]


def test_new_tracked_keys_and_the_tail_are_created_and_untracked_operator_objects_deleted() -> None:
    objects = [
        existing(Target.of_key("a")),
        existing(Target.of_key("gone")),
        existing(Target.of_key("gone"), managed=False, name="my-watch"),  # a person's: never deleted
    ]
    diff = tracking.diff("orders", ["a", "b"], objects)
    assert diff.create == (Target.of_key("b"), Target.tail())
    assert diff.delete == (object_name("orders", Target.of_key("gone")),)


def test_names_are_valid_stable_and_keep_keys_that_differ_in_case_apart() -> None:
    upper, lower = (
        object_name("orders", Target.of_key("Order-1")),
        object_name("orders", Target.of_key("order-1")),
    )
    assert upper != lower and upper == object_name("orders", Target.of_key("Order-1"))
    weird = object_name("orders", Target.of_key("ünï/côdé key!"))
    assert weird.startswith("orders-key-") and all(c.isalnum() or c == "-" for c in weird)
    assert object_name("orders", Target.tail()) == "orders-tail"


def test_the_operators_object_is_owned_by_its_queue_and_labelled_as_its_own() -> None:
    made = manifest(QUEUE, Target.of_key("checkout"))
    owner = made["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "ShardAllocation",
        "orders",
        "1234",
        True,
    )
    assert made["spec"] == {"queueRef": {"name": "orders"}, "key": "checkout"}
    parsed = ForecastObject.from_body(made)
    assert parsed.managed and parsed.target == Target.of_key("checkout")


def test_targets_read_back_from_specs() -> None:
    assert target_of({"slotRange": {"start": 3, "end": 9}}).series_id == "slots:3-9"
    assert target_of({"tail": True}).series_id == "__tail__"
    with pytest.raises(ValueError, match="exactly one"):
        target_of({"queueRef": {"name": "q"}})


def test_the_tail_is_the_total_minus_tracked_keys_never_negative_and_missing_where_the_total_is() -> None:
    total = Series("", 0.0, 60.0, np.array([10.0, np.nan, 3.0]))
    key = Series("a", 0.0, 60.0, np.array([4.0, 2.0, 5.0]))
    values = tracking.tail(total, [key]).values
    assert values[0] == 6.0 and np.isnan(values[1]) and values[2] == 0.0


def test_a_slot_range_sums_its_slots_only() -> None:
    like = Series("", 0.0, 60.0, np.zeros(2))
    per_slot = {
        "1": Series("1", 0.0, 60.0, np.array([1.0, 2.0])),
        "5": Series("5", 0.0, 60.0, np.array([10.0, np.nan])),
        "9": Series("9", 0.0, 60.0, np.array([100.0, 100.0])),
    }
    got = tracking.slot_range(per_slot, Target("slotRange", start=0, end=5), like)
    assert got.values.tolist() == [11.0, 2.0]
