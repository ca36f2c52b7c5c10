"""Publish throughput: Foreshard broker vs Redis Streams vs NATS JetStream, side by side, on this machine.

Each system is driven by its own native load generator, so the figures measure the servers and not
a client library: a Python gRPC ping-pong tops out near 1,400 calls/s on a 2-vCPU VM even against
an echo server, and nats-py holds NATS to ~45k msg/s. The native tools are built (and cached) by
bench/native_tools.py:

  Foreshard   fsbench (tools/benchclient, Go: raw gRPC, hand-encoded protobuf)
  Redis       redis-benchmark (Redis' C client)
  NATS        `nats bench` of the NATS CLI (Go, the official client)

The Python clients (grpc.aio BrokerClient, redis-py, nats-py) still run and are shown as reference
rows, and under `*_pyclient*` keys of the JSON; the headline keys use the native figures.

256-byte payloads over 1000 keys. Every system is started here on free loopback ports with temporary
directories and stopped at the end:

  foreshard batched      fsbench pipelined: 2 Publish streams, 1000-message batches, 4 batches in
                         flight per stream, group-commit fsync (BrokerClient the same way, reference)
  foreshard fsync-each   fsbench pingpong: one client, one message per request on a Publish stream,
                         waiting for each answer, `--sync always` (an fsync per publish); also
                         unary PublishBatch (fsbench --unary; BrokerClient, reference)
  redis pipelined        XADD to one stream per key, 1000-command pipelines, appendfsync everysec,
                         redis-benchmark (redis-py shown for reference)
  redis always           redis-benchmark, one client, unpipelined XADD, appendfsync always
  redis pipelined always the pipelined run with appendfsync always: Redis fsyncs the AOF before it
                         answers a loop turn's commands, so acked means on disk, as with
                         Foreshard's group commit (equal durability)
  nats js async          JetStream file store, `nats bench js pub async` with 4000 acks outstanding
                         over 1000 subjects (nats-py publish_async, reference); the server syncs
                         every 2 minutes (its default `sync_interval`)
  nats js sync always    the same on a server with `sync_interval: always` (an fsync per write
                         before the ack: equal durability)
  foreshard no token     the batched run on a broker without an admin token (the Admin API
                         refused): the data path pays nothing for admin auth
  p99 at half load       Foreshard publish->ack latency of 1000-message batches on one Publish
                         stream, sent open-loop (fsbench latency) at half the native batched rate
                         to a fresh broker (and again with --sync none, to separate disk from
                         broker cost); BrokerClient at half its own batched rate as reference

Prints a table, then ONE JSON line (the last line). `--profile` also runs the batched case with
the broker under cProfile and writes the top functions to bench/results/broker_throughput.profile.txt.
Environment: BENCH_SECONDS (default 4) per measurement, BENCH_ROUNDS (default 3) interleaved rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "broker-image"))

import native_tools  # noqa: E402  (bench/, next to this script)
from benchio import keep  # noqa: E402  (bench/, next to this script)

from foreshard_broker.client.broker_client import BrokerClient, publish_request  # noqa: E402
from foreshard_broker.testing import BrokerProcess  # noqa: E402

PAYLOAD = os.urandom(128).hex().encode()  # 256 bytes
KEYS = [f"key-{n}" for n in range(1000)]
SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
RESULTS = ROOT / "bench" / "results"
LATENCY_BATCH = 1000  # the throughput runs' batch size: "half load" is the same workload at half rate
NATS_OUTSTANDING = 4000  # async publishes awaiting their ack, for nats bench and nats-py alike


@dataclass(frozen=True)
class NativeTools:
    fsbench: Path
    nats: Path
    nats_server: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


@contextlib.contextmanager
def server(args: list[str], port: int) -> Iterator[None]:
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


# ---------------------------------------------------------------- Foreshard
async def foreshard_batched(endpoint: str, seconds: float, streams: int = 2, window: int = 4) -> float:
    async def one(producer: int) -> int:
        client = BrokerClient(endpoint)
        request = publish_request(f"bench-{producer}", 0, [(KEYS[n], PAYLOAD) for n in range(1000)])
        stream, stored, sent, answered = client.publish_stream(), 0, 0, 0
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop or answered < sent:
            while sent - answered < window and time.perf_counter() < stop:
                sent += 1
                request.sequence = sent
                await stream.send(request)
            response = await stream.receive()
            answered += 1
            stored += response.stored.count
        await stream.close()
        await client.close()
        return stored

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(p) for p in range(streams)))
    return sum(counts) / (time.perf_counter() - started)


async def foreshard_unbatched(endpoint: str, seconds: float) -> float:
    client = BrokerClient(endpoint)
    request = publish_request("bench-single", 0, [(KEYS[0], PAYLOAD)])
    stored, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        request.keys[0] = KEYS[stored % len(KEYS)]
        request.sequence = stored + 1
        stored += (await client.publish_request(request)).stored.count
    await client.close()
    return stored / (time.perf_counter() - started)


async def foreshard_latency(endpoint: str, rate: float, seconds: float, batch: int = 100) -> list[float]:
    """Open loop on one Publish stream: `batch`-message batches at `rate` msgs/s; publish->ack ms each."""
    client = BrokerClient(endpoint)
    stream = client.publish_stream()
    producer = f"bench-latency-{os.getpid()}-{time.monotonic_ns()}"  # fresh: sequences start at 1
    request = publish_request(producer, 0, [(KEYS[n % len(KEYS)], PAYLOAD) for n in range(batch)])
    interval, count = batch / rate, int(seconds * rate / batch)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []

    async def receive() -> None:
        for _ in range(count):
            response = await stream.receive()
            latencies.append((time.perf_counter() - sent_at.pop(response.sequence)) * 1000)

    receiver = asyncio.create_task(receive())
    begin = time.perf_counter()
    for sequence in range(1, count + 1):
        await asyncio.sleep(max(0.0, begin + sequence * interval - time.perf_counter()))
        request.sequence = sequence
        sent_at[sequence] = time.perf_counter()
        await stream.send(request)
    await receiver
    await stream.close()
    await client.close()
    return latencies


def fsbench(binary: Path, mode: str, endpoint: str, seconds: float, *flags: str) -> dict[str, float]:
    """Run fsbench (tools/benchclient) once; its single JSON line. It exits non-zero on any
    `failure` outcome, refusal or short store, so a result always counts stored messages."""
    args = [str(binary), mode, "--endpoint", endpoint, "--seconds", f"{seconds:g}", *flags]
    result = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 120)
    if result.returncode != 0:
        raise RuntimeError(f"fsbench {mode} failed ({result.returncode}): {result.stderr.strip()}")
    out: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def fsync_latency(directory: Path, rounds: int = 200) -> list[float]:
    """fdatasync of a 290 kB append (one 1000-message batch) on the benchmark's disk, in ms."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    samples = []
    try:
        for _ in range(rounds):
            os.write(fd, PAYLOAD * 1100)
            started = time.perf_counter()
            os.fdatasync(fd)
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_broker(
    directory: Path, sync: str, profile: Path | None = None, admin_token: bool = True
) -> BrokerProcess:
    command = None
    if profile is not None:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "foreshard_broker.server.main"]
    env = {"PYTHONPATH": str(ROOT / "broker-image")}
    broker = BrokerProcess(directory, sync=sync, command=command, env=env)
    if not admin_token:
        broker.admin_token = None
    return broker.start()


