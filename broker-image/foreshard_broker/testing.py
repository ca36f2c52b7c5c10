"""Start and stop real broker processes on loopback (the local stand-in for a kubelet).

The broker binds port 0 and prints one JSON line with its ports, so nothing races for a port and
nothing polls: `start` reads that line, then the process is ready for gRPC.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from foreshard_broker.client.broker_client import AdminClient


@dataclass
class BrokerProcess:
    data_dir: Path
    shard: int = 0
    sync: str = "none"
    extra_args: list[str] = field(default_factory=list)
    command: list[str] | None = None  # default: this interpreter running foreshard_broker.server.main
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    grpc_port: int = 0
    http_port: int = 0
    # The Admin API's bearer token, written to <data_dir>/admin.token and passed as
    # --admin-token-file; random by default. None starts a broker without one (Admin API refused).
    admin_token: str | None = field(default_factory=lambda: secrets.token_urlsafe(24))
    # The pod runner passes a pod's own (rebound) flags: then they replace the generated ones
    # (data dir, ports, shard, sync, token) and the caller owns every flag.
    flags: list[str] | None = None
    log_file: Path | None = None  # default: <data_dir>/broker-<shard>.log
    # Its own process group, so a supervisor's recorded pid can be stopped with its children and
    # a signal to the supervisor's group does not reach the broker before the supervisor drains it.
    new_session: bool = False
    # Listen again on the ports of the previous start (a pod re-created at the same endpoint, as
    # the local pod runner does); the first start, with no ports known yet, still binds port 0.
    keep_ports: bool = False

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.log_file or self.data_dir / f"broker-{self.shard}.log"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin.token"

    def admin_client(self) -> AdminClient:
        """An AdminClient for this broker carrying its admin token (close it when done)."""
        return AdminClient(self.endpoint, token=self.admin_token)

    def args(self) -> list[str]:
        base = self.command or [sys.executable, "-m", "foreshard_broker.server.main"]
        if self.flags is not None:
            return [*base, *self.flags]
        token = ["--admin-token-file", str(self.admin_token_file)] if self.admin_token is not None else []
        grpc, http = (self.grpc_port, self.http_port) if self.keep_ports else (0, 0)
        return [
            *base,
            "--data-dir", str(self.data_dir),
            "--grpc-listen", f"127.0.0.1:{grpc}",
            "--http-listen", f"127.0.0.1:{http}",
            "--shard", str(self.shard),
            "--sync", self.sync,
            *token,
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> BrokerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.admin_token is not None and self.flags is None:
            self.admin_token_file.write_text(self.admin_token + "\n")
            self.admin_token_file.chmod(0o600)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed by close()
        self.process = subprocess.Popen(
            self.args(),
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, **self.env},
            start_new_session=self.new_session,
        )
        log.close()
        line = read_announcement(self.process, timeout)
        announced = json.loads(line)
        self.grpc_port, self.http_port = announced["grpc_port"], announced["http_port"]
        return self

    def kill(self) -> None:
        """SIGKILL: the crash case (no drain, no final fsync)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)
            self._close()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the graceful case. Returns the exit code."""
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self._close()
        return code

    def exited(self) -> int | None:
        """The exit code once the process has ended (and is reaped), else None."""
        if self.process is None:
            return None
        code = self.process.poll()
        if code is not None:
            self._close()
        return code

    def _close(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def restart(self) -> BrokerProcess:
        self.kill()
        return self.start()

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


def read_announcement(process: subprocess.Popen[bytes], timeout: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    while not buffer.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([process.stdout], [], [], max(remaining, 0))
        if not ready:
            process.kill()
            raise TimeoutError(f"broker did not announce its ports within {timeout}s")
        chunk = os.read(process.stdout.fileno(), 4096)
        if not chunk:
            code = process.wait()
            raise RuntimeError(f"broker exited with code {code} before listening")
        buffer += chunk
    return buffer.decode().splitlines()[0]
