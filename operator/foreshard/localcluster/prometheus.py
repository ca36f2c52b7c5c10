"""The real Prometheus server (OS package) on loopback, and history backfill with promtool.

Backfill writes each trace as the counter `foreshard_messages_published_total{queue, key}` in
OpenMetrics text and turns it into TSDB blocks with `promtool tsdb create-blocks-from
openmetrics`. The counter is 0 at the start of the first interval and grows by each interval's
count at the interval's end, so `increase(...[step])` evaluated at an interval's end returns that
interval's count exactly. A missing interval (NaN) gets no sample.

Scrape targets are discovered from `<workdir>/targets/*.json` (file_sd), so brokers and the
operator can be added while the server runs, without a reload; `watch_dirs` adds directories that
others keep target files in (the local cluster's pod runner lists its brokers there).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from foreshard.core.series import Series
from foreshard.localcluster.process import Managed, free_port, http_ok, spawn, stop, wait_until

METRIC = "foreshard_messages_published"
ACKS = "foreshard_messages_acked"  # acks backfill as this counter, by queue and consumer group
# Backfilled history reaches months back; the default 15 d retention would delete it at start.
RETENTION = "36500d"


class PrometheusMissing(RuntimeError):
    """prometheus or promtool is not installed."""


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PrometheusMissing(
            f"`{name}` is not on PATH. Install the OS package (Debian/Ubuntu: `apt-get install prometheus`), "
            "or run `make bootstrap`, which does."
        )
    return path


@dataclass
class PrometheusServer:
    workdir: Path
    port: int | None = None
    scrape_interval_s: int = 5
    watch_dirs: list[Path] = field(default_factory=list)  # more file_sd sources: <dir>/*.json
    managed: Managed | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        assert self.port is not None, "Prometheus is not started"
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def targets_dir(self) -> Path:
        return self.workdir / "targets"

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.port = free_port(self.port)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self._config(), sort_keys=False))
        self.managed = spawn(
            "prometheus",
            [
                binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.data_dir}",
                f"--storage.tsdb.retention.time={RETENTION}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--web.enable-admin-api",
            ],
            self.workdir / "logs",
        )
        try:
            wait_until(lambda: http_ok(f"{self.url}/-/ready"), "Prometheus /-/ready", [self.managed], 60.0)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.managed is not None:
            stop(self.managed)
            self.managed = None

    def add_targets(
        self, job: str, addresses: Sequence[str], labels: Mapping[str, str] | None = None
    ) -> None:
        """Scrape `addresses` (host:port) under `job`; Prometheus picks the file up by itself."""
        entry = [{"targets": list(addresses), "labels": {"job": job, **(labels or {})}}]
        target = self.targets_dir / f"{job}.json"
        staged = target.with_suffix(".tmp")
        staged.write_text(json.dumps(entry))
        staged.replace(target)  # atomic: Prometheus never reads half a file

    def _config(self) -> dict[str, object]:
        file_sd: list[dict[str, object]] = [
            {"files": [str(self.targets_dir / "*.json")], "refresh_interval": "5s"}
        ]
        if self.watch_dirs:
            # 2 s: a broker the runner starts is scraped soon after it listens
            files = [str(d / "*.json") for d in self.watch_dirs]
            file_sd.append({"files": files, "refresh_interval": "2s"})
        return {
            "global": {"scrape_interval": f"{self.scrape_interval_s}s", "evaluation_interval": "15s"},
            "scrape_configs": [{"job_name": "foreshard", "file_sd_configs": file_sd}],
        }


# promtool re-reads its whole input once per 2-hour block it writes, so a long history in one
# file costs blocks x lines. Inputs split at block-aligned chunk boundaries cost blocks x lines
# of one chunk instead: minutes become seconds for the shared tweet traces.
BLOCK_S = 7200
CHUNK_S = 24 * BLOCK_S


def samples(
    queues: Mapping[str, Sequence[Series]],
    shift_s: Mapping[str, float],
    metric: str = METRIC,
    label: str = "key",
) -> Iterator[tuple[str, float, float]]:
    """(series selector, counter value, timestamp) for every sample, series after series, in time order."""
    for queue in sorted(queues):
        for series in sorted(queues[queue], key=lambda s: s.key):
            selector = f'{metric}_total{{queue="{_escape(queue)}",{label}="{_escape(series.key)}"}}'
            offset = shift_s.get(queue, 0.0)
            yield selector, 0.0, series.start_s + offset
            present = np.isfinite(series.values)
            cumulative = np.cumsum(np.clip(np.where(present, series.values, 0.0), 0.0, None))
            ends = series.timestamps() + series.step_s + offset
            for end, total in zip(ends[present], cumulative[present], strict=True):
                yield selector, float(total), float(end)


def openmetrics_chunks(
    queues: Mapping[str, Sequence[Series]],
    shift_s: Mapping[str, float],
    acks: Mapping[str, Sequence[Series]] | None = None,
) -> dict[int, list[str]]:
    """OpenMetrics documents (as lines) per block-aligned chunk of time; `acks`: per queue, one
    series per consumer group (Series.key is the group), shifted like the queue's arrivals."""
    families = [(METRIC, "key", "Messages published, by queue and order key.", queues)]
    if acks:
        families.append((ACKS, "group", "Messages acknowledged, by queue and consumer group.", acks))
    chunks: dict[int, list[str]] = {}
    for metric, label, help_text, data in families:
        header = [f"# HELP {metric} {help_text}\n", f"# TYPE {metric} counter\n"]
        opened: set[int] = set()  # chunks whose latest header is this family's
        for selector, value, timestamp in samples(data, shift_s, metric, label):
            chunk = int(timestamp // CHUNK_S)
            lines = chunks.setdefault(chunk, [])
            if chunk not in opened:
                lines.extend(header)
                opened.add(chunk)
            lines.append(f"{selector} {value:.17g} {timestamp:.3f}\n")
    return {chunk: [*lines, "# EOF\n"] for chunk, lines in sorted(chunks.items())}


def shifts_to_end_at(queues: Mapping[str, Sequence[Series]], end_at_s: float | None) -> dict[str, float]:
    """Per queue, the offset that makes its latest interval end at `end_at_s` (0 when None)."""
    if end_at_s is None:
        return {queue: 0.0 for queue in queues}
    return {queue: end_at_s - max(s.end_s for s in series) for queue, series in queues.items()}


def backfill(
    queues: Mapping[str, Sequence[Series]],
    data_dir: Path,
    end_at_s: float | None = None,
    acks: Mapping[str, Sequence[Series]] | None = None,
) -> dict[str, float]:
    """Write the queues' traces as TSDB blocks into `data_dir`; returns each queue's time shift.

    `acks` (optional): per queue, acknowledgements per consumer group on the arrivals' time axis.
    Run it before the server starts (a running server only sees new blocks at its next reload).
    """
    shifts = shifts_to_end_at(queues, end_at_s)
    data_dir.mkdir(parents=True, exist_ok=True)
    promtool = binary("promtool")
    with tempfile.TemporaryDirectory() as scratch:
        for chunk, lines in openmetrics_chunks(queues, shifts, acks).items():
            source = Path(scratch) / f"chunk-{chunk}.om"
            source.write_text("".join(lines))
            command = [
                promtool,
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                "-q",
                str(source),
                str(data_dir),
            ]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"promtool backfill failed: {result.stderr.strip()[-2000:]}")
    return shifts


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
