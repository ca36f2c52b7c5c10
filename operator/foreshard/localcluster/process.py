"""Child processes of the local cluster: start with a log file, wait for readiness, stop cleanly.

Every process runs in its own session (process group), so stopping it also stops anything it
forked, and a dying component is reported with the tail of its own log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class StartError(RuntimeError):
    """A component did not come up; the message carries the tail of its log."""


@dataclass
class Managed:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None


def spawn(name: str, argv: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None) -> Managed:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with log.open("ab") as handle:
        process = subprocess.Popen(
            list(argv),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return Managed(name, process, log)


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def stop_pid(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after `timeout_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _exists(pid):
                return
            time.sleep(0.05)


def _exists(pid: int) -> bool:
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass  # not our child: fall back to a signal probe
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(managed: Managed, timeout_s: float = 10.0) -> None:
    stop_pid(managed.pid, timeout_s)
    with contextlib.suppress(subprocess.TimeoutExpired):
        managed.process.wait(timeout=1)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(preferred: int | None = None, taken: set[int] | None = None) -> int:
    """`preferred` when it is free, else a port the kernel picks; never one in `taken`."""
    taken = taken or set()
    if preferred and preferred not in taken and port_free(preferred):
        return preferred
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in taken:
            return port


def wait_until(
    check: Callable[[], bool],
    what: str,
    watched: Sequence[Managed],
    timeout_s: float,
    interval_s: float = 0.2,
) -> None:
    """Poll `check` until it holds; fail fast with the log tail if a watched process exits."""

    def alive_and_checked() -> bool:
        for managed in watched:
            if not managed.alive():
                raise StartError(
                    f"{managed.name} exited with code {managed.process.returncode} while waiting for {what}; "
                    f"last lines of {managed.log}:\n{tail(managed.log)}"
                )
        return check()

    try:
        poll_until(alive_and_checked, what, timeout_s, interval_s)
    except TimeoutError as error:
        logs = "\n".join(f"--- {m.name} ({m.log}):\n{tail(m.log, 10)}" for m in watched)
        raise StartError(f"{error}\n{logs}") from None


def poll_until(
    predicate: Callable[[], T | None],
    what: str,
    timeout_s: float,
    interval_s: float = 0.25,
    evidence: Callable[[], str] | None = None,
) -> T:
    """Poll until `predicate` returns something truthy, and return it; TimeoutError naming `what`
    (and what `evidence` says was last seen) when it has not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; last seen: {evidence()}" if evidence else ""
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}{seen}")
        time.sleep(interval_s)


def https_ok(url: str, context: ssl.SSLContext, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
