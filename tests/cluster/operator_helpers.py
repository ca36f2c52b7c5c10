"""Shared by the cluster tests that run the operator process as its own ServiceAccount."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from foreshard.localcluster import devenv
from foreshard.localcluster.cluster import LocalCluster
from foreshard.localcluster.process import poll_until

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "queues"


def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, evidence: Callable[[], str] | None = None
) -> None:
    poll_until(predicate, what, timeout_s, evidence=evidence)


def get(cluster: LocalCluster, kind: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def scaled_events(cluster: LocalCluster) -> str:
    return str(
        cluster.kubectl(
            "get", "events", "-n", NAMESPACE, "--field-selector", "involvedObject.kind=ShardAllocation"
        ).stdout
    )


def scaled(cluster: LocalCluster, name: str) -> list[tuple[str, int]]:
    """(message, count) of every Scaled Event of the queue `name`."""
    found = cluster.kubectl(
        "get",
        "events",
        "-n",
        NAMESPACE,
        "-o",
        "json",
        "--field-selector",
        f"involvedObject.name={name},reason=Scaled",
    )
    return [(e["message"], int(e.get("count") or 1)) for e in json.loads(found.stdout)["items"]]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def assert_no_rbac_denials(log: Path) -> None:
    """The operator's RBAC sufficed: the API never answered 403 (timestamps may contain `,403`)."""
    text = log.read_text()
    assert "Forbidden" not in text and "(403)" not in text, text[-3000:]


def install(cluster: LocalCluster) -> None:
    """The operator's manifests and the queues namespace; idempotent, several modules share a cluster."""
    cluster.kubectl("apply", "-k", str(REPO / "manifests"))
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(namespace))
    cluster.create_admin_token_secret(NAMESPACE)  # shard pods mount it; the runner's brokers use it


@contextmanager
def running_operator(
    cluster: LocalCluster,
    workdir: Path,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    account: tuple[str, str] = ("foreshard-system", "foreshard-operator"),
    installed: bool = False,
) -> Iterator[dict[str, Any]]:
    """`foreshard run` as a ServiceAccount (the manifests' foreshard-operator), resyncing every 2 s:
    the dev harness's own `devenv.start_operator`, stopped when the block ends.

    `env` adds to or overrides the operator's environment; `args` go to `foreshard run` (e.g.
    --peering, --namespace); `installed` skips the manifests when the caller set up the account.
    """
    if not installed:
        install(cluster)
    workdir.mkdir(parents=True, exist_ok=True)
    managed, metrics_port = devenv.start_operator(
        cluster, workdir, env={"FORESHARD_RESYNC_SECONDS": "2", **(env or {})}, args=args, account=account
    )
    process = managed.process
    try:
        yield {
            "log": managed.log,
            "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
            "metrics_address": f"127.0.0.1:{metrics_port}",
            "process": process,
        }
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=20)