# ---------------------------------------------------------------- Redis Streams
async def redis_pipelined(port: int, seconds: float, clients: int = 2) -> float:
    import redis.asyncio as redis

    async def one(offset: int) -> int:
        connection = redis.Redis(port=port)
        done, stop = 0, time.perf_counter() + seconds
        while time.perf_counter() < stop:
            pipe = connection.pipeline(transaction=False)
            for n in range(1000):
                pipe.xadd(KEYS[(n + offset) % 1000], {"p": PAYLOAD})
            done += len(await pipe.execute())
        await connection.aclose()
        return done

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(c * 500) for c in range(clients)))
    return sum(counts) / (time.perf_counter() - started)


def redis_benchmark(port: int, requests: int, clients: int, pipeline: int) -> float:
    """XADD through redis-benchmark (Redis' own C client), one stream per key (`-r 1000`)."""
    binary = shutil.which("redis-benchmark") or "redis-benchmark"
    args = [binary, "-h", "127.0.0.1", "-p", str(port), "-n", str(requests), "-c", str(clients),
            "-P", str(pipeline), "-r", "1000", "--csv",
            "XADD", "key-__rand_int__", "*", "p", PAYLOAD.decode()]  # fmt: skip
    output = subprocess.run(args, capture_output=True, text=True, timeout=150, check=True).stdout
    return float(output.strip().splitlines()[-1].split('","')[1])


