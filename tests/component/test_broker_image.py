"""The image cannot be built here, so run the Dockerfile's ENTRYPOINT + CMD (with its ENV) as a process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

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
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", text)
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
