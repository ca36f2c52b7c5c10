"""Foreshard: sizes and places an ordered queue's shards ahead of demand.

`__version__` is the installed distribution's version, which is pyproject.toml's: the one
version source of the package, the images (`make images` tags them with it) and the chart
(tests/unit/test_one_version.py holds the chart and manifests to it).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("foreshard")
except PackageNotFoundError:  # a source tree on sys.path without an install: say so, don't guess
    __version__ = "0+unknown"