async def redis_configure(port: int, appendfsync: str) -> None:
    """Switch the fsync policy; empty the database so rounds start alike."""
    import redis.asyncio as redis

    connection = redis.Redis(port=port)
    await connection.config_set("appendfsync", appendfsync)
    await connection.flushall()
    await connection.aclose()


def redis_args(port: int, directory: Path) -> list[str]:
    binary = shutil.which("redis-server") or "redis-server"
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec"]  # fmt: skip


# ---------------------------------------------------------------- NATS JetStream
async def nats_async(port: int, seconds: float) -> float:
    import nats

    connection = await nats.connect(f"nats://127.0.0.1:{port}")
    js = connection.jetstream(publish_async_max_pending=NATS_OUTSTANDING)
    await js.add_stream(name="BENCH", subjects=["bench.>"], storage="file")
    subjects = [f"bench.{key}" for key in KEYS]
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for n in range(1000):
            await js.publish_async(subjects[n], PAYLOAD)
        done += 1000
    await js.publish_async_completed()
    elapsed = time.perf_counter() - started
    await connection.close()
    return done / elapsed


NATS_STATS = re.compile(r"stats: ([\d,.]+) msgs/sec")


def nats_bench(binary: Path, port: int, messages: int) -> float:
    """`nats bench js pub async` (NATS' own Go client): file storage, 256-byte messages over 1000
    subjects, NATS_OUTSTANDING acks in flight; the stream is purged first so rounds start alike."""
    args = [str(binary), "--server", f"nats://127.0.0.1:{port}", "bench", "js", "pub", "async",
            "natsbench.msgs", "--create", "--purge", "--storage", "file", "--stream", "NATSBENCH",
            "--size", str(len(PAYLOAD)), "--msgs", str(messages), "--batch", str(NATS_OUTSTANDING),
            "--multisubject", "--multisubjectmax", str(len(KEYS)), "--no-progress"]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    found = NATS_STATS.search(output)
    if result.returncode != 0 or found is None:
        raise RuntimeError(f"nats bench failed ({result.returncode}):\n{output.strip()}")
    return float(found.group(1).replace(",", ""))


