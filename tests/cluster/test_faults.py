"""Start-up faults of the local cluster: busy ports, a dying component, and a clean stop."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest

from foreshard.localcluster.cluster import PREFERRED_PORTS, LocalCluster
from foreshard.localcluster.process import StartError
from foreshard.localcluster.toolchain import Toolchain

pytestmark = pytest.mark.cluster


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_busy_preferred_port_is_replaced_and_stopping_leaves_no_process(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        # Already taken by something else is just as good for this test.
        with contextlib.suppress(OSError):
            squatter.bind(("127.0.0.1", PREFERRED_PORTS["apiserver"]))
            squatter.listen()
        cluster = LocalCluster(tmp_path / "c", nodes=1, preferred_ports=True)
        cluster.start()
        try:
            assert cluster.ports is not None and cluster.ports.apiserver != PREFERRED_PORTS["apiserver"]
            assert cluster.kubectl("get", "--raw", "/readyz").stdout == "ok"
            pids = [m.pid for m in cluster.processes]
            assert len(pids) == 6  # etcd, apiserver, controller-manager, scheduler, kwok, pod runner
        finally:
            cluster.stop()
    assert not [pid for pid in pids if alive(pid)]
    assert not (tmp_path / "c" / "state.json").exists()


def test_a_restarted_cluster_is_empty_and_trusts_only_its_new_ca(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "c", nodes=1, preferred_ports=False)
    cluster.start()
    try:
        cluster.kubectl("create", "namespace", "left-over")
    finally:
        cluster.stop()
    cluster.start()
    try:
        assert "left-over" not in cluster.kubectl("get", "namespaces", "-o", "name").stdout
        ca = (tmp_path / "c" / "pki" / "ca.crt").read_text()
        root = cluster.kubectl(
            "wait", "--for=create", "configmap/kube-root-ca.crt", "-n", "default", "--timeout=60s"
        )
        assert root.returncode == 0
        published = cluster.kubectl(
            "get", "configmap", "kube-root-ca.crt", "-n", "default", "-o", "jsonpath={.data.ca\\.crt}"
        ).stdout
        assert published.strip() == ca.strip(), "namespaces must carry the CA of this start"
    finally:
        cluster.stop()


def test_a_component_that_dies_is_reported_with_its_log_and_the_rest_is_stopped(tmp_path: Path) -> None:
    real = Toolchain.default()
    real.ensure()
    broken = Toolchain(real.versions, tmp_path / "bin")
    broken.bin_dir.mkdir()
    for entry in real.bin_dir.iterdir():
        (broken.bin_dir / entry.name).symlink_to(entry.resolve())
    (tmp_path / "kwok-stages.yaml").symlink_to(real.kwok_stages)
    fake = broken.bin_dir / "kube-apiserver"
    fake.unlink()
    fake.write_text("#!/bin/sh\necho 'E1122 failed to listen: bind: address already in use' >&2\nexit 7\n")
    fake.chmod(0o755)

    cluster = LocalCluster(tmp_path / "c", toolchain=broken, preferred_ports=False)
    with pytest.raises(StartError) as error:
        cluster.start()
    message = str(error.value)
    assert "kube-apiserver exited with code 7" in message
    assert "address already in use" in message
    assert cluster.processes == []  # etcd, started before, was stopped
    log_dir = tmp_path / "c" / "logs"
    assert (log_dir / "etcd.log").exists()
