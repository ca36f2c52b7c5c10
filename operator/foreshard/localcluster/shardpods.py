"""What the pod runner decides about a shard pod, as pure functions (the runner does the I/O).

pod object --ShardPod.of--> typed view --broker_flags--> a loopback broker's command line
broker state --pod_status_patch--> the status a kubelet would write (patched only on change)
running pods --scrape_targets--> Prometheus file_sd entries
kwok's stages --kwok_stages--> the same stages, blind to the pods the runner owns
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from foreshard.api.names import (
    ANNOTATION_BROKER_ENDPOINT,
    ANNOTATION_BROKER_METRICS,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_QUEUE,
)

MANAGED_BY = "foreshard-operator"
COMPONENT = "shard"
# The label selector the runner lists pods with; kwok's stages exclude the same pods.
POD_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT}={COMPONENT}"
BROKER_CONTAINER = "broker"
DATA_VOLUME = "data"
LOOPBACK = "127.0.0.1"
SCRAPE_JOB = "foreshard-broker"
CRASH_LOOP = "CrashLoopBackOff"


@dataclass(frozen=True)
class ShardPod:
    namespace: str
    name: str
    uid: str
    node: str | None
    phase: str
    deleting: bool
    container: str
    args: tuple[str, ...]
    claim: str | None  # the PersistentVolumeClaim behind volume "data"; None for an emptyDir
    secrets: tuple[str, ...] = ()  # Secrets mounted as volumes (not optional): a kubelet waits for them
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    status: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> ShardPod:
        meta, spec = pod.get("metadata", {}), pod.get("spec", {})
        containers = spec.get("containers") or [{}]
        broker = next((c for c in containers if c.get("name") == BROKER_CONTAINER), containers[0])
        status = pod.get("status") or {}
        return cls(
            namespace=meta.get("namespace", "default"),
            name=meta["name"],
            uid=meta.get("uid", ""),
            node=spec.get("nodeName") or None,
            phase=status.get("phase", "Pending"),
            deleting=bool(meta.get("deletionTimestamp")),
            container=broker.get("name", BROKER_CONTAINER),
            args=tuple(broker.get("args") or ()),
            claim=claim_name(spec.get("volumes") or []),
            secrets=secret_names(spec.get("volumes") or []),
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
            status=status,
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ordinal(self) -> int:
        return ordinal(self.name)


def claim_name(volumes: Sequence[Mapping[str, Any]]) -> str | None:
    for volume in volumes:
        if volume.get("name") == DATA_VOLUME:
            claim = volume.get("persistentVolumeClaim") or {}
            return claim.get("claimName") or None
    return None


def secret_names(volumes: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    secrets = (v.get("secret") or {} for v in volumes)
    return tuple(sorted({s["secretName"] for s in secrets if s.get("secretName") and not s.get("optional")}))


def ordinal(pod_name: str) -> int:
    """A StatefulSet pod's ordinal is its name's numeric suffix (`orders-shard-3` -> 3)."""
    match = re.search(r"-(\d+)$", pod_name)
    return int(match.group(1)) if match else 0


# Flags whose value names a place in the pod (an address, a mount); the runner rebinds them.
_REBOUND = ("--grpc-listen", "--http-listen", "--data-dir", "--shard", "--admin-token-file")


def broker_flags(
    args: Sequence[str],
    grpc_port: int,
    http_port: int,
    data_dir: str,
    shard: int,
    admin_token_file: str,
) -> list[str]:
    """The pod's broker args with only the pod-local places rebound to loopback and local paths.

    Every other flag (known or not) passes through in order. The listen addresses and data
    directory are appended when the pod leaves them to the broker's defaults: two brokers on one
    machine cannot share those. An explicit `--shard N` is kept; `auto` becomes the ordinal.
    """
    wanted = {
        "--grpc-listen": f"{LOOPBACK}:{grpc_port}",
        "--http-listen": f"{LOOPBACK}:{http_port}",
        "--data-dir": data_dir,
        "--admin-token-file": admin_token_file,
    }
    out: list[str] = []
    seen: set[str] = set()
    items = list(args)
    i = 0
    while i < len(items):
        flag, has_inline, inline = items[i].partition("=")
        if flag not in _REBOUND:
            out.append(items[i])
            i += 1
            continue
        value = inline if has_inline else (items[i + 1] if i + 1 < len(items) else "")
        i += 1 if has_inline else 2
        seen.add(flag)
        if flag == "--shard":
            out += [flag, str(shard) if value == "auto" else value]
        else:
            out += [flag, wanted[flag]]
    for flag in ("--grpc-listen", "--http-listen", "--data-dir"):
        if flag not in seen:
            out += [flag, wanted[flag]]
    if "--shard" not in seen:
        out += ["--shard", str(shard)]  # the broker's own `auto` reads HOSTNAME, not set here
    return out


def endpoint_annotations(grpc_port: int, http_port: int) -> dict[str, str]:
    return {
        ANNOTATION_BROKER_ENDPOINT: f"{LOOPBACK}:{grpc_port}",
        ANNOTATION_BROKER_METRICS: f"http://{LOOPBACK}:{http_port}",
    }


@dataclass(frozen=True)
class BrokerState:
    """What the runner knows of a pod's broker, in kubelet terms."""

    running: bool
    ready: bool
    restart_count: int
    started_at: str | None = None  # RFC 3339, when the running broker started
    waiting_reason: str | None = None  # CrashLoopBackOff while a restart waits out its backoff
    last_exit_code: int | None = None
    last_finished_at: str | None = None


