"""Kubernetes I/O for the reconciler: server-side apply of owned objects, observation, and the
migration recorder (status writes with the resourceVersion as a precondition)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from foreshard.api import routing as routing_status
from foreshard.api.migration import Migration
from foreshard.api.names import (
    FIELD_MANAGER,
    GROUP,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_QUEUE,
    ORDER_PARAM_FORECASTS,
    SHARD_ALLOCATIONS,
    VERSION,
)
from foreshard.core.queue_status import Observed
from foreshard_broker.routing import RoutingTable

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
MAX_MIGRATIONS = 64  # the CRD's maxItems of status.migrations
# Finished moves kept in status.migrations beside those in flight. Every migration write carries
# the whole list, and the API server's time for it grows with the object (measured on the local
# cluster: 10 ms with none, 14 ms with 16, 27 ms with 64 at the median): the Switch write lies
# inside the keys' pause. Events and the moves metrics keep the full record.
KEPT_FINISHED = 16


class ApplyRefused(Exception):
    """The API server refused a manifest as it stands (invalid, or forbidden by a policy): sending
    it again will not help until the spec or the cluster changes. Other failures (conflicts,
    timeouts, 5xx) stay ApiExceptions, which kopf retries."""


REFUSALS = frozenset({400, 403, 422})


class StatusConflict(Exception):
    """Someone wrote the object since this pass read it (409): the pass must not act."""


@dataclass(frozen=True)
class ShardPod:
    """A shard pod as listed: enough to find its broker."""

    name: str
    namespace: str
    ordinal: int
    annotations: Mapping[str, str]
    scheduled: bool  # has a node: a pod without one has no address anywhere
    terminating: bool


class KubePort(Protocol):
    def apply(self, manifest: dict[str, Any]) -> None: ...

    def observe_stateful_set(self, namespace: str, name: str) -> Observed: ...

    def shard_pods(self, namespace: str, queue: str) -> list[ShardPod]: ...

    def shard_allocation(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as the API server has it now (None once deleted)."""
        ...

    def write_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str) -> str:
        """Merge-patch `status` only if the object is still at `resource_version` (else raise
        StatusConflict); the new resourceVersion."""
        ...


_ORDINAL = re.compile(r"-(\d+)$")


class KubeAdapter:
    """The real cluster through the official client (configured by kopf's login)."""

    def __init__(self, api: client.ApiClient | None = None) -> None:
        self.api = api or client.ApiClient()

    def apply(self, manifest: dict[str, Any]) -> None:
        """Server-side apply: create or update, owning only the fields we set."""
        kind, meta = manifest["kind"], manifest["metadata"]
        patch = {
            "StatefulSet": client.AppsV1Api(self.api).patch_namespaced_stateful_set,
            "Service": client.CoreV1Api(self.api).patch_namespaced_service,
        }[kind]
        try:
            patch(
                meta["name"],
                meta["namespace"],
                manifest,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=APPLY,
            )
        except ApiException as error:
            if error.status not in REFUSALS:
                raise
            raise ApplyRefused(f"{kind} {meta['name']}: {_message_of(error)}") from error

    def observe_stateful_set(self, namespace: str, name: str) -> Observed:
        try:
            found = client.AppsV1Api(self.api).read_namespaced_stateful_set(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return Observed(replicas=0, ready_replicas=0)
            raise
        return Observed(
            replicas=int(found.spec.replicas or 0),
            ready_replicas=int(found.status.ready_replicas or 0) if found.status else 0,
        )

    def shard_pods(self, namespace: str, queue: str) -> list[ShardPod]:
        selector = f"{LABEL_QUEUE}={queue},{LABEL_COMPONENT}=shard,{LABEL_MANAGED_BY}={FIELD_MANAGER}"
        # raw JSON: the typed models cost a deep copy per pod and type every field as optional
        response: Any = client.CoreV1Api(self.api).list_namespaced_pod(
            namespace, label_selector=selector, _preload_content=False
        )
        pods = []
        for pod in json.loads(response.data)["items"]:
            meta = pod["metadata"]
            match = _ORDINAL.search(meta["name"])
            if match is not None:
                pods.append(
                    ShardPod(
                        name=meta["name"],
                        namespace=namespace,
                        ordinal=int(match.group(1)),
                        annotations=dict(meta.get("annotations") or {}),
                        scheduled=bool((pod.get("spec") or {}).get("nodeName")),
                        terminating=bool(meta.get("deletionTimestamp")),
                    )
                )
        return sorted(pods, key=lambda p: p.ordinal)

    def shard_allocation(self, namespace: str, name: str) -> dict[str, Any] | None:
        custom = client.CustomObjectsApi(self.api)
        try:
            found = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, SHARD_ALLOCATIONS, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return cast(dict[str, Any], found)

    def write_status(self, namespace: str, name: str, status: dict[str, Any], resource_version: str) -> str:
        # A JSON merge patch carrying metadata.resourceVersion is applied only at that version:
        # the API server answers 409 when anything wrote the object in between.
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        custom = client.CustomObjectsApi(self.api)
        try:
            found = custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, SHARD_ALLOCATIONS, name, body, _content_type=MERGE
            )
        except ApiException as error:
            if error.status == 409:
                raise StatusConflict(
                    f"{namespace}/{name} changed since resourceVersion {resource_version}"
                ) from None
            raise
        return str(cast(dict[str, Any], found)["metadata"]["resourceVersion"])


