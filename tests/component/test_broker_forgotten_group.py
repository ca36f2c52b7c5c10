"""A forgotten consumer group on a real broker: retention keeps publishing going, DeleteGroup frees it."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from typing import TYPE_CHECKING

import grpc
import pytest

from foreshard_broker.client.broker_errors import BrokerCallError

if TYPE_CHECKING:
    from broker_fixtures import Clients, StartBroker

pytestmark = pytest.mark.component
pytest_plugins = ("broker_fixtures",)

PAYLOAD = b"m" * 1000
LIMITS = ["--max-retained-bytes", "50000"]


def batch(sequence: int) -> list[tuple[str, bytes]]:
    return [(f"k{(sequence + n) % 4}", PAYLOAD) for n in range(10)]


def metric(url: str, name: str, labels: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        page = response.read().decode()
    found = re.search(rf"^{name}\{{[^}}]*{labels}[^}}]*\}} (\S+)$", page, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_a_forgotten_group_does_not_stop_publishing_within_the_retention_limit(
    start_broker: StartBroker, clients: Clients
) -> None:
    process = start_broker(extra_args=[*LIMITS, "--retention-bytes", "30000"])
    client = clients.data(process)
    await client.create_group("forgotten")
    await client.create_group("live")
    consumed = 0
    for sequence in range(1, 31):  # 300 kB through a 50 kB memory cap: only retention makes room
        response = await client.publish("p", sequence, batch(sequence))
        assert response.stored.count == 10
        while messages := await client.fetch("live", "c", max_messages=100):
            await client.ack("live", [m.offset for m in messages])
            consumed += len(messages)
    assert consumed == 300
    backlog = await client.backlog()
    assert backlog.retained_bytes <= 30_000
    dropped = await asyncio.to_thread(
        metric, process.http_url, "foreshard_broker_retention_dropped_messages_total", 'group="forgotten"'
    )
    assert dropped == 300 - backlog.retained_messages, (dropped, backlog)
    assert (
        await asyncio.to_thread(
            metric, process.http_url, "foreshard_broker_retention_dropped_messages_total", 'group="live"'
        )
        == 0
    )
    print(f"[forgotten group, retention 30 kB] published=300 consumed_by_live=300 "
          f"dropped_for_forgotten={int(dropped)} retained={backlog.retained_messages}")  # fmt: skip


async def test_deleting_a_forgotten_group_frees_its_hold_and_stays_deleted_after_a_restart(
    start_broker: StartBroker, clients: Clients
) -> None:
    process = start_broker(extra_args=[*LIMITS, "--retention-bytes", "0"])  # no retention: the cap hits
    client, admin = clients.data(process), clients.admin(process)
    await client.create_group("forgotten")
    sequence = 0
    with pytest.raises(BrokerCallError) as refused:
        while True:
            sequence += 1
            await client.publish("p", sequence, batch(sequence))
    assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    held = (await client.backlog()).retained_messages
    deleted = await admin.delete_group("forgotten")
    assert (deleted.deleted, deleted.released) == (True, held)
    assert (await client.backlog()).retained_messages == 0
    assert (await client.publish("p", sequence, batch(sequence))).stored.count == 10  # the refused one, again
    with pytest.raises(BrokerCallError) as gone:
        await client.fetch("forgotten", "c")
    assert gone.value.code is grpc.StatusCode.NOT_FOUND
    process.restart()
    client = clients.data(process)
    assert (await client.backlog()).retained_messages == 10  # no group: kept for a future group
    with pytest.raises(BrokerCallError) as still_gone:
        await client.fetch("forgotten", "c")
    assert still_gone.value.code is grpc.StatusCode.NOT_FOUND
