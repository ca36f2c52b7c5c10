"""The repository stands alone: a clone with nothing beside it runs its tests and its demo."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from foreshard import traces

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
CODE = ("operator", "broker-image", "tests", "bench", "scripts", "tools")
# A path that climbs out of the checkout into a sibling `shared` directory, in any spelling.
OUTSIDE = re.compile(r"""\.\./shared|parent\s*/\s*["']shared["']|["']\.\.["']\s*/\s*["']shared["']""")


def _sources() -> list[Path]:
    found = [REPO / "Makefile", REPO / ".ci" / "run"]
    for top in CODE:
        found += [p for p in (REPO / top).rglob("*") if p.suffix in {".py", ".sh", ".go", ""} and p.is_file()]
    return [p for p in found if p.exists() and p != Path(__file__).resolve()]


def test_no_code_reads_a_directory_outside_the_checkout() -> None:
    offenders = [str(p.relative_to(REPO)) for p in _sources() if OUTSIDE.search(p.read_text(errors="ignore"))]
    assert offenders == []


def test_the_bundled_traces_hold_every_queue_with_a_readme(tmp_path: Path) -> None:
    assert (traces.BUNDLED / "README.md").exists()
    queues = traces.prepare_queues(traces.BUNDLED, tmp_path)
    assert set(queues) == set(traces.QUEUE_FOLDERS)
    assert len(list(queues["tweets"].glob("*.csv"))) == 10
    assert all(any(path.glob("*.csv")) for path in queues.values())
