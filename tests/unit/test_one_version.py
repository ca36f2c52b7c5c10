"""One version source: pyproject.toml's, read by the package and held to by images, chart and manifests."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import foreshard
from foreshard.api.names import BROKER_IMAGE_REPOSITORY, DEFAULT_BROKER_IMAGE, OPERATOR_IMAGE_REPOSITORY
from foreshard.localcluster import images

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
# The files allowed to spell the version out; everything else derives it.
HOLDERS = {"pyproject.toml", "helm/foreshard/Chart.yaml", "manifests/deployment.yaml"}


def test_the_installed_package_reports_pyprojects_version() -> None:
    assert importlib.metadata.version("foreshard") == VERSION, "stale install: rerun scripts/bootstrap.sh"
    assert foreshard.__version__ == VERSION
    assert images.project_version() == VERSION


def test_the_charts_app_version_is_the_package_version() -> None:
    """(The chart's own `version` is the chart's: it moves when the templates do.)"""
    chart = yaml.safe_load((REPO / "helm" / "foreshard" / "Chart.yaml").read_text())
    assert str(chart["appVersion"]) == VERSION


def test_the_manifests_and_the_chart_run_the_operator_image_that_make_images_builds() -> None:
    deployment = yaml.safe_load((REPO / "manifests" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{OPERATOR_IMAGE_REPOSITORY}:{VERSION}"
    values = yaml.safe_load((REPO / "helm" / "foreshard" / "values.yaml").read_text())
    assert values["image"]["repository"] == OPERATOR_IMAGE_REPOSITORY
    assert values["image"]["tag"] == "", "an empty tag means the chart's appVersion"


def test_shards_default_to_the_broker_image_of_the_same_version() -> None:
    assert f"{BROKER_IMAGE_REPOSITORY}:{VERSION}" == DEFAULT_BROKER_IMAGE
    assert {image.name: image.ref(VERSION) for image in images.IMAGES} == {
        "operator": f"{OPERATOR_IMAGE_REPOSITORY}:{VERSION}",
        "broker": DEFAULT_BROKER_IMAGE,
    }


def test_no_other_file_writes_the_version_by_hand() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "operator", "broker-image", "scripts", "helm", "manifests", "crds", "Makefile"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    spelled = [p for p in tracked if p not in HOLDERS and VERSION in (REPO / p).read_text(errors="replace")]
    assert spelled == [], f"derive the version from pyproject.toml instead of writing {VERSION} in {spelled}"


def requirements(*names: str) -> subprocess.CompletedProcess[str]:
    script = REPO / "scripts" / "image_requirements.py"
    argv = [sys.executable, str(script), str(REPO / "pyproject.toml"), *names]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def test_the_image_requirements_come_from_pyproject_by_name() -> None:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    broker = requirements("grpcio", "prometheus_client").stdout.splitlines()
    assert broker == [d for d in dependencies if d.startswith(("grpcio", "prometheus-client"))]
    operator = requirements("--without", "matplotlib").stdout.splitlines()
    assert operator == [d for d in dependencies if not d.startswith("matplotlib")]
    unknown = requirements("redis")
    assert unknown.returncode == 1 and "no dependency named redis" in unknown.stderr
