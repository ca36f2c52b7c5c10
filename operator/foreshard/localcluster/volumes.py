"""A tiny volume provisioner for the local cluster: hostPath PersistentVolumes on this machine.

A StatefulSet with volumeClaimTemplates creates claims that stay Pending without a provisioner, and
its pods never schedule. The pod runner's loop calls `reconcile` each pass:

    Pending claim (class foreshard-local or none) --> hostPath PV pre-bound to it (claimRef)
    PV Released (its claim was deleted)           --> directory removed, PV deleted

The directory is the one the runner gives the claim's broker, so data lives exactly as long as
the claim, as on a real PV. The PV carries `pv.kubernetes.io/provisioned-by`, so the controller
manager leaves deletion of a Released volume to this provisioner.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

STORAGE_CLASS = "foreshard-local"
PROVISIONER = "foreshard.io/local"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"

log = logging.getLogger("foreshard.podrunner.volumes")


def claim_dir(root: Path, namespace: str, claim: str) -> Path:
    return root / "volumes" / namespace / claim


def pv_name(namespace: str, claim: str, uid: str) -> str:
    # The claim's uid keeps a recreated claim of the same name from reusing a Released volume.
    return f"foreshard-{namespace}-{claim}-{uid[:8]}"[:253]


def storage_class() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "volumeBindingMode": "Immediate",
        "reclaimPolicy": "Delete",
    }


def wants_volume(claim: dict[str, Any]) -> bool:
    spec, status = claim.get("spec") or {}, claim.get("status") or {}
    wanted_class = spec.get("storageClassName") or spec.get("storage_class_name")
    unbound = not (spec.get("volumeName") or spec.get("volume_name"))
    return status.get("phase") == "Pending" and unbound and wanted_class in (None, "", STORAGE_CLASS)


def persistent_volume(claim: dict[str, Any], path: Path) -> dict[str, Any]:
    meta, spec = claim["metadata"], claim.get("spec") or {}
    requests = (spec.get("resources") or {}).get("requests") or {}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name(meta["namespace"], meta["name"], meta["uid"]),
            "annotations": {PROVISIONED_BY: PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": requests.get("storage", "1Gi")},
            "accessModes": spec.get("accessModes") or spec.get("access_modes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }


def reconcile(core: client.CoreV1Api, root: Path) -> None:
    """One provisioning pass: volumes for Pending claims, cleanup of Released volumes."""
    sanitize = core.api_client.sanitize_for_serialization
    claims = sanitize(core.list_persistent_volume_claim_for_all_namespaces())["items"]
    volumes = sanitize(core.list_persistent_volume())["items"]
    existing = {v["metadata"]["name"] for v in volumes}
    for claim in claims:
        if not wants_volume(claim):
            continue
        meta = claim["metadata"]
        path = claim_dir(root, meta["namespace"], meta["name"])
        volume = persistent_volume(claim, path)
        if volume["metadata"]["name"] in existing:
            continue
        path.mkdir(parents=True, exist_ok=True)
        _ignore_conflict(lambda v=volume: core.create_persistent_volume(v))
        log.info("provisioned %s for %s/%s", volume["metadata"]["name"], meta["namespace"], meta["name"])
    for volume in volumes:
        meta, spec = volume["metadata"], volume.get("spec") or {}
        if (meta.get("annotations") or {}).get(PROVISIONED_BY) != PROVISIONER:
            continue
        if (volume.get("status") or {}).get("phase") not in ("Released", "Failed"):
            continue
        path = Path((spec.get("hostPath") or {}).get("path", ""))
        if path.is_relative_to(root / "volumes"):  # never a directory this provisioner did not make
            shutil.rmtree(path, ignore_errors=True)
        _ignore_conflict(lambda name=meta["name"]: core.delete_persistent_volume(name))
        log.info("deleted released volume %s", meta["name"])


def _ignore_conflict(call: Any) -> None:
    try:
        call()
    except ApiException as error:
        if error.status not in (404, 409):
            raise
