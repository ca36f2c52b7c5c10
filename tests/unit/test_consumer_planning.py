"""Consumer groups: the backlog ahead, and the replicas that work it off before it builds."""

from __future__ import annotations

import numpy as np
import pytest

from foreshard.api.consumers import ConsumerGroup, ScaleTarget, groups_of
from foreshard.core.forecasting import Forecast
from foreshard.core.planning import consumers
from foreshard.core.planning.consumers import GroupPolicy

pytestmark = pytest.mark.unit

STEP = 60.0
NOW = 1_700_000_000.0
GROUP = ConsumerGroup(
    "billing",
    ScaleTarget("apps/v1", "Deployment", "billing"),
    per_replica=10.0,
    max_replicas=20,
    drain_s=300.0,
)
POLICY = GroupPolicy("Auto", lead_s=120.0, horizon_s=900.0, stabilization_s=300.0, quantile=0.9)


def flat(rate: float, key: str = "x") -> Forecast:
    mean = np.full(30, rate * STEP)
    return Forecast(key, NOW, STEP, mean, {0.9: mean * 1.2})


def test_the_backlog_grows_by_what_arrives_beyond_what_is_acknowledged_and_never_goes_negative() -> None:
    path = consumers.backlog_path(100.0, np.array([50.0, 50.0, 0.0, 0.0]), np.array([20.0, 20.0, 200.0, 0.0]))
    assert path.tolist() == [130.0, 160.0, 0.0, 0.0]


def test_replicas_are_sized_ahead_of_a_backlog_the_acks_cannot_keep_up_with() -> None:
    decided = consumers.decide("q", GROUP, (600.0, flat(30.0), flat(20.0)), 2, {}, NOW, POLICY)
    # backlog at +2m: 600 + 2 steps x (30 - 20) x 60 = 1800; 36 msg/s peak + 1800 / 300 s = 42 -> 5 replicas
    assert decided.predicted_backlog == pytest.approx(1800.0)
    assert decided.predicted_arrivals == pytest.approx(36.0)
    assert (decided.target, decided.replicas) == (5, 5)


def test_fewer_replicas_wait_for_the_stabilization_window() -> None:
    first = consumers.decide("q", GROUP, (0.0, flat(5.0), flat(5.0)), 4, {}, NOW, POLICY)
    assert (first.target, first.replicas) == (1, 4)
    held = consumers.decide("q", GROUP, (0.0, flat(5.0), flat(5.0)), 4, first.to_status(), NOW + 299, POLICY)
    assert held.replicas == 4
    done = consumers.decide("q", GROUP, (0.0, flat(5.0), flat(5.0)), 4, first.to_status(), NOW + 300, POLICY)
    assert done.replicas == 1


@pytest.mark.parametrize(
    ("mode", "approved", "replicas"), [("DryRun", False, 2), ("Approve", False, 2), ("Approve", True, 5)]
)
def test_modes_decide_whether_the_change_applies(mode: str, approved: bool, replicas: int) -> None:
    pid = consumers.plan_id("q", "billing", 2, 5)
    policy = GroupPolicy(mode, 120.0, 900.0, 300.0, 0.9, frozenset({pid}) if approved else frozenset())
    decided = consumers.decide("q", GROUP, (600.0, flat(30.0), flat(20.0)), 2, {}, NOW, policy)
    assert (decided.target, decided.replicas, decided.plan_id) == (5, replicas, pid)


def test_a_group_without_a_scale_target_is_only_predicted() -> None:
    decided = consumers.decide(
        "q", ConsumerGroup("analytics"), (10.0, flat(1.0), flat(1.0)), None, {}, NOW, POLICY
    )
    assert decided.replicas is None and "metrics only" in decided.why
    assert set(decided.to_status()) == {
        "name",
        "backlog",
        "predictedArrivals",
        "predictedAcks",
        "predictedBacklog",
        "why",
    }


def test_consumer_groups_read_from_the_spec_with_the_crd_defaults() -> None:
    body = {
        "spec": {
            "consumerGroups": [
                {
                    "name": "b",
                    "scaleTargetRef": {"kind": "Deployment", "name": "w"},
                    "messagesPerSecondPerReplica": 5,
                },
                {"name": "a"},
            ]
        }
    }
    a, b = groups_of(body)
    assert a == ConsumerGroup("a")
    assert b.target == ScaleTarget("apps/v1", "Deployment", "w") and (
        b.min_replicas,
        b.max_replicas,
        b.drain_s,
    ) == (1, 10, 300.0)
