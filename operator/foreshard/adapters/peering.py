"""kopf's peering objects: kopf only patches them, so the operator creates its own at start-up.

Replicas of the operator keep their keep-alives (identity, priority, last seen) in the status of
one ClusterKopfPeering (cluster-wide mode) or of one KopfPeering per watched namespace; the one
with the highest priority acts, the others pause until its keep-alive lapses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

GROUP = "kopf.dev"
VERSION = "v1"


def configured_client() -> client.ApiClient:
    """In a pod its ServiceAccount, elsewhere the current kubeconfig (kopf's login comes later)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


def ensure_peering(name: str, namespaces: Sequence[str], api: client.ApiClient | None = None) -> list[str]:
    """Create the peering object(s) named `name` unless they exist; returns where one was created.

    Create-and-ignore-409 rather than get-then-create: two replicas starting together race, and
    the loser must not fail, and the operator needs no `get` for this.
    """
    custom = client.CustomObjectsApi(api or configured_client())
    created: list[str] = []
    if not namespaces:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
        if _created(lambda: custom.create_cluster_custom_object(GROUP, VERSION, "clusterkopfpeerings", body)):
            created.append("cluster-wide")
        return created
    for namespace in namespaces:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "KopfPeering",
            "metadata": {"name": name, "namespace": namespace},
        }
        if _created(_namespaced(custom, namespace, body)):
            created.append(namespace)
    return created


def _namespaced(
    custom: client.CustomObjectsApi, namespace: str, body: dict[str, Any]
) -> Callable[[], object]:
    return lambda: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "kopfpeerings", body)


def _created(call: Callable[[], object]) -> bool:
    try:
        call()
    except ApiException as error:
        if error.status == 409:
            return False
        raise
    return True
