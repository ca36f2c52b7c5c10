"""The Go-built binaries: versions stamped, helm runs, the kubebox go.mod derived from upstream."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from foreshard.localcluster.cluster import LocalCluster

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]


def test_helm_version_runs_from_the_cached_binary(local_cluster: LocalCluster) -> None:
    helm = local_cluster.toolchain.path("helm")
    out = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert out.startswith(local_cluster.toolchain.versions.helm)


def test_the_api_server_reports_the_pinned_kubernetes_version(local_cluster: LocalCluster) -> None:
    out = local_cluster.kubectl("version", "-o", "yaml").stdout
    assert f"gitVersion: {local_cluster.toolchain.versions.kubernetes}" in out
    assert out.count(f"gitVersion: {local_cluster.toolchain.versions.kubernetes}") == 2  # client and server


def test_the_kubebox_replace_block_matches_the_upstream_go_mod() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "kubebox" / "sync_gomod.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