def nats_args(binary: Path, port: int, directory: Path, sync_always: bool = False) -> list[str]:
    """nats-server on loopback with a file store; with `sync_always` it fsyncs every write."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory.with_suffix(".conf")
    sync = "\n  sync_interval: always" if sync_always else ""
    config.write_text(f"jetstream {{\n  store_dir: {json.dumps(str(directory))}{sync}\n}}\n")
    return [str(binary), "-a", "127.0.0.1", "-p", str(port), "-c", str(config)]


# ---------------------------------------------------------------- driver
def settle() -> None:
    """Write back every dirty page before a measurement starts. The runs write gigabytes; without
    this, each one pays for the previous system's writeback (an fdatasync waits behind it), which
    put a half-load p99 at 70 ms after the throughput rounds against 10 ms on a settled disk."""
    os.sync()


@contextlib.contextmanager
def broker_running(directory: Path, sync: str, admin_token: bool = True) -> Iterator[BrokerProcess]:
    """A fresh broker on a settled disk; its data is deleted afterwards (nothing left to write back)."""
    settle()
    broker = start_broker(directory, sync, admin_token=admin_token)
    try:
        yield broker
    finally:
        broker.terminate()
        shutil.rmtree(directory, ignore_errors=True)


async def foreshard_round(
    work: Path, tools: NativeTools, round_: int, samples: dict[str, list[float]]
) -> None:
    """Fresh brokers for each client, so neither measures a broker holding the other's messages."""
    with broker_running(work / f"fs-group-{round_}", "group") as broker:
        run = fsbench(tools.fsbench, "pipelined", broker.endpoint, SECONDS,
                      "--streams", "2", "--batch", "1000", "--window", "4")  # fmt: skip
        samples["batched"].append(run["msgs_s"])
    with broker_running(work / f"fs-group-notoken-{round_}", "group", admin_token=False) as broker:
        run = fsbench(tools.fsbench, "pipelined", broker.endpoint, SECONDS,
                      "--streams", "2", "--batch", "1000", "--window", "4")  # fmt: skip
        samples["batched_no_token"].append(run["msgs_s"])
    with broker_running(work / f"fs-group-py-{round_}", "group") as broker:
        samples["batched_py"].append(await foreshard_batched(broker.endpoint, SECONDS))


async def foreshard_fsync_round(
    work: Path, tools: NativeTools, round_: int, samples: dict[str, list[float]]
) -> None:
    with broker_running(work / f"fs-always-{round_}", "always") as broker:
        run = fsbench(tools.fsbench, "pingpong", broker.endpoint, SECONDS / 2)
        samples["fsync_each"].append(run["msgs_s"])
        samples["fsync_each_p99_us"].append(run["p99_us"])
        run = fsbench(tools.fsbench, "pingpong", broker.endpoint, SECONDS / 2, "--unary")
        samples["fsync_each_unary"].append(run["msgs_s"])
        samples["fsync_each_py"].append(await foreshard_unbatched(broker.endpoint, SECONDS / 2))


async def measure_rounds(work: Path, tools: NativeTools) -> dict[str, list[float]]:
    """Interleave the systems, round after round, so a busy moment on a shared machine does not
    land on one system only; medians are reported."""
    samples: dict[str, list[float]] = defaultdict(list)
    redis_port, nats_port, nats_sync_port = free_port(), free_port(), free_port()
    nats_messages = int(100_000 * SECONDS)  # nats bench counts messages: then what the last run sustained
    nats_sync_messages = int(2_000 * SECONDS)
    redis_always_requests = int(50_000 * SECONDS)
    (work / "redis").mkdir()
    with (
        server(redis_args(redis_port, work / "redis"), redis_port),
        server(nats_args(tools.nats_server, nats_port, work / "nats"), nats_port),
        server(nats_args(tools.nats_server, nats_sync_port, work / "nats-sync", True), nats_sync_port),
    ):
        for round_ in range(ROUNDS):
            await foreshard_round(work, tools, round_, samples)
            settle()
            samples["redis_pipelined"].append(redis_benchmark(redis_port, int(150_000 * SECONDS), 4, 1000))
            await redis_configure(redis_port, "always")
            settle()
            samples["redis_always_pipelined"].append(
                redis_benchmark(redis_port, redis_always_requests, 4, 1000)
            )
            redis_always_requests = max(10_000, int(samples["redis_always_pipelined"][-1] * SECONDS))
            await redis_configure(redis_port, "everysec")
            settle()
            samples["nats"].append(nats_bench(tools.nats, nats_port, nats_messages))
            nats_messages = max(10_000, int(samples["nats"][-1] * SECONDS))
            settle()
            samples["nats_sync"].append(nats_bench(tools.nats, nats_sync_port, nats_sync_messages))
            nats_sync_messages = max(1_000, int(samples["nats_sync"][-1] * SECONDS))
            samples["nats_py"].append(await nats_async(nats_port, SECONDS))
            await foreshard_fsync_round(work, tools, round_, samples)
            await redis_configure(redis_port, "always")
            settle()
            samples["redis_always"].append(redis_benchmark(redis_port, int(300 * SECONDS), 1, 1))
            await redis_configure(redis_port, "everysec")
        samples["redis_pipelined_py"].append(await redis_pipelined(redis_port, SECONDS))
    return samples


