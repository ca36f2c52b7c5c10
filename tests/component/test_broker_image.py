"""The broker image: its Dockerfile's ENTRYPOINT + CMD as a local process, then the built image itself."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from foreshard.localcluster import images
from foreshard_broker.client.grpc_transport import GrpcTransport
from foreshard_broker.client.sync import SyncConsumer, SyncProducer
from foreshard_broker.testing import read_announcement

pytestmark = pytest.mark.component

DOCKERFILE = Path(__file__).resolve().parents[2] / "broker-image" / "Dockerfile"


def instruction(text: str, name: str) -> str:
    """The last `name` instruction of the final stage, with line continuations joined."""
    joined = text.replace("\\\n", " ")
    found = re.findall(rf"^{name}\s+(.+)$", joined, flags=re.MULTILINE)
    assert found, f"Dockerfile has no {name}"
    return found[-1].strip()


def environment(text: str) -> dict[str, str]:
    return dict(re.findall(r"(FORESHARD_BROKER_\w+)=(\S+)", instruction(text, "ENV")))


def test_dockerfile_pins_its_base_and_runs_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"ARG BASE_IMAGE=(\S+)", text)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1)), "base must be a pinned tag"
    assert instruction(text, "USER").split(":")[0] not in ("0", "root")
    assert "/healthz" in instruction(text, "HEALTHCHECK")
    assert environment(text)["FORESHARD_BROKER_HTTP_LISTEN"].endswith(":8080"), "healthcheck port matches"


def test_entrypoint_command_serves_healthz_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    command = json.loads(instruction(text, "ENTRYPOINT")) + json.loads(instruction(text, "CMD"))
    executable = shutil.which(command[0], path=str(Path(sys.executable).parent)) or shutil.which(command[0])
    assert executable, f"{command[0]} is not installed as a console script"
    env = {
        **os.environ,
        **environment(text),
        # Only what a pod would differ in: a writable volume and free loopback ports.
        "FORESHARD_BROKER_DATA_DIR": str(tmp_path),
        "FORESHARD_BROKER_GRPC_LISTEN": "127.0.0.1:0",
        "FORESHARD_BROKER_HTTP_LISTEN": "127.0.0.1:0",
        "HOSTNAME": "queue-a-broker-3",
    }
    process = subprocess.Popen(
        [executable, *command[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        ports = json.loads(read_announcement(process, timeout=30))
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['http_port']}/healthz", timeout=10) as response:
            assert response.status == 200
        process.terminate()
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    logs = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    serving = next(entry for entry in logs if entry["msg"] == "serving")
    assert serving["shard"] == 3, "the shard ordinal comes from the StatefulSet pod name"
    assert any(entry["msg"] == "stopped" for entry in logs)
    assert list(tmp_path.glob("log/*.seg")), "the log lives under FORESHARD_BROKER_DATA_DIR"


def podman_run(*args: str) -> list[str]:
    """How a container runs on this class of machine (runc, host network, bounded ulimits)."""
    return [*images.PODMAN_RUN, "--network", "host", "--no-healthcheck", *args]


class Container:
    def __init__(self, name: str, process: subprocess.Popen[bytes]) -> None:
        self.name, self.process = name, process
        self.ports: dict[str, int] = json.loads(read_announcement(process, timeout=60))

    def exec(self, *argv: str) -> str:
        return subprocess.run(["podman", "exec", self.name, *argv], capture_output=True, text=True).stdout

    def stop(self) -> list[dict[str, object]]:
        """`podman stop` (SIGTERM) and the broker's JSON log lines; asserts a clean exit."""
        subprocess.run(["podman", "stop", "--time", "20", self.name], capture_output=True, check=True)
        _, stderr = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, stderr.decode()[-2000:]
        return [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]


@contextmanager
def broker_container(image: str, hostname: str) -> Iterator[Container]:
    name = f"foreshard-broker-test-{os.getpid()}"
    env = [f"FORESHARD_BROKER_{kind}_LISTEN=127.0.0.1:0" for kind in ("GRPC", "HTTP")]
    options = ["--rm", "--name", name, "--hostname", hostname, *(f"--env={e}" for e in env)]
    process = subprocess.Popen(podman_run(*options, image), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield Container(name, process)
    finally:
        subprocess.run(["podman", "rm", "--force", name], capture_output=True, check=False)
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_the_built_broker_image_serves_publishes_and_fetches_as_a_non_root_user(
    built_images: dict[str, str],
) -> None:
    with broker_container(built_images["broker"], hostname="orders-broker-2") as broker:
        assert broker.exec("id", "-u").strip() not in ("", "0"), "the broker runs as a non-root user"
        endpoint = f"127.0.0.1:{broker.ports['grpc_port']}"
        sent = [(f"k{i % 2}", f"{i}".encode()) for i in range(20)]
        with SyncProducer(GrpcTransport, [endpoint]) as producer:
            for key, payload in sent:
                producer.publish(key, payload, timeout=10)
        received = []
        with SyncConsumer(GrpcTransport, [endpoint], "image-check") as consumer:
            for _ in sent:
                message = consumer.receive(timeout=10)
                received.append((message.key, message.payload))
                message.ack()
        for key in ("k0", "k1"):
            assert [p for k, p in received if k == key] == [p for k, p in sent if k == key]
        logs = broker.stop()
    assert next(entry for entry in logs if entry["msg"] == "serving")["shard"] == 2
    assert any(entry["msg"] == "stopped" for entry in logs), "podman stop's SIGTERM drains and stops"
