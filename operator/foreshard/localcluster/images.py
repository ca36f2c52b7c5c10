"""Build the operator and broker images with podman, with no container registry in reach.

`make images` (or `python -m foreshard.localcluster.images`) runs three steps, each cached under
`cache_root()/images` (outside the repository) and keyed by a hash of its inputs, so a second run
with nothing changed builds nothing:

1. **base**: `mmdebstrap` makes a Debian root filesystem with python3 and its venv module from
   Debian's packages; `podman import` turns the tarball into `localhost/foreshard-base:<suite>-<key>`.
2. **wheelhouse**: the host's pip downloads every dependency pyproject.toml names, as wheels for the
   base's Python and platform. Builds then install with `--no-index` and need no network.
3. **images**: `podman build` of each Dockerfile with that base and wheelhouse as build arguments;
   each image carries its inputs' key as a label, and a tag that already carries the key is kept.

The Dockerfiles themselves stay plain (base image and pip options are build arguments), so
`docker build` elsewhere builds the same images from a registry's Python base and the index.
This is a kit for developers and CI: nothing on the operator's run path imports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from foreshard.api.names import BROKER_IMAGE_REPOSITORY, OPERATOR_IMAGE_REPOSITORY
from foreshard.localcluster.toolchain import cache_root

REPO = Path(__file__).resolve().parents[3]
SUITE = "bookworm"  # Python 3.11, the oldest the project supports, like the Dockerfiles' default base
BASE_PACKAGES = ("python3", "python3-venv", "passwd", "ca-certificates")
# Drop documentation and translations (copyright files stay); merged /usr without the usrmerge
# package, which would pull in all of perl.
MMDEBSTRAP_OPTIONS = (
    "--variant=minbase",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
)
# What a podman run needs on this class of machine: crun fails on hybrid cgroups, runc works.
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
PODMAN_RUN = ("podman", "run", "--runtime", "runc", *ULIMITS)
INPUTS_LABEL = "io.foreshard.inputs"
# The build context: exactly what the Dockerfiles COPY (.dockerignore says the same).
CONTEXT = ("pyproject.toml", "README.md", "operator", "broker-image", "scripts/image_requirements.py")
SKIPPED = ("__pycache__", ".egg-info", ".pyc", ".mypy_cache")

Progress = Callable[[str], None]


class ImageError(RuntimeError):
    """An image cannot be built; the message says what to install or which step failed."""


@dataclass(frozen=True)
class Image:
    name: str  # operator or broker
    repository: str
    dockerfile: str  # relative to the repository

    def ref(self, version: str) -> str:
        return f"{self.repository}:{version}"


IMAGES = (
    Image("operator", OPERATOR_IMAGE_REPOSITORY, "operator/Dockerfile"),
    Image("broker", BROKER_IMAGE_REPOSITORY, "broker-image/Dockerfile"),
)


@dataclass(frozen=True)
class BasePython:
    """The base image's interpreter, which the wheelhouse's wheels must fit."""

    version: str  # "3.11"
    machine: str  # "x86_64"
    glibc: tuple[int, int]

    def pip_target(self) -> list[str]:
        """pip download options for this interpreter: every manylinux tag its glibc accepts."""
        major, minor = self.glibc
        platforms = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, 16, -1)]
        platforms += [f"manylinux{tag}_{self.machine}" for tag in ("2014", "2010", "1")]
        abi = "cp" + self.version.replace(".", "")
        options = ["--only-binary=:all:", "--python-version", self.version, "--implementation", "cp"]
        return [*options, "--abi", abi, *(f"--platform={p}" for p in platforms)]


def project_version(repo: Path = REPO) -> str:
    """The one version of package, images and chart: pyproject.toml's."""
    with (repo / "pyproject.toml").open("rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


def image_requirements(repo: Path = REPO) -> list[str]:
    """Every runtime dependency plus the build system (the Dockerfiles build the project wheel)."""
    with (repo / "pyproject.toml").open("rb") as handle:
        project = tomllib.load(handle)
    return [*project["project"]["dependencies"], *project["build-system"]["requires"]]


def fingerprint(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:16]


def context_files(repo: Path = REPO) -> list[Path]:
    """The files of the build context, sorted, without caches the build ignores."""
    found: list[Path] = []
    for entry in CONTEXT:
        path = repo / entry
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        found += [p for p in candidates if not any(s in part for part in p.parts for s in SKIPPED)]
    return found


def context_digest(repo: Path = REPO) -> str:
    files = context_files(repo)
    return fingerprint(*(item for p in files for item in (str(p.relative_to(repo)), p.read_bytes())))


def run(argv: list[str], what: str, log: Path | None = None) -> str:
    """Run a build command; on failure the error names the step and shows the end of its output."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError as error:
        raise ImageError(f"{argv[0]} is not installed: run scripts/bootstrap.sh ({what})") from error
    if log is not None:
        log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        raise ImageError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result.stdout


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One builder at a time per cache: a test session and `make images` may overlap."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure_rootfs(cache: Path, progress: Progress) -> tuple[Path, str]:
    key = fingerprint(SUITE, *BASE_PACKAGES, *MMDEBSTRAP_OPTIONS)
    tarball = cache / f"rootfs-{SUITE}-{key}.tar"
    if tarball.exists():
        progress(f"base root filesystem cached ({tarball.name})")
        return tarball, key
    progress(f"base root filesystem: mmdebstrap {SUITE} with {', '.join(BASE_PACKAGES)} (a few minutes)")
    partial = tarball.with_suffix(".partial.tar")
    started = time.monotonic()
    argv = ["mmdebstrap", *MMDEBSTRAP_OPTIONS, f"--include={','.join(BASE_PACKAGES)}", SUITE, str(partial)]
    run(argv, "mmdebstrap", cache / "mmdebstrap.log")
    partial.rename(tarball)
    progress(f"base root filesystem made in {time.monotonic() - started:.0f}s")
    return tarball, key


def ensure_base(tarball: Path, key: str, progress: Progress) -> str:
    ref = f"localhost/foreshard-base:{SUITE}-{key}"
    if subprocess.run(["podman", "image", "exists", ref], check=False).returncode == 0:
        progress(f"base image cached ({ref})")
        return ref
    path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    run(["podman", "import", "--change", f"ENV {path}", str(tarball), ref], "podman import")
    progress(f"base image imported ({ref})")
    return ref


def base_python(base: str) -> BasePython:
    probe = (
        "import json, platform, sys;"
        "print(json.dumps([sys.version_info[:2], platform.machine(), platform.libc_ver()[1]]))"
    )
    argv = [*PODMAN_RUN, "--rm", "--network", "none", base, "python3", "-c", probe]
    out = run(argv, "probing the base's Python")
    (major, minor), machine, glibc = json.loads(out)
    glibc_major, glibc_minor = (int(x) for x in glibc.split(".")[:2])
    return BasePython(f"{major}.{minor}", machine, (glibc_major, glibc_minor))


def ensure_wheelhouse(cache: Path, python: BasePython, repo: Path, progress: Progress) -> tuple[Path, str]:
    requirements = image_requirements(repo)
    key = fingerprint(*requirements, *python.pip_target())
    wheelhouse = cache / f"wheelhouse-{key}"
    if wheelhouse.is_dir():
        progress(f"wheelhouse cached ({wheelhouse.name}, {len(list(wheelhouse.glob('*.whl')))} wheels)")
        return wheelhouse, key
    progress(f"wheelhouse: downloading {len(requirements)} requirements for Python {python.version}")
    partial = cache / f"wheelhouse-{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    started = time.monotonic()
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(partial), *python.pip_target()]
    run([*pip, *requirements], "pip download of the image dependencies")
    partial.rename(wheelhouse)
    count = len(list(wheelhouse.glob("*.whl")))
    progress(f"wheelhouse: {count} wheels in {time.monotonic() - started:.0f}s")
    return wheelhouse, key


def image_label(ref: str) -> str | None:
    """The inputs key an existing image was built from, or None when there is no such image."""
    template = '{{ index .Labels "' + INPUTS_LABEL + '" }}'
    result = subprocess.run(
        ["podman", "image", "inspect", "--format", template, ref], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else None


def build_image(repo: Path, image: Image, ref: str, base: str, wheelhouse: Path, key: str, log: Path) -> None:
    argv = [
        "podman", "build", "--runtime", "runc", "--network", "none", "--pull=never", "--format", "docker",
        *ULIMITS,
        "--volume", f"{wheelhouse}:/wheelhouse:ro",
        "--build-arg", f"BASE_IMAGE={base}",
        "--build-arg", "PIP_OPTIONS=--no-index --find-links /wheelhouse",
        "--label", f"{INPUTS_LABEL}={key}",
        "--file", str(repo / image.dockerfile), "--tag", ref, str(repo),
    ]  # fmt: skip
    run(argv, f"podman build of {ref} (log: {log})", log)


def build_images(repo: Path = REPO, progress: Progress | None = None) -> dict[str, str]:
    """Build (or find cached) every image; returns image name -> reference."""
    say: Progress = progress or (lambda line: print(f"images: {line}", flush=True))
    cache = cache_root() / "images"
    version = project_version(repo)
    refs: dict[str, str] = {}
    with locked(cache):
        tarball, base_key = ensure_rootfs(cache, say)
        base = ensure_base(tarball, base_key, say)
        wheelhouse, wheels_key = ensure_wheelhouse(cache, base_python(base), repo, say)
        sources = context_digest(repo)
        for image in IMAGES:
            ref = image.ref(version)
            key = fingerprint(base, wheels_key, sources, version)
            if image_label(ref) == key:
                say(f"{ref} cached")
            else:
                started = time.monotonic()
                build_image(repo, image, ref, base, wheelhouse, key, cache / f"build-{image.name}.log")
                say(f"{ref} built in {time.monotonic() - started:.0f}s")
            refs[image.name] = ref
    return refs


def main(argv: list[str]) -> int:
    if argv:
        print("usage: python -m foreshard.localcluster.images", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        refs = build_images()
    except ImageError as error:
        print(f"images: {error}", file=sys.stderr)
        return 1
    print(f"images: {', '.join(refs.values())} ready in {time.monotonic() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
