"""The migration state machine: a table of single steps, and crash points over a model of the brokers."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foreshard.api.migration import Item, Migration, Phase
from foreshard.core.migration.actions import (
    Action,
    CopyAhead,
    Fence,
    PushRouting,
    Release,
    RollBack,
    Switch,
)
from foreshard.core.migration.machine import Observation, Policy, Result, owner, step, switched
from foreshard_broker.routing import RoutingTable

pytestmark = pytest.mark.unit

SLOTS = 16
NOW = 1_000_000.0
POLICY = Policy(pause_budget_s=0.1, lease_ttl_s=10.0, catch_up_messages=100, retry_after_s=30.0)
TABLE = RoutingTable(3, SLOTS, tuple(s % 3 for s in range(SLOTS)), {}, {0: "a:1", 1: "b:1", 2: "c:1"})


def move(phase: Phase = Phase.PREPARE, **changes: object) -> Migration:
    base = Migration("m-1", Item(slot=3), 0, 1, phase, phase_since_s=NOW, started_at_s=NOW)
    return replace(base, **changes)  # type: ignore[arg-type]


def seen(result: Result | None = None, table: RoutingTable = TABLE, **epochs: int | None) -> Observation:
    served = {0: table.epoch, 1: table.epoch, 2: table.epoch}
    served.update({int(k[1:]): v for k, v in epochs.items()})
    return Observation(NOW + 5, table, result, served)


SWITCHED = switched(TABLE, move())
CASES: dict[str, tuple[Migration, Observation, Phase, type[Action] | None]] = {
    "a new move copies ahead from the start": (move(), seen(), Phase.PREPARE, CopyAhead),
    "a large copy round copies again while the source serves": (
        move(),
        seen(Result(True, copied=5000, through=5000)),
        Phase.PREPARE,
        CopyAhead,
    ),
    "a small copy round fences next": (
        move(),
        seen(Result(True, copied=3, through=5003)),
        Phase.FENCE,
        Fence,
    ),
    "a refused import rolls back at once": (
        move(),
        seen(Result(False, "slot 3 outside the selector", refused=True)),
        Phase.ROLLING_BACK,
        RollBack,
    ),
    "an unreachable broker is retried in Prepare": (
        move(),
        seen(Result(False, "unreachable")),
        Phase.PREPARE,
        None,
    ),
    "repeated unreachability rolls back": (
        move(failures=4),
        seen(Result(False, "unreachable")),
        Phase.ROLLING_BACK,
        RollBack,
    ),
    "a restarted operator fences again in Fence": (move(Phase.FENCE), seen(), Phase.FENCE, Fence),
    "a fence within the budget switches": (
        move(Phase.FENCE),
        seen(Result(True, through=9000, pause_ms=20)),
        Phase.SWITCH,
        Switch,
    ),
    "a fence over the pause budget rolls back": (
        move(Phase.FENCE),
        seen(Result(True, through=9000, pause_ms=95)),
        Phase.ROLLING_BACK,
        RollBack,
    ),
    "deliveries that did not settle roll back": (
        move(Phase.FENCE),
        seen(Result(True, inflight=2, pause_ms=5)),
        Phase.ROLLING_BACK,
        RollBack,
    ),
    "a failed fence rolls back": (
        move(Phase.FENCE),
        seen(Result(False, "timeout")),
        Phase.ROLLING_BACK,
        RollBack,
    ),
    "a Prepare that takes too long rolls back": (
        move(phase_since_s=NOW - 10_000),
        seen(),
        Phase.ROLLING_BACK,
        RollBack,
    ),
    "a restarted operator pushes the recorded switch again": (
        move(Phase.SWITCH, epoch=4),
        seen(None, SWITCHED, s0=3, s1=3),
        Phase.SWITCH,
        Switch,
    ),
    "a failed switch is retried, never rolled back": (
        move(Phase.SWITCH, epoch=4),
        seen(Result(False, "b unreachable"), SWITCHED),
        Phase.SWITCH,
        None,
    ),
    "a switch served by source and target resumes and pushes the others": (
        move(Phase.SWITCH, epoch=4),
        seen(None, SWITCHED, s0=4, s1=4, s2=3),
        Phase.RESUME,
        PushRouting,
    ),
    "a resumed move drains once the others were pushed": (
        move(Phase.RESUME, epoch=4),
        seen(Result(True), SWITCHED, s0=4, s1=4),
        Phase.DRAIN,
        Release,
    ),
    "a released source is done": (move(Phase.DRAIN, epoch=4), seen(Result(True), SWITCHED), Phase.DONE, None),
    "a rollback over the budget retries later with the next attempt": (
        move(Phase.ROLLING_BACK, reason="PauseBudgetExceeded: 95 ms"),
        seen(Result(True)),
        Phase.PREPARE,
        None,
    ),
    "a rollback of a refused import stays rolled back": (
        move(Phase.ROLLING_BACK, reason="ImportRefused: no"),
        seen(Result(True)),
        Phase.ROLLED_BACK,
        None,
    ),
    "the last attempt stays rolled back": (
        move(Phase.ROLLING_BACK, reason="InflightUnsettled", attempt=3),
        seen(Result(True)),
        Phase.ROLLED_BACK,
        None,
    ),
    "a rollback waits for the lease of an unreachable source to lapse": (
        move(Phase.ROLLING_BACK, reason="FenceFailed"),
        seen(Result(True, lease_lapsing=True)),
        Phase.ROLLING_BACK,
        None,
    ),
    "a discard that failed is retried": (
        move(Phase.ROLLING_BACK, reason="FenceFailed"),
        seen(Result(False, "b down")),
        Phase.ROLLING_BACK,
        None,
    ),
    "a retried attempt waits before copying again": (
        move(attempt=2),
        seen(),
        Phase.PREPARE,
        None,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_each_step(case: str) -> None:
    migration, observation, phase, action = CASES[case]
    after, performed = step(migration, observation, POLICY)
    assert after.phase is phase, after.reason
    assert (type(performed) if performed is not None else None) is action


def test_the_switch_records_one_epoch_more_and_gives_the_slot_to_the_target() -> None:
    after, action = step(move(Phase.FENCE), seen(Result(True, through=77, pause_ms=3)), POLICY)
    assert isinstance(action, Switch)
    assert (after.epoch, action.table.epoch, action.table.slot_owners[3]) == (4, 4, 1)
    assert after.copied_through == action.from_offset == 77 and after.pause_ms == 3


def test_a_pinned_key_moves_by_pinning_it_to_the_target() -> None:
    key_move = replace(move(Phase.FENCE), item=Item(key="vip"))
    _, action = step(key_move, seen(Result(True, pause_ms=1)), POLICY)
    assert isinstance(action, Switch) and action.table.pinned == {"vip": 1}
    assert action.table.slot_owners == TABLE.slot_owners


def test_a_retry_fences_under_a_new_lease() -> None:
    first, second = move(Phase.FENCE), move(Phase.FENCE, attempt=2)
    leases = [step(m, seen(), POLICY)[1] for m in (first, second)]
    assert [lease.lease_id for lease in leases if isinstance(lease, Fence)] == ["m-1/1", "m-1/2"]


def test_the_fence_settles_within_a_share_of_the_pause_budget() -> None:
    _, action = step(move(Phase.FENCE), seen(), POLICY)
    assert isinstance(action, Fence) and action.settle_s == pytest.approx(0.05) and action.ttl_s == 10


# ---------------------------------------------------------------------------- crash points


@dataclass
class ShardModel:
    table: RoutingTable
    lease_until: float = 0.0
    copy: bool = False
    released: bool = False


@dataclass
class World:
    """The brokers as the protocol promises them (leases lapse, pushes are per shard)."""

    now: float = NOW
    recorded: RoutingTable = TABLE
    shards: dict[int, ShardModel] = field(default_factory=lambda: {i: ShardModel(TABLE) for i in range(3)})
    item: Item = field(default_factory=lambda: Item(slot=3))

    def observe(self, result: Result | None) -> Observation:
        return Observation(
            self.now, self.recorded, result, {i: s.table.epoch for i, s in self.shards.items()}
        )

    def self_owners(self) -> list[int]:
        return [i for i, s in self.shards.items() if owner(s.table, self.item) == i]

    def perform(self, action: Action, fail: bool, pause_ms: float) -> Result:
        source, target = self.shards[0], self.shards[1]
        if fail:  # the worst partial effect: the source's half happened, the target's did not
            if isinstance(action, Fence):
                source.lease_until = self.now + action.ttl_s
            elif isinstance(action, Switch):
                source.table, source.lease_until = action.table, 0.0
            return Result(False, "injected failure")
        if isinstance(action, CopyAhead):
            target.copy = True
            return Result(True, copied=10, through=10)
        if isinstance(action, Fence):
            source.lease_until, target.copy = self.now + action.ttl_s, True
            return Result(True, through=20, pause_ms=pause_ms)
        if isinstance(action, Switch):
            for shard in (source, target):
                shard.table, shard.lease_until = action.table, 0.0
            return Result(True, pause_ms=pause_ms + 5)
        return self._finish(action)

    def _finish(self, action: Action) -> Result:
        source, target = self.shards[0], self.shards[1]
        if isinstance(action, PushRouting):
            for shard in action.shards:
                self.shards[shard].table = action.table
        elif isinstance(action, Release):
            assert owner(source.table, self.item) != 0, "released a copy the source still serves"
            source.released = True
        elif isinstance(action, RollBack):
            assert owner(target.table, self.item) != 1, "discarded a copy the target serves"
            source.lease_until, target.copy = 0.0, False
        return Result(True)


EVENTS = st.sampled_from(["act", "act", "act", "fail", "crash-before-record", "crash-after-record"])


@settings(max_examples=300, deadline=None)
@given(events=st.lists(EVENTS, max_size=40), pauses=st.lists(st.floats(1, 300), min_size=1, max_size=8))
def test_a_move_resumed_from_any_crash_point_ends_done_or_rolled_back_with_one_owner(
    events: list[str], pauses: list[float]
) -> None:
    world, recorded, result = World(), move(), None
    visited = {recorded.phase}
    for n in range(400):
        if recorded.terminal:
            break
        event = events[n] if n < len(events) else "act"
        after, action = step(recorded, world.observe(result), POLICY)
        world.now += 7.0
        if event == "crash-before-record":
            result = None  # a fresh process: nothing was written, nothing done
            continue
        if isinstance(action, Switch) and after.phase is Phase.SWITCH:
            world.recorded = action.table  # status.routing is written with the Switch phase
        recorded = after
        visited.add(recorded.phase)
        if event == "crash-after-record" or action is None:
            result = None
            continue
        result = world.perform(action, event == "fail", pauses[n % len(pauses)])
        assert len(world.self_owners()) <= 1, "two shards served the slot at once"
    assert recorded.terminal, f"stuck in {recorded.phase}: {recorded.reason}"
    assert not {Phase.DONE, Phase.ROLLED_BACK} <= visited
    [serving] = world.self_owners()
    if recorded.phase is Phase.DONE:
        assert serving == 1 and world.shards[0].released and world.shards[1].copy
    else:
        assert serving == 0 and not world.shards[1].copy
        assert world.shards[0].lease_until <= world.now, "the source is still fenced after the rollback"
