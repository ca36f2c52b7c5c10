"""`foreshard traces ...`: convert arrival data to the canonical trace format (DESIGN.md §8)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from foreshard import traces
from foreshard.core.series import Series


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("traces", help="convert arrival logs and series to canonical traces")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    log = verbs.add_parser("convert-log", help="raw arrival log (one row per message) -> counts per step")
    log.add_argument("source", type=Path)
    log.add_argument("--out", type=Path, required=True, help="canonical directory to write into")
    log.add_argument("--timestamp-column", default="timestamp")
    log.add_argument("--step", type=float, default=60.0, help="bucket length in seconds (default 60)")
    log.add_argument("--key", help="key to write (default: the file stem)")
    log.add_argument("--json", action="store_true")
    log.set_defaults(func=_convert_log)

    indexed = verbs.add_parser("convert-indexed", help="value-per-row file without timestamps -> canonical")
    indexed.add_argument("source", type=Path)
    indexed.add_argument("--out", type=Path, required=True)
    indexed.add_argument("--column", required=True)
    indexed.add_argument("--start", required=True, help="time of the first row, e.g. 2000-06-05T00:00:00")
    indexed.add_argument("--step", type=float, required=True, help="seconds between rows")
    indexed.add_argument("--key")
    indexed.add_argument("--json", action="store_true")
    indexed.set_defaults(func=_convert_indexed)

    prepare = verbs.add_parser("prepare", help="convert the bundled traces into one directory per queue")
    prepare.add_argument("--source", type=Path, default=traces.BUNDLED, help="default: data/traces")
    prepare.add_argument("--out", type=Path, default=Path("build/traces"))
    prepare.add_argument("--json", action="store_true")
    prepare.set_defaults(func=_prepare)


def _report(series: Series, path: Path, as_json: bool) -> int:
    summary: dict[str, Any] = {
        "key": series.key,
        "rows": len(series),
        "step_s": series.step_s,
        "path": str(path),
    }
    print(json.dumps(summary) if as_json else f"wrote {summary['rows']} rows of {series.key} to {path}")
    return 0


def _convert_log(args: argparse.Namespace) -> int:
    series = traces.convert_arrival_log(args.source, args.timestamp_column, args.step, args.key)
    path = args.out / f"{series.key}.csv"
    traces.write_series(series, path)
    return _report(series, path, args.json)


def _convert_indexed(args: argparse.Namespace) -> int:
    series = traces.convert_indexed(args.source, args.column, args.start, args.step, args.key)
    path = args.out / f"{series.key}.csv"
    traces.write_series(series, path)
    return _report(series, path, args.json)


def _prepare(args: argparse.Namespace) -> int:
    queues = traces.prepare_queues(args.source.resolve(), args.out)
    if args.json:
        print(json.dumps({name: str(path) for name, path in queues.items()}))
    else:
        for name, path in queues.items():
            print(f"{name:10s} {path}")
    return 0
