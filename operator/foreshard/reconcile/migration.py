"""Advance one migration within a pass: gather -> step (core) -> record -> act.

    observe (epochs only where a phase needs them; the last Result kept in process memory)
      -> machine.step -> if the item changed: Recorder.record (status, resourceVersion precondition;
         status.routing with a Switch) -> only then Brokers.perform(action) -> keep its Result

Outside the pause window one action per pass (the timer paces copy rounds, Resume and Drain).
Inside it (Fence, Switch) the pass keeps stepping, each step still recorded before it acts, so no
timer interval is added to the keys' pause (docs/design/20261202-migration-orchestration.md).
A Recorder that raises (a 409: someone else wrote) ends the pass before the action: nothing acted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Protocol

from foreshard.api.migration import Migration, Phase
from foreshard.core.migration.actions import Action, Switch
from foreshard.core.migration.machine import Observation, Policy, Result, step
from foreshard_broker.routing import RoutingTable

PAUSE_WINDOW = frozenset({Phase.FENCE, Phase.SWITCH})
MAX_STEPS = 4


class Recorder(Protocol):
    async def record(self, migration: Migration, table: RoutingTable | None) -> None:
        """Write the migration's item (and status.routing when `table` is given) durably, with the
        resource version as a precondition; raise when someone else wrote first."""
        ...


class Brokers(Protocol):
    async def epochs(self, shards: Iterable[int]) -> dict[int, int | None]: ...

    async def perform(self, action: Action) -> Result: ...


@dataclass
class Advanced:
    migration: Migration
    table: RoutingTable
    actions: list[Action] = field(default_factory=list)
    transitions: list[tuple[Phase, Phase]] = field(default_factory=list)  # for Events and metrics


async def advance(
    migration: Migration,
    table: RoutingTable,
    recorder: Recorder,
    brokers: Brokers,
    policy: Policy,
    now: Callable[[], float],
    results: MutableMapping[str, Result],
) -> Advanced:
    """Step `migration` (whose recorded routing is `table`) as far as this pass may take it.
    `results` is the process's memory of last action results, keyed by migration id."""
    out = Advanced(migration, table)
    for _ in range(MAX_STEPS):
        m = out.migration
        if m.terminal:
            break
        result = results.pop(m.id, None)
        epochs = await brokers.epochs(out.table.endpoints) if _needs_epochs(m, result) else {}
        after, action = step(m, Observation(now(), out.table, result, epochs), policy)
        if after != m:
            recorded = action.table if isinstance(action, Switch) else None
            await recorder.record(after, recorded)  # durable before the action runs
            out.table = recorded or out.table
            if after.phase is not m.phase:
                out.transitions.append((m.phase, after.phase))
        out.migration = after
        if action is None:
            break
        results[after.id] = await brokers.perform(action)
        out.actions.append(action)
        if after.phase not in PAUSE_WINDOW:
            break
    return out


def _needs_epochs(m: Migration, result: Result | None) -> bool:
    """Epochs decide only a resumed Switch and Resume: the fence path never pays for them."""
    return m.phase is Phase.RESUME or (m.phase is Phase.SWITCH and result is None)
