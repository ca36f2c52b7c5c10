"""Foreshard's custom resources as plain bodies, for the `kubectl foreshard` plugin.

Bodies are what the API server returns (dicts); the plugin's views read them and nothing else, so
its tests feed recorded bodies through `ResourcePort` without a server.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from foreshard.api.names import GROUP, ORDER_PARAM_FORECASTS, SHARD_ALLOCATIONS, VERSION

Body = dict[str, Any]


class NotFound(LookupError):
    """The object does not exist; the message names it."""


class Conflict(RuntimeError):
    """The object changed since it was read (resourceVersion precondition failed)."""


class ResourcePort(Protocol):
    def get_queue(self, namespace: str, name: str) -> Body: ...

    def list_queues(self, namespace: str | None) -> list[Body]: ...

    def list_forecasts(self, namespace: str) -> list[Body]: ...

    def annotate_queue(
        self, namespace: str, name: str, annotations: dict[str, str], resource_version: str
    ) -> Body: ...


def load(kubeconfig: str | None, context: str | None) -> tuple[client.ApiClient, str]:
    """A client for the kubeconfig (kubectl's rules: $KUBECONFIG, then ~/.kube/config) and its namespace."""
    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig, context=context, client_configuration=configuration
    )
    _, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    if context:
        contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        active = next(c for c in contexts if c["name"] == context)
    namespace = str(active.get("context", {}).get("namespace") or "default")
    return client.ApiClient(configuration), namespace


class KubeResources:
    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)

    def get_queue(self, namespace: str, name: str) -> Body:
        try:
            body = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, SHARD_ALLOCATIONS, name
            )
        except ApiException as error:
            if error.status == 404:
                raise NotFound(f"ShardAllocation {namespace}/{name} not found") from error
            raise
        return cast(Body, body)

    def list_queues(self, namespace: str | None) -> list[Body]:
        if namespace is None:
            found = self.custom.list_cluster_custom_object(GROUP, VERSION, SHARD_ALLOCATIONS)
        else:
            found = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, SHARD_ALLOCATIONS)
        return list(cast(Body, found).get("items", []))

    def list_forecasts(self, namespace: str) -> list[Body]:
        found = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, ORDER_PARAM_FORECASTS)
        return list(cast(Body, found).get("items", []))

    def annotate_queue(
        self, namespace: str, name: str, annotations: dict[str, str], resource_version: str
    ) -> Body:
        """A merge patch of the annotations that applies only to the version that was read."""
        patch = {"metadata": {"annotations": annotations, "resourceVersion": resource_version}}
        try:
            body = self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                SHARD_ALLOCATIONS,
                name,
                patch,
                _content_type="application/merge-patch+json",
            )
        except ApiException as error:
            if error.status == 409:
                raise Conflict(f"ShardAllocation {namespace}/{name} changed while being approved") from error
            if error.status == 404:
                raise NotFound(f"ShardAllocation {namespace}/{name} not found") from error
            raise
        return cast(Body, body)