class StatusRecorder:
    """The migration `Recorder`: status.migrations[] (and status.routing with a Switch) written
    durably before the pass acts, each write preconditioned on the version the last one returned.

    A merge patch replaces a list whole, so every write carries the full `migrations` list; the
    precondition makes that safe (no concurrent writer's items can be dropped unseen).
    """

    def __init__(
        self, kube: KubePort, namespace: str, name: str, resource_version: str, migrations: list[Migration]
    ) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.resource_version = resource_version
        self.migrations: dict[str, Migration] = {m.id: m for m in migrations}
        self.table: RoutingTable | None = None  # the last table this recorder wrote
        self.writes = 0

    async def record(self, migration: Migration, table: RoutingTable | None) -> None:
        self._write({**self.migrations, migration.id: migration}, table)

    async def admit(self, admitted: list[Migration]) -> None:
        self._write({**self.migrations, **{m.id: m for m in admitted}}, None)

    def _write(self, migrations: dict[str, Migration], table: RoutingTable | None) -> None:
        """Write, and only once written remember it: after a conflict this holds what is recorded."""
        status: dict[str, Any] = {"migrations": [m.to_status() for m in kept(list(migrations.values()))]}
        if table is not None:
            status["routing"] = routing_status.to_status(table)
        self.resource_version = self.kube.write_status(
            self.namespace, self.name, status, self.resource_version
        )
        self.migrations = migrations
        self.writes += 1
        if table is not None:
            self.table = table


def kept(migrations: list[Migration]) -> list[Migration]:
    """Every move in flight, then the newest finished ones (KEPT_FINISHED), within the CRD's 64
    items."""
    active = [m for m in migrations if not m.terminal]
    finished = sorted((m for m in migrations if m.terminal), key=lambda m: m.phase_since_s, reverse=True)
    room = max(0, min(KEPT_FINISHED, MAX_MIGRATIONS - len(active)))
    keep = {m.id for m in [*active, *finished[:room]]}
    return [m for m in migrations if m.id in keep]


class ForecastPort(Protocol):
    """OrderParamForecasts and scale subresources, for the forecast loop."""

    def list_forecasts(self, namespace: str) -> list[dict[str, Any]]: ...

    def create_forecast(self, manifest: dict[str, Any]) -> None: ...

    def delete_forecast(self, namespace: str, name: str) -> None: ...

    def patch_forecast_status(self, namespace: str, name: str, status: dict[str, Any]) -> None: ...

    def read_scale(self, namespace: str, ref: ScaleRef) -> int | None: ...

    def patch_scale(self, namespace: str, ref: ScaleRef, replicas: int) -> None: ...


@dataclass(frozen=True)
class ScaleRef:
    """A resource with a scale subresource, as spec.consumerGroups[].scaleTargetRef names it."""

    api_version: str  # e.g. apps/v1
    kind: str  # e.g. Deployment
    name: str

    @property
    def group_version(self) -> tuple[str, str]:
        group, _, version = self.api_version.rpartition("/")
        return group, version

    @property
    def plural(self) -> str:
        # kinds with a scale subresource are regular nouns (Deployment, StatefulSet, ReplicaSet, CRDs
        # that follow the convention); discovery would be one more round trip per pass
        return self.kind.lower() + "s"


class ForecastAdapter:
    """ForecastPort through the official client (CustomObjectsApi speaks every API group)."""

    def __init__(self, api: client.ApiClient | None = None) -> None:
        self.custom = client.CustomObjectsApi(api or client.ApiClient())

    def list_forecasts(self, namespace: str) -> list[dict[str, Any]]:
        found = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, ORDER_PARAM_FORECASTS)
        return list(cast(dict[str, Any], found).get("items", []))

    def create_forecast(self, manifest: dict[str, Any]) -> None:
        meta = manifest["metadata"]
        try:
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], ORDER_PARAM_FORECASTS, manifest
            )
        except ApiException as error:
            if error.status != 409:  # made by an earlier cycle whose list did not see it yet
                raise

    def delete_forecast(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, ORDER_PARAM_FORECASTS, name
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def patch_forecast_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, ORDER_PARAM_FORECASTS, name, {"status": status}
            )
        except ApiException as error:
            if error.status != 404:  # deleted meanwhile (its queue went, or a person removed it)
                raise

    def queue_exists(self, namespace: str, name: str) -> bool:
        try:
            self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, SHARD_ALLOCATIONS, name)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def read_scale(self, namespace: str, ref: ScaleRef) -> int | None:
        group, version = ref.group_version
        try:
            found = self.custom.get_namespaced_custom_object_scale(
                group, version, namespace, ref.plural, ref.name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return int((cast(dict[str, Any], found).get("spec") or {}).get("replicas") or 0)

    def patch_scale(self, namespace: str, ref: ScaleRef, replicas: int) -> None:
        group, version = ref.group_version
        self.custom.patch_namespaced_custom_object_scale(
            group, version, namespace, ref.plural, ref.name, {"spec": {"replicas": replicas}}
        )


def _message_of(error: ApiException) -> str:
    """The API server's sentence (its Status `message`), else the HTTP reason."""
    try:
        found = json.loads(error.body or "{}").get("message")
    except (ValueError, AttributeError):
        found = None
    return str(found or f"{error.status} {error.reason}")[:512]