async def measure_latency(work: Path, tools: NativeTools, rate: float, rate_py: float) -> dict[str, float]:
    """fsbench at `rate` (half the native batched rate); BrokerClient at `rate_py`, for reference.

    A p99 over one few-second run is decided by a handful of batches, so one scheduling hiccup of
    the shared VM moves it by tens of ms: every figure is the median over ROUNDS runs, each on a
    fresh broker, with the runs' p99 range printed beside it."""
    runs: dict[str, list[float]] = defaultdict(list)
    for round_ in range(ROUNDS):
        for sync in ("group", "none"):  # `none` separates the broker's own cost from the disk's
            with broker_running(work / f"fs-latency-{sync}-{round_}", sync) as broker:  # fresh
                run = fsbench(tools.fsbench, "latency", broker.endpoint, SECONDS,
                              "--rate", f"{rate:.0f}", "--batch", str(LATENCY_BATCH))  # fmt: skip
            for name in ("p50_ms", "p99_ms", "max_ms", "achieved_msgs_s"):
                runs[f"{name}_{sync}"].append(run[name])
        # The same at a quarter load: where the tail stops being the shared machine's (the 2 CPUs
        # are far from idle at half the broker's peak, since the client shares them).
        with broker_running(work / f"fs-latency-quarter-{round_}", "group") as broker:
            run = fsbench(tools.fsbench, "latency", broker.endpoint, SECONDS,
                          "--rate", f"{rate / 2:.0f}", "--batch", str(LATENCY_BATCH))  # fmt: skip
        runs["p50_ms_quarter"].append(run["p50_ms"])
        runs["p99_ms_quarter"].append(run["p99_ms"])
        with broker_running(work / f"fs-latency-py-{round_}", "group") as broker:
            latencies = await foreshard_latency(broker.endpoint, rate_py, SECONDS, batch=LATENCY_BATCH)
        runs["p50_ms_py"].append(percentile(latencies, 0.5))
        runs["p99_ms_py"].append(percentile(latencies, 0.99))
    out: dict[str, float] = {"rate": rate, "rate_py": rate_py}
    for name, values in runs.items():
        out[name] = statistics.median(values)
        out[f"{name}_min"], out[f"{name}_max"] = min(values), max(values)
    syncs = fsync_latency(work)
    out["fsync_p50"], out["fsync_p99"] = percentile(syncs, 0.5), percentile(syncs, 0.99)
    return out


async def profile_batched(work: Path) -> str:
    import pstats

    stats_file = work / "broker.prof"
    broker = start_broker(work / "fs-profile", "group", profile=stats_file)
    try:
        rate = await foreshard_batched(broker.endpoint, SECONDS)
    finally:
        broker.terminate()
    report = RESULTS / "broker_throughput.profile.txt"
    buffer = io.StringIO()
    buffer.write(f"# broker under cProfile, batched publish at {rate:,.0f} msgs/s (profiling slows it)\n")
    pstats.Stats(str(stats_file), stream=buffer).sort_stats("tottime").print_stats(25)
    # Keep machine-specific paths out of the committed report.
    text = buffer.getvalue().replace(str(ROOT) + os.sep, "").replace(str(work), "<tmp>")
    report.write_text(re.sub(r"\S*/python3\.\d+/", "<python>/", text))
    return str(report.relative_to(ROOT))


