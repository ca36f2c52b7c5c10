"""Read and write trace directories in the canonical format, and convert other shapes to it.

Canonical format (DESIGN.md §8): a directory of CSV files, one key per file (file stem = key),
columns `timestamp,value`, `value` = messages in that interval. Timestamps are ISO-8601 or
`YYYY-MM-DD HH:MM:SS` (naive times are read as UTC) or Unix seconds.

Two other shapes are converted by `foreshard traces convert`:
* a raw arrival log, one row per message, with a timestamp column (`--timestamp-column`);
* an index-only series, one value per row and no timestamp (`--start`, `--step`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from foreshard.core.series import Series, counts_from_events, regularize


class TraceFormatError(ValueError):
    """A trace file that cannot be read as the canonical format; the message names the file and row."""


def parse_time(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    # Python 3.11 parses at most 6 fractional digits; some logs carry 7.
    if "." in text:
        head, frac = text.split(".", 1)
        digits = "".join(c for c in frac if c.isdigit())
        text = f"{head}.{digits[:6]}{frac[len(digits) :]}"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def read_series(path: Path, step_s: float | None = None) -> Series:
    """One canonical CSV file as a regular series (gaps are NaN, duplicates: last row wins)."""
    times: list[float] = []
    values: list[float] = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"timestamp", "value"} <= set(reader.fieldnames):
            raise TraceFormatError(f"{path}: expected columns timestamp,value, found {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                times.append(parse_time(row["timestamp"]))
                values.append(float(row["value"]) if row["value"].strip() else float("nan"))
            except (ValueError, AttributeError) as error:
                raise TraceFormatError(f"{path}:{line}: {error}") from error
    if len(times) < 2:
        raise TraceFormatError(f"{path}: a trace needs at least two rows, found {len(times)}")
    return regularize(path.stem, np.array(times), np.array(values), step_s)


def read_directory(directory: Path) -> list[Series]:
    """Every `*.csv` below `directory` (sorted by key); at least one is required."""
    files = sorted(directory.rglob("*.csv"))
    if not files:
        raise TraceFormatError(f"{directory}: no .csv files (expected one canonical CSV per key)")
    series = [read_series(path) for path in files]
    keys = [s.key for s in series]
    if len(set(keys)) != len(keys):
        raise TraceFormatError(f"{directory}: two files share a key (file stem): {sorted(keys)}")
    return sorted(series, key=lambda s: s.key)


def write_series(series: Series, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "value"])
        for ts, value in zip(series.timestamps(), series.values, strict=True):
            stamp = datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S")
            writer.writerow([stamp, "" if np.isnan(value) else f"{value:g}"])


def convert_arrival_log(path: Path, timestamp_column: str, step_s: float, key: str | None = None) -> Series:
    """A raw log (one row per message) to counts per `step_s`."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or timestamp_column not in reader.fieldnames:
            raise TraceFormatError(f"{path}: no column {timestamp_column!r}; columns are {reader.fieldnames}")
        times = np.array([parse_time(row[timestamp_column]) for row in reader])
    return counts_from_events(key or path.stem, times, step_s)


def convert_indexed(path: Path, column: str, start: str, step_s: float, key: str | None = None) -> Series:
    """A value-per-row file without timestamps (row i is interval i from `start`)."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise TraceFormatError(f"{path}: no column {column!r}; columns are {reader.fieldnames}")
        values = np.array([float(row[column]) for row in reader])
    return Series(key or path.stem, parse_time(start), step_s, values)


# The repository's own copy of the development traces (sources and licences in its README).
# Found from the source tree, so it serves checkouts and editable installs; an installed wheel
# passes the directory explicitly.
BUNDLED = Path(__file__).resolve().parents[2] / "data" / "traces"

# How the bundled traces map to canonical queues: each folder is one queue, except that the
# raw LLM log and the index-only Taylor series are converted first.
QUEUE_FOLDERS: dict[str, str] = {
    "tweets": "nab_realTweets",
    "elb": "nab_realAWSCloudwatch",
    "nyc_taxi": "nab_realKnownCause",
    "taylor": "darts_taylor",
    "azure_llm": "azure_llm_2023",
}


def prepare_queues(source_dir: Path, out: Path) -> dict[str, Path]:
    """Convert the trace folders (`data/traces` layout) into one canonical directory per queue."""
    queues: dict[str, Path] = {}
    for queue, folder in QUEUE_FOLDERS.items():
        target = out / queue
        files = sorted((source_dir / folder).glob("*.csv"))
        if not files:
            raise TraceFormatError(f"{source_dir / folder}: no CSV files (expected the data/traces layout)")
        for source in files:
            series = _canonical(source)
            write_series(series, target / f"{series.key}.csv")
        queues[queue] = target
    return queues


def _canonical(source: Path) -> Series:
    if source.parent.name == "azure_llm_2023":
        return convert_arrival_log(source, "TIMESTAMP", 60.0, key="azure_llm_code")
    if source.parent.name == "darts_taylor":
        return convert_indexed(source, "Y", "2000-06-05 00:00:00", 1800.0, key="taylor")
    return read_series(source)


def keys_of(series: Iterable[Series]) -> list[str]:
    return [s.key for s in series]
