"""Build and cache the Go-built binaries of the local cluster, keyed by their version tuple.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl come from one
multi-call binary (`tools/kubebox`, compiled from the upstream Go modules); kwok and helm are
`go install`ed at pinned versions. Everything lands in
`$FORESHARD_CACHE` (default `$XDG_CACHE_HOME/foreshard`, else `~/.cache/foreshard`) under a
directory named after the version tuple, so a warm start never rebuilds and a version bump
never reuses a stale binary. Nothing is written into the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
KUBEBOX = REPO / "tools" / "kubebox"
KUBEBOX_COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
MIN_GO = (1, 25)


class ToolchainError(RuntimeError):
    """A binary cannot be built; the message says what to install or what failed."""


@dataclass(frozen=True)
class Versions:
    kubernetes: str
    etcd: str
    kwok: str
    helm: str

    @classmethod
    def pinned(cls) -> Versions:
        pairs = {}
        for line in (KUBEBOX / "versions.env").read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                name, value = line.split("=", 1)
                pairs[name.strip()] = value.strip()
        return cls(
            pairs["KUBERNETES_VERSION"], pairs["ETCD_VERSION"], pairs["KWOK_VERSION"], pairs["HELM_VERSION"]
        )

    @property
    def tag(self) -> str:
        return f"k8s-{self.kubernetes}_etcd-{self.etcd}_kwok-{self.kwok}_helm-{self.helm}"


def cache_root() -> Path:
    if "FORESHARD_CACHE" in os.environ:
        return Path(os.environ["FORESHARD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "foreshard"


@dataclass(frozen=True)
class Toolchain:
    """Where the binaries of one version tuple live."""

    versions: Versions
    bin_dir: Path

    @classmethod
    def default(cls) -> Toolchain:
        versions = Versions.pinned()
        return cls(versions, cache_root() / versions.tag / "bin")

    def path(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def kwok_stages(self) -> Path:
        return self.bin_dir.parent / "kwok-stages.yaml"

    @property
    def record(self) -> Path:
        """JSON written after a build: seconds each part took, for bench/cluster_startup.py."""
        return self.bin_dir.parent / "build.json"

    def missing(self) -> list[str]:
        wanted = [*KUBEBOX_COMPONENTS, "kubebox", "kwok", "helm"]
        absent = [name for name in wanted if not self.path(name).exists()]
        return absent + ([] if self.kwok_stages.exists() else ["kwok-stages.yaml"])

    def ensure(self, log: bool = True) -> dict[str, float]:
        """Build whatever is missing; return the seconds each build step took (empty when warm)."""
        if not self.missing():
            return {}
        go = find_go()
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        took: dict[str, float] = {}
        steps = (("kubebox", self._build_kubebox), ("kwok", self._build_kwok), ("helm", self._build_helm))
        for name, build in steps:
            if name == "kubebox" and all(self.path(c).exists() for c in (*KUBEBOX_COMPONENTS, "kubebox")):
                continue
            if name != "kubebox" and self.path(name).exists():
                continue
            if log:
                print(f"toolchain: building {name} (cached afterwards in {self.bin_dir})", file=sys.stderr)
            started = time.monotonic()
            build(go)
            took[name] = round(time.monotonic() - started, 1)
        self._write_kwok_stages(go)
        previous = json.loads(self.record.read_text()) if self.record.exists() else {}
        self.record.write_text(json.dumps({**previous, **took}, indent=2))
        return took

    def _build_kubebox(self, go: str) -> None:
        v = self.versions
        minor = v.kubernetes.split(".")[1]
        stamp = "k8s.io/component-base/version"
        client = "k8s.io/client-go/pkg/version"
        ldflags = [
            "-s",
            "-w",
            f"-X {stamp}.gitVersion={v.kubernetes}",
            f"-X {stamp}.gitMajor=1",
            f"-X {stamp}.gitMinor={minor}",
            f"-X {stamp}.gitTreeState=clean",
            f"-X {stamp}.buildDate=1970-01-01T00:00:00Z",
            f"-X {client}.gitVersion={v.kubernetes}",
            f"-X {client}.gitMajor=1",
            f"-X {client}.gitMinor={minor}",
        ]
        target = self.path("kubebox")
        _go(go, ["build", "-trimpath", "-ldflags", " ".join(ldflags), "-o", str(target), "."], cwd=KUBEBOX)
        for component in KUBEBOX_COMPONENTS:
            link = self.path(component)
            link.unlink(missing_ok=True)
            link.symlink_to("kubebox")

    def _build_kwok(self, go: str) -> None:
        flags = f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={self.versions.kwok}"
        self._install(go, f"sigs.k8s.io/kwok/cmd/kwok@{self.versions.kwok}", flags)

    def _build_helm(self, go: str) -> None:
        # As helm's own Makefile does: stamp the Kubernetes version its client libraries speak,
        # or `helm template` assumes v1.20 and refuses charts that need a newer cluster.
        module = f"helm.sh/helm/v3@{self.versions.helm}"
        gomod = Path(
            json.loads(_go(go, ["mod", "download", "-json", module], cwd=KUBEBOX))["GoMod"]
        ).read_text()
        client = next(
            line.split()[1] for line in gomod.splitlines() if line.strip().startswith("k8s.io/client-go ")
        )
        minor = client.split(".")[1]
        stamps = [f"-X helm.sh/helm/v3/internal/version.version={self.versions.helm}"]
        for package in ("pkg/lint/rules", "pkg/chartutil"):
            stamps += [
                f"-X helm.sh/helm/v3/{package}.k8sVersionMajor=1",
                f"-X helm.sh/helm/v3/{package}.k8sVersionMinor={minor}",
            ]
        self._install(go, f"helm.sh/helm/v3/cmd/helm@{self.versions.helm}", " ".join(["-s", "-w", *stamps]))

    def _install(self, go: str, package: str, ldflags: str) -> None:
        _go(go, ["install", "-trimpath", "-ldflags", ldflags, package], cwd=KUBEBOX, gobin=self.bin_dir)

    def _write_kwok_stages(self, go: str) -> None:
        """kwok needs Stage objects to move nodes and pods; take the upstream 'fast' set verbatim."""
        if self.kwok_stages.exists():
            return
        out = _go(go, ["mod", "download", "-json", f"sigs.k8s.io/kwok@{self.versions.kwok}"], cwd=KUBEBOX)
        stage_root = Path(json.loads(out)["Dir"]) / "kustomize" / "stage"
        files = [
            stage_root / "node" / "fast" / "node-initialize.yaml",
            stage_root / "node" / "heartbeat-with-lease" / "node-heartbeat-with-lease.yaml",
            *(stage_root / "pod" / "fast" / f"pod-{name}.yaml" for name in ("ready", "complete", "delete")),
        ]
        documents = [path.read_text().strip().removeprefix("---").strip() for path in files]
        self.kwok_stages.write_text("\n---\n".join(documents) + "\n")


def find_go() -> str:
    go = shutil.which("go")
    if go is None:
        raise ToolchainError(
            "The local control plane is built from Kubernetes' Go modules, and no `go` is on PATH. "
            f"Install Go {MIN_GO[0]}.{MIN_GO[1]} or newer and run again."
        )
    version = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout
    parts = version.strip().removeprefix("go").split(".")
    if tuple(int(p) for p in parts[:2] if p.isdigit()) < MIN_GO:
        raise ToolchainError(
            f"Go {MIN_GO[0]}.{MIN_GO[1]}+ is needed to build Kubernetes; found {version.strip()}."
        )
    return go


def _go(go: str, args: list[str], cwd: Path, gobin: Path | None = None) -> str:
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"}
    if gobin is not None:
        env["GOBIN"] = str(gobin)
    result = subprocess.run([go, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-20:])
        raise ToolchainError(f"`go {' '.join(args[:2])}` failed in {cwd.name}:\n{tail}")
    return result.stdout
