"""The shard StatefulSet the operator writes starts a broker that understands its command line."""

from __future__ import annotations

import pytest

from foreshard.api.names import BROKER_GRPC_PORT, BROKER_METRICS_PORT
from foreshard.api.shardallocation import QueueSpec
from foreshard.core.workload import BROKER_UID, stateful_set
from foreshard_broker.server.main import parse_args, shard_ordinal

pytestmark = pytest.mark.unit


def test_the_shard_pods_arguments_parse_with_the_brokers_own_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    body = {
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {"minShards": 1, "maxShards": 4, "slots": 256},
    }
    manifest = stateful_set(QueueSpec.from_body(body), 2)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    args = parse_args(container["args"])  # argparse exits on an unknown flag
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert args.grpc_listen.endswith(f":{ports['grpc']}") and ports["grpc"] == BROKER_GRPC_PORT
    assert args.http_listen.endswith(f":{ports['metrics']}") and ports["metrics"] == BROKER_METRICS_PORT
    assert args.data_dir == container["volumeMounts"][0]["mountPath"]
    assert (args.queue, args.slots) == ("orders", 256)
    assert container["readinessProbe"]["httpGet"]["port"] == "metrics"
    # A StatefulSet pod's hostname is <set name>-<ordinal>: that is where the shard number comes from.
    monkeypatch.setenv("HOSTNAME", f"{manifest['metadata']['name']}-3")
    assert shard_ordinal(args.shard) == 3


def test_shard_pods_carry_the_scrape_annotations_pointing_at_the_brokers_metrics_port() -> None:
    body = {"metadata": {"name": "orders", "namespace": "shop"}, "spec": {"minShards": 1, "maxShards": 4}}
    template = stateful_set(QueueSpec.from_body(body), 1)["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    ports = {port["name"]: port["containerPort"] for port in template["spec"]["containers"][0]["ports"]}
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_every_shard_pod_mounts_the_admin_token_read_only() -> None:
    from foreshard.api.names import ADMIN_TOKEN_DIR, ADMIN_TOKEN_FILE, ADMIN_TOKEN_SECRET

    for storage in ("", "1Gi"):  # "" is no storage: an emptyDir
        body = {
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {"minShards": 1, "maxShards": 4, "template": {"storage": {"size": storage}}},
        }
        pod = stateful_set(QueueSpec.from_body(body), 3)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        args = container["args"]
        assert args[args.index("--admin-token-file") + 1] == ADMIN_TOKEN_FILE
        mount = next(m for m in container["volumeMounts"] if m["name"] == "admin-token")
        assert mount == {"name": "admin-token", "mountPath": ADMIN_TOKEN_DIR, "readOnly": True}
        volume = next(v for v in pod["volumes"] if v["name"] == "admin-token")
        assert volume["secret"]["secretName"] == ADMIN_TOKEN_SECRET
        assert volume["secret"]["defaultMode"] == 0o440
        assert pod["securityContext"]["fsGroup"] == BROKER_UID
        assert ("data" in {v["name"] for v in pod["volumes"]}) is (storage == "")


def test_shard_pods_run_as_the_broker_images_own_user() -> None:
    import re
    from pathlib import Path

    dockerfile = Path(__file__).resolve().parents[2] / "broker-image" / "Dockerfile"
    found = re.search(r"^USER (\d+):(\d+)$", dockerfile.read_text(), re.MULTILINE)
    assert found and int(found.group(1)) == int(found.group(2)) == BROKER_UID