def summary(samples: dict[str, list[float]], latency: dict[str, float]) -> dict[str, float | str]:
    """Headline keys from the native load generators; `*_pyclient*` keys from the Python clients."""
    m = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "foreshard_batched_msgs_s": round(m["batched"]),
        "foreshard_fsync_each_msgs_s": round(m["fsync_each"]),
        "redis_xadd_pipelined_msgs_s": round(m["redis_pipelined"]),
        "redis_always_msgs_s": round(m["redis_always"]),
        "nats_js_async_msgs_s": round(m["nats"]),
        "ratio_batched_vs_redis": round(m["batched"] / m["redis_pipelined"], 3),
        "ratio_batched_vs_nats": round(m["batched"] / m["nats"], 3),
        "ratio_fsync_each_vs_redis_always": round(m["fsync_each"] / m["redis_always"], 3),
        # Equal durability (acked = fsynced): group commit vs Redis appendfsync always, pipelined
        # the same way, and vs JetStream with sync_interval: always.
        "redis_always_pipelined_msgs_s": round(m["redis_always_pipelined"]),
        "nats_js_sync_always_msgs_s": round(m["nats_sync"]),
        "ratio_batched_vs_redis_always": round(m["batched"] / m["redis_always_pipelined"], 3),
        "ratio_batched_vs_nats_sync": round(m["batched"] / m["nats_sync"], 3),
        "foreshard_batched_no_admin_token_msgs_s": round(m["batched_no_token"]),
        "ratio_batched_admin_token_on_vs_off": round(m["batched"] / m["batched_no_token"], 3),
        "nats_server_version": native_tools.nats_server_version(),
        "p99_publish_ack_ms_at_half_load": round(latency["p99_ms_group"], 3),
        "p99_publish_ack_ms_at_half_load_sync_none": round(latency["p99_ms_none"], 3),
        "half_load_msgs_s": round(latency["rate"]),
        "p99_publish_ack_ms_at_quarter_load": round(latency["p99_ms_quarter"], 3),
        "foreshard_fsync_each_p99_us": round(m["fsync_each_p99_us"], 1),
        "foreshard_fsync_each_unary_msgs_s": round(m["fsync_each_unary"]),
        "foreshard_batched_pyclient_msgs_s": round(m["batched_py"]),
        "foreshard_fsync_each_pyclient_msgs_s": round(m["fsync_each_py"]),
        "nats_js_async_pyclient_msgs_s": round(m["nats_py"]),
        "redis_xadd_pipelined_pyclient_msgs_s": round(m["redis_pipelined_py"]),
        "ratio_batched_vs_redis_pyclient": round(m["batched_py"] / m["redis_pipelined"], 3),
        "ratio_batched_vs_nats_pyclient": round(m["batched_py"] / m["nats_py"], 3),
        "p99_publish_ack_ms_at_half_load_pyclient": round(latency["p99_ms_py"], 3),
        "natscli_version": native_tools.natscli_version(),
    }


ROWS = [  # (system and case, client, samples key)
    ("Foreshard, batched (group fsync)", "fsbench", "batched"),
    ("Foreshard, batched, no admin token", "fsbench", "batched_no_token"),
    ("Foreshard, batched (group fsync)", "grpc.aio (ref)", "batched_py"),
    ("Foreshard, fsync per publish, 1 client", "fsbench", "fsync_each"),
    ("Foreshard, fsync per publish, 1 client, unary", "fsbench", "fsync_each_unary"),
    ("Foreshard, fsync per publish, 1 client, unary", "grpc.aio (ref)", "fsync_each_py"),
    ("Redis XADD pipelined, everysec", "redis-benchmark", "redis_pipelined"),
    ("Redis XADD pipelined, everysec", "redis-py (ref)", "redis_pipelined_py"),
    ("Redis XADD unpipelined, always, 1 client", "redis-benchmark", "redis_always"),
    ("Redis XADD pipelined, always (= durability)", "redis-benchmark", "redis_always_pipelined"),
    ("NATS JetStream async, file", "nats bench", "nats"),
    ("NATS JetStream async, sync always (= dur.)", "nats bench", "nats_sync"),
    ("NATS JetStream async, file", "nats-py (ref)", "nats_py"),
]


