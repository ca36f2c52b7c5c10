#!/usr/bin/env bash
# Installs everything Foreshard's demo and tests need on a fresh machine, and nothing twice:
#   OS packages (Prometheus, Redis, NATS, openssl, headless Chromium for the report test; podman,
#   runc and mmdebstrap for `make images`),
#   a Python virtualenv with the project and its
#   dev tools, and the Go-built control plane (etcd, kube-apiserver, kube-controller-manager,
#   kube-scheduler, kubectl, kwok, helm) cached outside the repository by version.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }

# podman runs with runc (crun fails on hybrid cgroups), with no registry: mmdebstrap makes the
# base image from Debian's packages (the keyring lets it do so on Ubuntu too); uidmap,
# fuse-overlayfs and slirp4netns are for a developer who runs podman as a non-root user.
image_packages=(podman runc mmdebstrap debian-archive-keyring uidmap fuse-overlayfs slirp4netns
  containernetworking-plugins)
# chromium-headless-shell: the end-to-end test opens the demo's report.html and screenshots it
os_packages=(prometheus redis-server redis-tools nats-server openssl chromium-headless-shell "${image_packages[@]}")
missing=()
need prometheus || missing+=(prometheus)
need promtool || missing+=(prometheus)
need redis-server || missing+=(redis-server)
need redis-benchmark || missing+=(redis-tools)
need nats-server || missing+=(nats-server)
need openssl || missing+=(openssl)
need chromium-headless-shell || need chromium || missing+=(chromium-headless-shell)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
for package in "${image_packages[@]}"; do
  installed "$package" || missing+=("$package")
done
if ((${#missing[@]})); then
  if ! need apt-get; then
    echo "bootstrap: missing ${missing[*]} and no apt-get here; install these packages: ${os_packages[*]}" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  echo "bootstrap: installing OS packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! need python3; then
  echo "bootstrap: python3 (3.11 or newer) is required" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.foreshard-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi

# The Go-built binaries: a warm cache returns at once, a cold one builds (about 10-15 min on 2 cores).
.venv/bin/python -m foreshard.localcluster build
