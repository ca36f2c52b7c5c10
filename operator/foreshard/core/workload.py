"""The shard workload of a queue: its StatefulSet and headless Service, as plain manifests.

Pure: the reconciler passes the spec and the replica count it decided; adapters apply the result.
"""

from __future__ import annotations

from typing import Any

from foreshard.api.names import (
    ADMIN_TOKEN_DIR,
    ADMIN_TOKEN_FILE,
    ADMIN_TOKEN_KEY,
    ADMIN_TOKEN_SECRET,
    BROKER_GRPC_PORT,
    BROKER_METRICS_PORT,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_QUEUE,
)
from foreshard.api.shardallocation import QueueSpec

Manifest = dict[str, Any]
BROKER_UID = 10001  # `USER` of broker-image/Dockerfile (a unit test keeps the two equal)


def shard_name(queue: str) -> str:
    return f"{queue}-shard"


def selector_labels(spec: QueueSpec) -> dict[str, str]:
    # Never the version in selectors: a StatefulSet's selector is immutable.
    return {LABEL_NAME: "foreshard-broker", LABEL_INSTANCE: spec.name}


def labels(spec: QueueSpec) -> dict[str, str]:
    return {
        **selector_labels(spec),
        LABEL_COMPONENT: "shard",
        LABEL_MANAGED_BY: "foreshard-operator",
        LABEL_QUEUE: spec.name,
    }


def desired_replicas(spec: QueueSpec, planned: int | None) -> int:
    """The plan's shard count clamped to [minShards, maxShards]; minShards until a plan exists."""
    wanted = spec.min_shards if planned is None else planned
    return max(spec.min_shards, min(spec.max_shards, wanted))


def headless_service(spec: QueueSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": shard_name(spec.name), "namespace": spec.namespace, "labels": labels(spec)},
        "spec": {
            "clusterIP": "None",
            # Brokers must find each other during a hand-off before they report ready.
            "publishNotReadyAddresses": True,
            "selector": selector_labels(spec),
            "ports": [
                {"name": "grpc", "port": BROKER_GRPC_PORT, "targetPort": "grpc"},
                {"name": "metrics", "port": BROKER_METRICS_PORT, "targetPort": "metrics"},
            ],
        },
    }


def stateful_set(spec: QueueSpec, replicas: int) -> Manifest:
    manifest: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": shard_name(spec.name), "namespace": spec.namespace, "labels": labels(spec)},
        "spec": {
            "serviceName": shard_name(spec.name),
            "replicas": replicas,
            # Shards are independent: start and stop them in parallel; slots move before scale-in.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector_labels(spec)},
            "template": _pod_template(spec),
        },
    }
    if spec.template.storage_size:
        claim: Manifest = {
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": spec.template.storage_size}},
            },
        }
        if spec.template.storage_class:
            claim["spec"]["storageClassName"] = spec.template.storage_class
        manifest["spec"]["volumeClaimTemplates"] = [claim]
    return manifest


def broker_args(spec: QueueSpec) -> list[str]:
    """The broker's command line (`foreshard-broker --help`); the shard ordinal comes from the pod's
    hostname (`<queue>-shard-<n>`), the queue name labels every metric the operator later queries."""
    return [
        "--grpc-listen", f"0.0.0.0:{BROKER_GRPC_PORT}",
        "--http-listen", f"0.0.0.0:{BROKER_METRICS_PORT}",
        "--data-dir", "/data",
        "--queue", spec.name,
        "--slots", str(spec.slots),
        "--shard", "auto",
        # Owns no slot until the operator pushes routing: a fresh shard never takes every key.
        "--await-routing",
        # The Admin API (routing, fences, imports) answers only the operator's bearer token.
        "--admin-token-file", ADMIN_TOKEN_FILE,
    ]  # fmt: skip


def _pod_template(spec: QueueSpec) -> Manifest:
    template = spec.template
    container: Manifest = {
        "name": "broker",
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "args": broker_args(spec),
        "ports": [
            {"name": "grpc", "containerPort": BROKER_GRPC_PORT},
            {"name": "metrics", "containerPort": BROKER_METRICS_PORT},
        ],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 10},
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "admin-token", "mountPath": ADMIN_TOKEN_DIR, "readOnly": True},
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
        },
    }
    if template.requests or template.limits:
        container["resources"] = {"requests": dict(template.requests), "limits": dict(template.limits)}
    admin_token: Manifest = {
        "name": "admin-token",
        "secret": {
            "secretName": ADMIN_TOKEN_SECRET,
            "items": [{"key": ADMIN_TOKEN_KEY, "path": ADMIN_TOKEN_KEY}],
            "defaultMode": 0o440,  # root-owned, group fsGroup: the non-root broker reads it
        },
    }
    volumes = [admin_token] if template.storage_size else [{"name": "data", "emptyDir": {}}, admin_token]
    pod_spec: Manifest = {
        # the broker image's own user (broker-image/Dockerfile); fsGroup makes the data volume
        # writable and the admin token readable for it
        "securityContext": {"runAsUser": BROKER_UID, "runAsGroup": BROKER_UID, "fsGroup": BROKER_UID},
        "containers": [container],
        "terminationGracePeriodSeconds": 30,
        "volumes": volumes,
    }
    return {"metadata": {"labels": labels(spec), "annotations": scrape_annotations()}, "spec": pod_spec}


def scrape_annotations() -> dict[str, str]:
    """The conventional annotations a Prometheus `kubernetes-pods` job scrapes by (the chart's
    ServiceMonitor finds brokers through the headless Service instead)."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(BROKER_METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }
