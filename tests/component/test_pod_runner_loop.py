"""The pod runner's loop with real brokers and an in-memory API server twin (no control plane):
an emptyDir pod's data lives and dies with the pod, a broker that exits is restarted with backoff,
and shutdown drains every broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from foreshard.api.shardallocation import QueueSpec
from foreshard.core.workload import stateful_set
from foreshard.localcluster.podrunner import PodRunner
from foreshard_broker.client.broker_client import AdminClient
from foreshard_broker.routing import RoutingTable

pytestmark = pytest.mark.component


class FakeApiClient:
    @staticmethod
    def sanitize_for_serialization(value: Any) -> Any:
        return json.loads(json.dumps(value))


class FakeCore:
    """The handful of CoreV1Api calls the runner makes, over dicts."""

    def __init__(self) -> None:
        self.api_client = FakeApiClient()
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: set[tuple[str, str]] = set()
        self.status_patches = 0

    def list_pod_for_all_namespaces(self, label_selector: str) -> dict[str, Any]:
        return {"items": list(self.pods.values())}

    def patch_namespaced_pod_status(self, name: str, ns: str, patch: dict[str, Any], **_: Any) -> None:
        self.status_patches += 1
        self.pods[(ns, name)]["status"].update(patch["status"])

    def patch_namespaced_pod(self, name: str, ns: str, patch: dict[str, Any], **_: Any) -> None:
        self.pods[(ns, name)]["metadata"].setdefault("annotations", {}).update(
            patch["metadata"]["annotations"]
        )

    def delete_namespaced_pod(self, name: str, ns: str, grace_period_seconds: int) -> None:
        assert grace_period_seconds == 0
        self.pods.pop((ns, name))

    def read_namespaced_secret(self, name: str, ns: str) -> None:
        if (ns, name) not in self.secrets:
            raise ApiException(status=404)

    def list_persistent_volume_claim_for_all_namespaces(self) -> dict[str, Any]:
        return {"items": []}

    def list_persistent_volume(self) -> dict[str, Any]:
        return {"items": []}


def shard_pod(name: str) -> dict[str, Any]:
    body = {"metadata": {"name": "orders", "namespace": "shop"}, "spec": {"minShards": 1, "maxShards": 2}}
    template = stateful_set(QueueSpec.from_body(body), 1)["spec"]["template"]  # emptyDir data
    meta = {**template["metadata"], "name": name, "namespace": "shop", "uid": f"uid-{name}"}
    return {"metadata": meta, "spec": {**template["spec"], "nodeName": "kwok-node-0"}, "status": {}}


def tick_until(runner: PodRunner, check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runner.tick()
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def routed_ready(runner: PodRunner, core: FakeCore, name: str) -> bool:
    """Shard-pod brokers await routing: once this one listens, push a table (as the operator
    would) and report whether the pod went Ready."""
    slot = runner.slots.get(f"shop/{name}")
    if slot is None or slot.broker is None or not slot.broker.grpc_port:
        return False
    if not container(core, name).get("ready"):
        shard = int(name.rsplit("-", 1)[1])
        table = RoutingTable(1, 1024, (shard,) * 1024, {}, {shard: slot.broker.endpoint})

        async def push() -> None:
            admin = AdminClient(slot.broker.endpoint, token="secret-token")
            try:
                await admin.update_routing(table)
            finally:
                await admin.close()

        with contextlib.suppress(Exception):  # not listening yet: the next tick pushes again
            asyncio.run(push())
        return False
    return True


def container(core: FakeCore, name: str) -> dict[str, Any]:
    statuses = core.pods[("shop", name)]["status"].get("containerStatuses") or [{}]
    return dict(statuses[0])


@pytest.fixture
def runner(tmp_path: Path) -> Any:
    token = tmp_path / "admin-token"
    token.write_text("secret-token\n")
    core = FakeCore()
    runner = PodRunner(core, tmp_path, token, tmp_path / "targets")  # type: ignore[arg-type]
    yield runner, core
    runner.shutdown()


def test_an_empty_dir_pod_runs_a_broker_whose_data_goes_with_the_pod(runner: Any, tmp_path: Path) -> None:
    runner, core = runner
    core.pods[("shop", "orders-shard-0")] = shard_pod("orders-shard-0")
    for _ in range(3):
        runner.tick()
    assert not runner.slots or runner.slots["shop/orders-shard-0"].broker is None, "no Secret: no broker"
    core.secrets.add(("shop", "foreshard-broker-admin"))
    tick_until(runner, lambda: routed_ready(runner, core, "orders-shard-0"), "Ready")
    data = tmp_path / "podrunner" / "pods" / "uid-orders-shard-0"
    assert (data / "log").is_dir()
    patches = core.status_patches
    for _ in range(5):
        runner.tick()
    assert core.status_patches == patches, "nothing changed, nothing patched"
    pid = json.loads((tmp_path / "podrunner" / "brokers.json").read_text())["shop/orders-shard-0"]

    core.pods[("shop", "orders-shard-0")]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    tick_until(runner, lambda: not core.pods, "the pod deleted after its broker stopped")
    assert not data.exists(), "an emptyDir is removed with its pod"
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert json.loads((tmp_path / "targets" / "foreshard-brokers.json").read_text()) == []


def test_a_broker_that_exits_is_restarted_after_a_backoff(runner: Any) -> None:
    runner, core = runner
    core.secrets.add(("shop", "foreshard-broker-admin"))
    core.pods[("shop", "orders-shard-1")] = shard_pod("orders-shard-1")
    tick_until(runner, lambda: routed_ready(runner, core, "orders-shard-1"), "Ready")
    slot = runner.slots["shop/orders-shard-1"]
    endpoint = slot.broker.endpoint
    os.kill(slot.broker.process.pid, signal.SIGKILL)
    waiting = tick_until(
        runner,
        lambda: "waiting" in (c := container(core, "orders-shard-1"))["state"] and c,
        "CrashLoopBackOff",
    )
    assert waiting["state"]["waiting"]["reason"] == "CrashLoopBackOff" and not waiting["ready"]
    assert waiting["lastState"]["terminated"]["exitCode"] == 137, "128 + SIGKILL"
    restarted = tick_until(
        runner,
        lambda: (c := container(core, "orders-shard-1")).get("ready") and c,
        "Ready again",
    )
    assert restarted["restartCount"] == 1
    assert runner.slots["shop/orders-shard-1"].broker.endpoint == endpoint, "same ports after a restart"
