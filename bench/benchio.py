"""How every benchmark ends: the table printed, table and figures kept in bench/results/, and
ONE JSON line printed last (what CI logs and the README's numbers are read from)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def keep(name: str, text: str, figures: Any, indent: int = 2) -> None:
    """Print `text`, write bench/results/<name>.txt and .json, then print `figures` as one line."""
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.txt").write_text(text.rstrip("\n") + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(figures, indent=indent) + "\n")
    print(json.dumps(figures))
