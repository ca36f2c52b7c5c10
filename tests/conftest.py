"""Session fixtures for the real parts: the local control plane and Prometheus.

Each starts once per test session, on free loopback ports, and is stopped at the end; nothing is
mocked. Tests that need them request the fixture; the others never pay for it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from foreshard import traces
from foreshard.core.series import Series
from foreshard.localcluster import images
from foreshard.localcluster.cluster import LocalCluster
from foreshard.localcluster.prometheus import PrometheusServer, backfill

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), preferred_ports=False)
    cluster.start()
    try:
        cluster.kubectl("apply", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def built_images() -> dict[str, str]:
    """The operator and broker images, built by `make images`'s own code (cached: `make test` builds
    them first, so here this only checks that their inputs have not changed)."""
    return images.build_images()


@pytest.fixture(scope="session")
def canonical_traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The repository's traces (data/traces) converted to one canonical directory per queue."""
    return traces.prepare_queues(traces.BUNDLED, tmp_path_factory.mktemp("traces"))


class BackfilledPrometheus:
    def __init__(
        self, server: PrometheusServer, queues: dict[str, list[Series]], shifts: dict[str, float], at: float
    ) -> None:
        self.server, self.queues, self.shifts, self.backfilled_at = server, queues, shifts, at

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="session")
def prometheus_with_traces(
    tmp_path_factory: pytest.TempPathFactory, canonical_traces: dict[str, Path]
) -> Iterator[BackfilledPrometheus]:
    """Real Prometheus holding the tweet and ELB traces, shifted so each ends just after now.

    (The seven-month taxi trace is left out: promtool writes one block per two hours of span,
    and thousands of blocks cost minutes to write and load.)
    """
    workdir = tmp_path_factory.mktemp("prometheus")
    queues = {name: traces.read_directory(canonical_traces[name]) for name in ("tweets", "elb")}
    # on the traces' 5-minute grid: the samples sit at interval ends, so a reader that evaluates
    # increase(...[5m]) at whole steps (the operator does) meets one at every interval end
    # ...and ending 15 minutes past the next grid point: a test that reads "the newest whole
    # interval" minutes after the backfill (a slow session) must still find one there, or the
    # operator rightly holds on missing data (it did, and two forecast tests failed on a slow run)
    now = (time.time() // 300 + 1) * 300 + 900
    shifts = backfill(queues, workdir / "data", end_at_s=now)
    (workdir / "shifts.json").write_text(json.dumps(shifts))
    with PrometheusServer(workdir) as server:
        yield BackfilledPrometheus(server, queues, shifts, now)
