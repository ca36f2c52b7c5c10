"""Local cluster plumbing: ports, dying components, missing tools, backfill encoding. No cluster needed."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from foreshard.core.series import Series
from foreshard.localcluster import toolchain
from foreshard.localcluster.process import StartError, free_port, port_free, spawn, wait_until
from foreshard.localcluster.prometheus import CHUNK_S, openmetrics_chunks, samples, shifts_to_end_at

pytestmark = pytest.mark.unit


def test_a_port_in_use_is_replaced_by_a_free_one() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        assert not port_free(busy)
        chosen = free_port(busy)
        assert chosen != busy and port_free(chosen)


def test_a_free_preferred_port_is_kept() -> None:
    port = free_port()
    assert free_port(port) == port


def test_a_component_that_dies_during_start_is_reported_with_its_log_tail(tmp_path: Path) -> None:
    dying = spawn(
        "doomed", [sys.executable, "-c", "print('listen tcp: address already in use'); exit(3)"], tmp_path
    )
    with pytest.raises(StartError) as error:
        wait_until(lambda: False, "doomed /healthz", [dying], timeout_s=30)
    assert "doomed exited with code 3" in str(error.value)
    assert "address already in use" in str(error.value)


def test_waiting_times_out_with_the_logs_of_what_was_watched(tmp_path: Path) -> None:
    sleeper = spawn(
        "sleeper", [sys.executable, "-c", "print('still booting'); import time; time.sleep(30)"], tmp_path
    )
    try:
        with pytest.raises(StartError, match="timed out after 1s waiting for sleeper ready"):
            wait_until(lambda: False, "sleeper ready", [sleeper], timeout_s=1)
    finally:
        sleeper.process.kill()
        sleeper.process.wait()


def test_without_go_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(toolchain.ToolchainError, match=r"no `go` is on PATH\. Install Go 1\.25 or newer"):
        toolchain.find_go()


def test_the_binary_cache_is_keyed_by_every_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FORESHARD_CACHE", str(tmp_path))
    chain = toolchain.Toolchain.default()
    v = chain.versions
    assert chain.bin_dir == tmp_path / f"k8s-{v.kubernetes}_etcd-{v.etcd}_kwok-{v.kwok}_helm-{v.helm}" / "bin"
    assert "kubebox" in chain.missing()


def test_the_counter_grows_by_each_interval_at_its_end_and_skips_gaps() -> None:
    series = Series("k", 1000.0, 300.0, np.array([2.0, np.nan, 5.0]))
    got = list(samples({"q": [series]}, {"q": 0.0}))
    selector = 'foreshard_messages_published_total{queue="q",key="k"}'
    assert got == [(selector, 0.0, 1000.0), (selector, 2.0, 1300.0), (selector, 7.0, 1900.0)]


def test_backfill_chunks_are_block_aligned_and_complete_documents() -> None:
    series = Series("k", 0.0, 3600.0, np.ones(24 * 10))
    chunks = openmetrics_chunks({"q": [series]}, {"q": 0.0})
    assert len(chunks) == int(np.ceil((series.end_s + 1) / CHUNK_S))
    for lines in chunks.values():
        assert lines[1].startswith("# TYPE foreshard_messages_published counter")
        assert lines[-1] == "# EOF\n"
    assert sum(len(lines) - 3 for lines in chunks.values()) == len(series) + 1


def test_each_queue_is_shifted_so_that_its_latest_interval_ends_at_the_given_time() -> None:
    a, b = Series("a", 0.0, 60.0, np.ones(10)), Series("b", 100.0, 60.0, np.ones(10))
    shifts = shifts_to_end_at({"q": [a, b]}, 10_000.0)
    assert shifts["q"] == 10_000.0 - b.end_s
    assert shifts_to_end_at({"q": [a]}, None) == {"q": 0.0}