def table(samples: dict[str, list[float]], latency: dict[str, float]) -> str:
    lines = [f"{'msgs/s (median of rounds; min..max)':<47}{'client':<17}{'median':>10}  range", "-" * 96]
    for name, client, key in ROWS:
        values = samples[key]
        spread = f"{min(values):,.0f}..{max(values):,.0f}"
        lines.append(f"{name:<47}{client:<17}{statistics.median(values):>10,.0f}  {spread}")
    g, n = "group", "none"
    p99_each = statistics.median(samples["fsync_each_p99_us"])
    m = {key: statistics.median(samples[key]) for key in ("batched", "redis_always_pipelined", "nats_sync")}
    lines += [
        "",
        "at equal durability (acknowledged = fsynced): Foreshard batched (group commit) is "
        f"{m['batched'] / m['redis_always_pipelined']:.2f}x Redis pipelined appendfsync always and "
        f"{m['batched'] / m['nats_sync']:.2f}x NATS JetStream sync_interval always",
        f"fsync per publish (fsbench, Publish stream): p99 {p99_each:,.0f} µs",
        f"publish->ack latency, {LATENCY_BATCH}-message batches on one stream, open loop, half load:",
        f"  fsbench at {latency['rate']:,.0f} msgs/s (achieved {latency[f'achieved_msgs_s_{g}']:,.0f}):",
        f"    --sync group   p50 {latency[f'p50_ms_{g}']:.2f} ms   p99 {latency[f'p99_ms_{g}']:.2f} ms"
        f" ({latency[f'p99_ms_{g}_min']:.2f}..{latency[f'p99_ms_{g}_max']:.2f})",
        f"    --sync none    p50 {latency[f'p50_ms_{n}']:.2f} ms   p99 {latency[f'p99_ms_{n}']:.2f} ms"
        f" ({latency[f'p99_ms_{n}_min']:.2f}..{latency[f'p99_ms_{n}_max']:.2f})  (no disk)",
        f"  fsbench at a quarter load, {latency['rate'] / 2:,.0f} msgs/s, --sync group:"
        f"   p50 {latency['p50_ms_quarter']:.2f} ms   p99 {latency['p99_ms_quarter']:.2f} ms"
        f" ({latency['p99_ms_quarter_min']:.2f}..{latency['p99_ms_quarter_max']:.2f})",
        f"  grpc.aio client (ref) at {latency['rate_py']:,.0f} msgs/s, --sync group:"
        f"   p50 {latency['p50_ms_py']:.2f} ms   p99 {latency['p99_ms_py']:.2f} ms"
        f" ({latency['p99_ms_py_min']:.2f}..{latency['p99_ms_py_max']:.2f})",
        f"  (medians over {ROUNDS} runs, each on a fresh broker; p99 range of the runs in brackets)",
        f"  disk fdatasync of 290 kB: p50 {latency['fsync_p50']:.2f} ms   p99 {latency['fsync_p99']:.2f} ms",
        "native clients: fsbench (tools/benchclient), redis-benchmark, "
        f"nats CLI {native_tools.natscli_version()}; nats-server {native_tools.nats_server_version()}",
        f"rounds {ROUNDS} x {SECONDS:g} s; load average (1 min) at the end "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
    ]
    return "\n".join(lines)


async def run(profile: bool) -> None:
    tools = NativeTools(  # cached after the first build
        native_tools.fsbench(), native_tools.nats_cli(), native_tools.nats_server()
    )
    with tempfile.TemporaryDirectory(prefix="foreshard-bench-") as temporary:
        work = Path(temporary)
        samples = await measure_rounds(work, tools)
        half = {key: statistics.median(samples[key]) / 2 for key in ("batched", "batched_py")}
        latency = await measure_latency(work, tools, half["batched"], half["batched_py"])
        if profile:
            await profile_batched(work)
    result = summary(samples, latency)
    keep("broker_throughput", table(samples, latency), result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", action="store_true", help="also profile the broker (cProfile)")
    asyncio.run(run(parser.parse_args().profile))


if __name__ == "__main__":
    main()
