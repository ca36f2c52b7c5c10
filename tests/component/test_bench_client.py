"""fsbench, the benchmark's native Foreshard client (tools/benchclient), against a real broker.

It is built through bench/native_tools.py like the benchmark does (Go is part of bootstrap, so a
missing toolchain fails here). What it reports stored must be what the broker holds: a marker
message published with the Python client before and after each run brackets the offsets the run
took, since a batch's messages occupy consecutive offsets.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from foreshard_broker.client.broker_client import BrokerClient

if TYPE_CHECKING:
    from broker_fixtures import Clients, StartBroker

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import native_tools  # bench/, put on the path above

pytestmark = pytest.mark.component
pytest_plugins = ("broker_fixtures",)


@pytest.fixture(scope="module")
def fsbench() -> Path:
    return native_tools.fsbench()  # cached; a cold build takes about a minute


def run(binary: Path, mode: str, endpoint: str, *flags: str) -> dict[str, Any]:
    result = subprocess.run(
        [str(binary), mode, "--endpoint", endpoint, *flags], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout  # one JSON line, nothing else on stdout
    report: dict[str, Any] = json.loads(lines[0])
    assert report["mode"] == mode
    return report


async def next_offset(client: BrokerClient, producer: str, sequence: int) -> int:
    """Store one marker message; the offset it got is the broker's next offset before it."""
    response = await client.publish(producer, sequence, [("marker", b"m")])
    assert response.WhichOneof("outcome") == "stored" and response.stored.count == 1
    return int(response.stored.first_offset)


async def test_pipelined_reports_what_the_broker_stored(
    fsbench: Path, start_broker: StartBroker, clients: Clients
) -> None:
    broker = start_broker(sync="group")
    client = clients.data(broker)
    before = await next_offset(client, "marker", 1)
    report = run(fsbench, "pipelined", broker.endpoint, "--seconds", "1",
                 "--streams", "2", "--batch", "1000", "--window", "4")  # fmt: skip
    after = await next_offset(client, "marker", 2)

    assert report["stored"] == after - before - 1
    assert report["stored"] == report["batches"] * 1000 > 0
    assert report["msgs_s"] > 0
    assert report["msgs_s"] == pytest.approx(report["stored"] / report["elapsed_s"], rel=0.01)


@pytest.mark.parametrize("unary", [False, True], ids=["publish-stream", "unary"])
async def test_pingpong_reports_what_the_broker_stored(
    fsbench: Path, start_broker: StartBroker, clients: Clients, unary: bool
) -> None:
    broker = start_broker(sync="always")
    client = clients.data(broker)
    before = await next_offset(client, "marker", 1)
    report = run(fsbench, "pingpong", broker.endpoint, "--seconds", "1", *(["--unary"] if unary else []))
    after = await next_offset(client, "marker", 2)

    assert report["unary"] is unary
    assert report["stored"] == after - before - 1 > 0
    assert report["msgs_s"] > 0
    assert 0 < report["p50_us"] <= report["p99_us"]


async def test_latency_sends_on_schedule_and_everything_is_stored(
    fsbench: Path, start_broker: StartBroker, clients: Clients
) -> None:
    broker = start_broker(sync="group")
    client = clients.data(broker)
    before = await next_offset(client, "marker", 1)
    report = run(fsbench, "latency", broker.endpoint, "--seconds", "1", "--rate", "20000", "--batch", "1000")
    after = await next_offset(client, "marker", 2)

    assert report["batches"] == 20
    assert report["stored"] == after - before - 1 == 20_000
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]
    assert report["achieved_msgs_s"] > 0


def test_a_reused_producer_id_fails_loudly(fsbench: Path, start_broker: StartBroker) -> None:
    """A run whose batches the broker answers as duplicates must not report them as throughput."""
    broker = start_broker()
    run(fsbench, "pingpong", broker.endpoint, "--seconds", "0.2", "--producer", "same")
    again = subprocess.run(
        [str(fsbench), "pingpong", "--endpoint", broker.endpoint, "--seconds", "0.2", "--producer", "same"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1
    assert again.stdout == ""
    # Sequence 1 again under the same id and epoch: older than the broker's window, so it is refused
    # (never answered "duplicate" for a batch this run did not send) and the run stops loudly.
    assert "OUT_OF_ORDER_SEQUENCE" in again.stderr
