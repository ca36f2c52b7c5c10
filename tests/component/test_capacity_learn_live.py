"""capacity.learn from live broker metrics: a real broker under stepped load, scraped by a real
Prometheus; the learnt cost per message must agree with the CPU the broker process really used."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from foreshard.adapters.prometheus import connect
from foreshard.core.planning.capacity import learn_capacity
from foreshard.localcluster.prometheus import PrometheusServer
from foreshard_broker.client.broker_client import BrokerClient

if TYPE_CHECKING:
    from broker_fixtures import StartBroker

pytestmark = pytest.mark.component
pytest_plugins = ("broker_fixtures",)

QUEUE = "orders"
PHASES = (150, 600, 1500)  # messages per second, 12 s each
PHASE_S = 12.0
BATCH = 50


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(client: BrokerClient) -> int:
    """Publish each phase's rate in batches on a fixed schedule; returns messages sent."""
    sent, sequence = 0, 0
    for rate in PHASES:
        began, batches = time.monotonic(), 0
        while time.monotonic() - began < PHASE_S:
            sequence, batches = sequence + 1, batches + 1
            keys = [f"k{(sent + i) % 40}" for i in range(BATCH)]
            await client.publish("load", sequence, [(k, b"x" * 256) for k in keys])
            sent += BATCH
            # on schedule: batch n of the phase leaves at began + n x BATCH / rate
            await asyncio.sleep(max(0.0, began + batches * BATCH / rate - time.monotonic()))
    return sent


async def test_the_learnt_cost_per_message_matches_the_cpu_the_broker_really_used(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    broker = start_broker(extra_args=["--queue", QUEUE])
    with PrometheusServer(tmp_path / "prometheus", scrape_interval_s=1) as prometheus:
        prometheus.add_targets("brokers", [broker.http_url.removeprefix("http://")])
        await asyncio.sleep(4)  # the first scrapes: a rate needs two samples
        client = BrokerClient(broker.endpoint)
        assert broker.process is not None
        start_cpu, start = cpu_seconds(broker.process.pid), time.time()
        try:
            sent = await drive(client)
        finally:
            await client.close()
        used, end = cpu_seconds(broker.process.pid) - start_cpu, time.time()
        await asyncio.sleep(3)
        samples = connect(prometheus.url).load(QUEUE, start // 1, end // 1, 2.0, 4.0)
    found = learn_capacity(samples, cpu_limit_cores=None, disk_bytes_per_s=None)
    direct = used / sent  # CPU seconds per message, base included: an upper bound on the cost
    assert len(samples) >= 10
    assert 0.2 * direct < found.cpu_seconds_per_message <= 1.3 * direct, (found, direct)
    assert found.messages_per_s >= 0.8 / direct * 0.75
    assert {round(s.bytes_per_s / s.messages_per_s) for s in samples if s.messages_per_s > 100} <= set(
        range(200, 320)
    )
