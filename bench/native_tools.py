"""Build and cache the native load generators of the broker benchmark.

  fsbench   tools/benchclient: Foreshard's own Go client (raw gRPC, hand-encoded protobuf)
  nats      the NATS CLI (`nats bench`), pinned with all its modules in tools/benchclient/natscli
  nats-server  the NATS server natscli's module graph pins (v2.12: `sync_interval: always`, which
            the Debian package, v2.9, lacks), built from the same go.sum

Both are built with the local Go toolchain (the one that builds the local cluster) into the
Foreshard cache (`$FORESHARD_CACHE`, default `~/.cache/foreshard`, see
foreshard.localcluster.toolchain) under `bench-tools/<name>-<key>/`, where the key follows what
the binary is built from: a hash of fsbench's sources, natscli's pinned version (and a hash of its
module pins), and the Go version. A warm call returns at once; a cold one prints progress on
stderr (a first build downloads and compiles the Go modules, which can take minutes).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

from foreshard.localcluster.toolchain import ToolchainError, _go, cache_root, find_go

ROOT = Path(__file__).resolve().parents[1]
BENCHCLIENT = ROOT / "tools" / "benchclient"
NATSCLI = BENCHCLIENT / "natscli"
NATSCLI_MODULE = "github.com/nats-io/natscli"

__all__ = [
    "ToolchainError",
    "build_times",
    "fsbench",
    "nats_cli",
    "nats_server",
    "nats_server_version",
    "natscli_version",
]
NATS_SERVER_MODULE = "github.com/nats-io/nats-server/v2"

# Seconds each build of this process took (empty when everything was cached).
build_times: dict[str, float] = {}


def natscli_version() -> str:
    """The natscli version pinned in tools/benchclient/natscli/go.mod."""
    for line in (NATSCLI / "go.mod").read_text().splitlines():
        words = line.split()
        if NATSCLI_MODULE in words:
            return words[words.index(NATSCLI_MODULE) + 1]
    raise ToolchainError(f"{NATSCLI_MODULE} is not required in tools/benchclient/natscli/go.mod")


def nats_server_version() -> str:
    """The nats-server version natscli's go.mod pins (its module graph builds the server too)."""
    for line in (NATSCLI / "go.mod").read_text().splitlines():
        words = line.split()
        if NATS_SERVER_MODULE in words:
            return words[words.index(NATS_SERVER_MODULE) + 1]
    raise ToolchainError(f"{NATS_SERVER_MODULE} is not required in tools/benchclient/natscli/go.mod")


def _go_version(go: str) -> str:
    return subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()


def _sources_key(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*")):
        if path.is_file() and path.suffix in {".go", ".mod", ".sum"}:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _build(name: str, target: Path, go: str, package: str, cwd: Path) -> Path:
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"native_tools: building {name} into {target.parent} (first build can take minutes)", file=sys.stderr
    )
    started = time.monotonic()
    partial = target.with_name(target.name + ".partial")
    _go(go, ["build", "-trimpath", "-ldflags", "-s -w", "-o", str(partial), package], cwd)
    partial.rename(target)  # only a complete binary ever has the final name
    build_times[name] = round(time.monotonic() - started, 1)
    print(f"native_tools: built {name} in {build_times[name]:.1f} s", file=sys.stderr)
    return target


def fsbench() -> Path:
    """tools/benchclient built as `fsbench`, cached per source hash and Go version."""
    go = find_go()
    key = f"{_sources_key(BENCHCLIENT)}_{_go_version(go)}"
    target = cache_root() / "bench-tools" / f"fsbench-{key}" / "fsbench"
    return _build("fsbench", target, go, ".", BENCHCLIENT)


def nats_cli() -> Path:
    """The pinned NATS CLI as `nats`, cached per natscli version, module pins and Go version."""
    go = find_go()
    key = f"{natscli_version()}-{_sources_key(NATSCLI)}_{_go_version(go)}"
    target = cache_root() / "bench-tools" / f"natscli-{key}" / "nats"
    return _build("natscli", target, go, f"{NATSCLI_MODULE}/nats", NATSCLI)


def nats_server() -> Path:
    """nats-server at the version natscli's module pins name, cached like `nats_cli`."""
    go = find_go()
    key = f"{nats_server_version()}-{_sources_key(NATSCLI)}_{_go_version(go)}"
    target = cache_root() / "bench-tools" / f"nats-server-{key}" / "nats-server"
    return _build("nats-server", target, go, NATS_SERVER_MODULE, NATSCLI)


if __name__ == "__main__":
    print(fsbench())
    print(nats_cli())
    print(nats_server())
