"""Capacity planning (DESIGN.md §6): pure functions from forecasts and load to shards, placement and moves."""

from foreshard.core.planning.capacity import LoadSample, ShardCapacity, estimate_capacity
from foreshard.core.planning.moves import MovePolicy, Schedule, schedule_moves
from foreshard.core.planning.placement import Move, Placement, place, split_hot_keys
from foreshard.core.planning.plan import Observed, Plan, decide
from foreshard.core.planning.target import TargetDecision, TargetPolicy, plan_target, shards_for_rate

__all__ = [
    "LoadSample",
    "Move",
    "MovePolicy",
    "Observed",
    "Placement",
    "Plan",
    "Schedule",
    "ShardCapacity",
    "TargetDecision",
    "TargetPolicy",
    "decide",
    "estimate_capacity",
    "place",
    "plan_target",
    "schedule_moves",
    "shards_for_rate",
    "split_hot_keys",
]
