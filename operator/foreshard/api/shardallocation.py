"""A typed view of a ShardAllocation body (no I/O). Defaults mirror the CRD's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foreshard.api.names import DEFAULT_BROKER_IMAGE


@dataclass(frozen=True)
class ShardTemplate:
    image: str = DEFAULT_BROKER_IMAGE
    image_pull_policy: str = "IfNotPresent"
    requests: tuple[tuple[str, str], ...] = ()
    limits: tuple[tuple[str, str], ...] = ()
    storage_size: str | None = None
    storage_class: str | None = None


@dataclass(frozen=True)
class QueueSpec:
    name: str
    namespace: str
    min_shards: int
    max_shards: int
    slots: int
    template: ShardTemplate
    mode: str = "Auto"

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> QueueSpec:
        meta, spec = body["metadata"], body.get("spec", {})
        template = spec.get("template", {})
        resources = template.get("resources", {})
        storage = template.get("storage") or {}
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            min_shards=int(spec["minShards"]),
            max_shards=int(spec["maxShards"]),
            slots=int(spec.get("slots", 1024)),
            template=ShardTemplate(
                image=template.get("image", DEFAULT_BROKER_IMAGE),
                image_pull_policy=template.get("imagePullPolicy", "IfNotPresent"),
                requests=tuple(sorted((k, str(v)) for k, v in resources.get("requests", {}).items())),
                limits=tuple(sorted((k, str(v)) for k, v in resources.get("limits", {}).items())),
                storage_size=storage.get("size"),
                storage_class=storage.get("storageClassName"),
            ),
            mode=spec.get("scaling", {}).get("mode", "Auto"),
        )