def pod_status_patch(pod: ShardPod, broker: BrokerState, now: str) -> dict[str, Any]:
    """The status subresource a kubelet would write: phase Running on loopback, Ready following
    the broker's /readyz. Transition times and startTime carry over while nothing changes, so a
    repeated call with the same state yields the same patch (see `status_differs`)."""
    ready = "True" if broker.ready else "False"
    wanted = {"PodScheduled": "True", "Initialized": "True", "ContainersReady": ready, "Ready": ready}
    previous = {c.get("type"): c for c in pod.status.get("conditions") or []}
    conditions = []
    for kind, status in wanted.items():
        old = previous.get(kind, {})
        since = old.get("lastTransitionTime") if old.get("status") == status else None
        conditions.append({"type": kind, "status": status, "lastTransitionTime": since or now})
    return {
        "status": {
            "phase": "Running",
            "hostIP": LOOPBACK,
            "hostIPs": [{"ip": LOOPBACK}],
            "podIP": LOOPBACK,
            "podIPs": [{"ip": LOOPBACK}],
            "startTime": pod.status.get("startTime") or now,
            "conditions": conditions,
            "containerStatuses": [container_status(pod.container, broker)],
        }
    }


def container_status(name: str, broker: BrokerState) -> dict[str, Any]:
    state: dict[str, Any]
    if broker.running:
        state = {"running": {"startedAt": broker.started_at}}
    elif broker.waiting_reason:
        state = {"waiting": {"reason": broker.waiting_reason, "message": "the broker exited; restarting"}}
    elif broker.last_exit_code is not None:
        state = {"terminated": _terminated(broker)}
    else:
        state = {"waiting": {"reason": "ContainerCreating"}}
    last = {"terminated": _terminated(broker)} if broker.last_exit_code is not None else {}
    return {
        "name": name,
        "image": "foreshard-broker-local",
        "imageID": "",
        "ready": broker.ready,
        "started": broker.running,
        "restartCount": broker.restart_count,
        "state": state,
        "lastState": last,
    }


def _terminated(broker: BrokerState) -> dict[str, Any]:
    code = broker.last_exit_code or 0
    reason = "Completed" if code == 0 else "Error"
    return {"exitCode": code, "reason": reason, "finishedAt": broker.last_finished_at}


def status_differs(current: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """True when the pod's status lacks part of the patch (the server may add fields we never
    set, so this asks whether `patch` is contained in `current`, not whether they are equal)."""
    return not _contains(current, patch.get("status", {}))


def _contains(have: Any, want: Any) -> bool:
    if want in ({}, None) and have in ({}, None):
        return True  # an empty struct the server may omit or echo
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(_contains(have.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(have) == len(want)
            and all(_contains(h, w) for h, w in zip(have, want, strict=True))
        )
    return bool(have == want)


def scrape_targets(pods: Iterable[tuple[ShardPod, int]]) -> list[dict[str, Any]]:
    """file_sd entries, one per running broker, given (pod, metrics port). The broker labels its
    own series with `queue`; a target label of that name would clash, so this one is `pod_queue`."""
    entries = []
    for pod, http_port in sorted(pods, key=lambda p: (p[0].namespace, p[0].name)):
        labels = {
            "job": SCRAPE_JOB,
            "namespace": pod.namespace,
            "pod": pod.name,
            "shard": str(pod.ordinal),
        }
        if LABEL_QUEUE in pod.labels:
            labels["pod_queue"] = pod.labels[LABEL_QUEUE]
        entries.append({"targets": [f"{LOOPBACK}:{http_port}"], "labels": labels})
    return entries


# kwok's Stage selector keys are jq-like queries over the object.
_MANAGED_BY_QUERY = f'.metadata.labels["{LABEL_MANAGED_BY}"]'


def kwok_stages(text: str) -> str:
    """kwok's stages with every Pod stage made blind to the runner's pods (the runner plays their
    kubelet: it sets their IPs, phase and conditions, and deletes them). Node stages and every
    other pod keep kwok's behaviour."""
    documents = [d for d in yaml.safe_load_all(text) if d]
    for stage in documents:
        spec = stage.get("spec", {})
        if stage.get("kind") != "Stage" or spec.get("resourceRef", {}).get("kind") != "Pod":
            continue
        selector = spec.setdefault("selector", {})
        selector.setdefault("matchExpressions", []).append(
            {"key": _MANAGED_BY_QUERY, "operator": "NotIn", "values": [MANAGED_BY]}
        )
    return yaml.dump_all(documents, Dumper=_BlockDumper, sort_keys=False)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (kwok's status templates) stay `|` blocks, readable in the workdir."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)
