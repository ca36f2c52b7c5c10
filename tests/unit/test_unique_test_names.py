"""pytest's default import mode keys test modules by basename: two files of one name in different
layers fail collection ("import file mismatch") on a clean clone. Keep basenames unique."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
