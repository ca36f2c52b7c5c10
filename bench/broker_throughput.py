"""Publish throughput: Foreshard broker vs Redis Streams vs NATS JetStream, side by side, on this machine.

256-byte payloads over 1000 keys. Every system is started here on free loopback ports with temporary
directories and stopped at the end:

  foreshard batched      pipelined Publish streams, 1000-message batches, group-commit fsync
  foreshard fsync-each   one client, one message per call, `--sync always` (an fsync per publish)
  redis pipelined        XADD to one stream per key, 1000-command pipelines, appendfsync everysec,
                         driven by redis-benchmark (C client; redis-py shown for reference)
  redis always           redis-benchmark, one client, unpipelined XADD, appendfsync always
  nats js async          JetStream file store, publish_async with 4000 acks outstanding
  p99 at half load       Foreshard publish->ack latency of 250-message batches on one Publish
                         stream, sent open-loop at half the measured batched rate to a fresh
                         broker (and again with --sync none, to separate disk from broker cost)

Prints a table, then ONE JSON line (the last line). `--profile` also runs the batched case with
the broker under cProfile and writes the top functions to bench/results/broker_profile.txt.
Environment: BENCH_SECONDS (default 5) per measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "broker-image"))

from foreshard_broker.client.broker_client import BrokerClient, publish_request  # noqa: E402
from foreshard_broker.testing import BrokerProcess  # noqa: E402

PAYLOAD = os.urandom(128).hex().encode()  # 256 bytes
KEYS = [f"key-{n}" for n in range(1000)]
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
RESULTS = ROOT / "bench" / "results"
LATENCY_BATCH = 250  # messages per batch in the half-load latency runs


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


def start_broker(directory: Path, sync: str, profile: Path | None = None) -> BrokerProcess:
    command = None
    if profile is not None:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "foreshard_broker.server.main"]
    env = {"PYTHONPATH": str(ROOT / "broker-image")}
    return BrokerProcess(directory, sync=sync, command=command, env=env).start()


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


async def redis_set_always(port: int) -> None:
    import redis.asyncio as redis

    connection = redis.Redis(port=port)
    await connection.config_set("appendfsync", "always")
    await connection.aclose()


def redis_args(port: int, directory: Path) -> list[str]:
    binary = shutil.which("redis-server") or "redis-server"
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec"]  # fmt: skip


# ---------------------------------------------------------------- NATS JetStream
async def nats_async(port: int, seconds: float) -> float:
    import nats

    connection = await nats.connect(f"nats://127.0.0.1:{port}")
    js = connection.jetstream(publish_async_max_pending=4000)
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


def nats_args(port: int, directory: Path) -> list[str]:
    binary = shutil.which("nats-server") or "nats-server"
    return [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(directory)]


# ---------------------------------------------------------------- driver
async def measure_foreshard(work: Path, profile: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    broker = start_broker(work / "fs-group", "group")
    try:
        out["batched"] = await foreshard_batched(broker.endpoint, SECONDS)
    finally:
        broker.terminate()
    broker = start_broker(work / "fs-latency", "group")  # fresh: not holding the run above
    try:
        latencies = await foreshard_latency(broker.endpoint, out["batched"] / 2, SECONDS, batch=LATENCY_BATCH)
        out["p50_ms"], out["p99_ms"] = percentile(latencies, 0.5), percentile(latencies, 0.99)
    finally:
        broker.terminate()
    broker = start_broker(work / "fs-latency-nosync", "none")  # the same without the disk: broker cost
    try:
        latencies = await foreshard_latency(broker.endpoint, out["batched"] / 2, SECONDS, batch=LATENCY_BATCH)
        out["p99_nosync_ms"] = percentile(latencies, 0.99)
    finally:
        broker.terminate()
    syncs = fsync_latency(work)
    out["fsync_p50_ms"], out["fsync_p99_ms"] = percentile(syncs, 0.5), percentile(syncs, 0.99)
    broker = start_broker(work / "fs-always", "always")
    try:
        out["fsync_each"] = await foreshard_unbatched(broker.endpoint, SECONDS)
    finally:
        broker.terminate()
    if profile:
        out["profile"] = await profile_batched(work)
    return out


async def profile_batched(work: Path) -> str:
    import pstats

    stats_file = work / "broker.prof"
    broker = start_broker(work / "fs-profile", "group", profile=stats_file)
    try:
        rate = await foreshard_batched(broker.endpoint, SECONDS)
    finally:
        broker.terminate()
    report = RESULTS / "broker_profile.txt"
    with open(report, "w") as handle:
        handle.write(f"# broker under cProfile, batched publish at {rate:,.0f} msgs/s (profiling slows it)\n")
        pstats.Stats(str(stats_file), stream=handle).sort_stats("tottime").print_stats(25)
    return str(report.relative_to(ROOT))


async def measure_others(work: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    port = free_port()
    (work / "redis").mkdir()
    with server(redis_args(port, work / "redis"), port):
        out["redis_pipelined_py"] = await redis_pipelined(port, SECONDS)
        out["redis_pipelined"] = redis_benchmark(port, int(130_000 * SECONDS), clients=4, pipeline=1000)
        await redis_set_always(port)
        out["redis_always"] = redis_benchmark(port, int(500 * SECONDS), clients=1, pipeline=1)
    port = free_port()
    with server(nats_args(port, work / "nats"), port):
        out["nats"] = await nats_async(port, SECONDS)
    return out


def summary(fs: dict[str, Any], others: dict[str, float]) -> dict[str, float]:
    return {
        "foreshard_batched_msgs_s": round(fs["batched"]),
        "foreshard_fsync_each_msgs_s": round(fs["fsync_each"]),
        "redis_xadd_pipelined_msgs_s": round(others["redis_pipelined"]),
        "redis_always_msgs_s": round(others["redis_always"]),
        "nats_js_async_msgs_s": round(others["nats"]),
        "ratio_batched_vs_redis": round(fs["batched"] / others["redis_pipelined"], 3),
        "ratio_batched_vs_nats": round(fs["batched"] / others["nats"], 3),
        "ratio_fsync_each_vs_redis_always": round(fs["fsync_each"] / others["redis_always"], 3),
        "p99_publish_ack_ms_at_half_load": round(fs["p99_ms"], 3),
    }


def table(result: dict[str, float], fs: dict[str, Any], others: dict[str, float]) -> str:
    rows = [
        ("Foreshard, batched (group fsync)", result["foreshard_batched_msgs_s"], "msgs/s"),
        ("Foreshard, fsync per publish, 1 client", result["foreshard_fsync_each_msgs_s"], "msgs/s"),
        ("Redis XADD pipelined, everysec (C client)", result["redis_xadd_pipelined_msgs_s"], "msgs/s"),
        ("Redis XADD pipelined, everysec (redis-py)", round(others["redis_pipelined_py"]), "msgs/s"),
        ("Redis XADD unpipelined, always, 1 client", result["redis_always_msgs_s"], "msgs/s"),
        ("NATS JetStream async, file (nats-py)", result["nats_js_async_msgs_s"], "msgs/s"),
        ("Foreshard p50 publish->ack, half load", round(fs["p50_ms"], 3), "ms"),
        ("Foreshard p99 publish->ack, half load", result["p99_publish_ack_ms_at_half_load"], "ms"),
        ("  same, --sync none (broker cost only)", round(fs["p99_nosync_ms"], 3), "ms"),
        ("  disk: fdatasync of 290 kB, p50", round(fs["fsync_p50_ms"], 3), "ms"),
        ("  disk: fdatasync of 290 kB, p99", round(fs["fsync_p99_ms"], 3), "ms"),
        (
            "machine load average (1 min) at the end",
            round(os.getloadavg()[0], 2),
            f"on {os.cpu_count()} CPUs",
        ),
    ]
    lines = [f"{'case':<46}{'value':>12}  unit", "-" * 64]
    lines += [f"{name:<46}{value:>12,}  {unit}" for name, value, unit in rows]
    return "\n".join(lines)


async def run(profile: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="foreshard-bench-") as temporary:
        work = Path(temporary)
        fs = await measure_foreshard(work, profile)
        others = await measure_others(work)
    result = summary(fs, others)
    text = table(result, fs, others)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "broker_throughput.txt").write_text(text + "\n")
    (RESULTS / "broker_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", action="store_true", help="also profile the broker (cProfile)")
    asyncio.run(run(parser.parse_args().profile))


if __name__ == "__main__":
    main()
