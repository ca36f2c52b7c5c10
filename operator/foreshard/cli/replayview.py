"""What a person watches while a replay runs: a live panel on a terminal, progress lines otherwise.

The panel (rich) shows shards desired/Ready, the routing epoch, the operator's forecast and its band
against the replayed arrivals, moves in flight, the consumer's backlog and prefetch buffer, and the
checker's running verdict. Without a terminal (CI, a pipe) one line every LINE_EVERY_S goes to stderr.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from foreshard.localcluster.replayrun import Outcome, Sample

LINE_EVERY_S = 10.0


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


class ReplayView:
    def __init__(self, stream: TextIO = sys.stderr, live: bool | None = None) -> None:
        self.stream = stream
        self.console = Console(file=stream)
        self.interactive = self.console.is_terminal if live is None else live
        self._live: Live | None = None
        self._last_line = 0.0

    def __enter__(self) -> ReplayView:
        if self.interactive:
            self._live = Live(Table(), console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.__exit__(kind, error, tb)
            self._live = None

    def progress(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(f"==> {text}")
        else:
            print(f"==> {text}", file=self.stream, flush=True)

    def update(self, outcome: Outcome, sample: Sample) -> None:
        if self._live is not None:
            self._live.update(panel(outcome, sample))
        elif time.monotonic() - self._last_line >= LINE_EVERY_S:
            self._last_line = time.monotonic()
            print(line(outcome, sample), file=self.stream, flush=True)


def _clock(outcome: Outcome, sample: Sample) -> str:
    plan = outcome.plan
    trace_h = max(0.0, sample.t) * plan.clock.scale / 3600.0
    if sample.t < 0:
        return f"starts in {-sample.t:.0f} s"
    return f"{sample.t:.0f}/{plan.duration_s:.0f} s wall = trace hour {trace_h:.1f}"


def _moves(outcome: Outcome, sample: Sample) -> tuple[int, str]:
    done = [m for m in outcome.moves.values() if m.get("phase") == "Done"]
    pauses = [float(m["pauseMs"]) for m in done if "pauseMs" in m]
    last = f", last pause {pauses[-1]:.0f} ms" if pauses else ""
    return len(done), f"{sample.moves_in_flight} in flight ({sample.phases or '-'}); {len(done)} done{last}"


def line(outcome: Outcome, sample: Sample) -> str:
    _, moves = _moves(outcome, sample)
    return (
        f"-- {_clock(outcome, sample)} | shards {sample.ready}/{sample.desired} Ready/desired, epoch "
        f"{sample.epoch} | arrivals {_rate(sample.published_rate)} msg/s (plan {_rate(sample.planned)}), "
        f"forecast {_rate(sample.forecast)} [{_rate(sample.lower)}, {_rate(sample.upper)}] | moves {moves} | "
        f"backlog {sample.backlog}, buffer {sample.buffered} | out of order so far {sample.out_of_order}"
    )


def panel(outcome: Outcome, sample: Sample) -> Table:
    table = Table(title=f"Foreshard replay of {Path(outcome.settings['traces']).name}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("now")
    _, moves = _moves(outcome, sample)
    verdict = "clean so far" if sample.out_of_order == 0 else f"{sample.out_of_order} out of order"
    rows = [
        ("clock", _clock(outcome, sample)),
        ("shards", f"{sample.ready} Ready / {sample.desired} desired"),
        ("routing epoch", str(sample.epoch)),
        ("arrivals", f"{_rate(sample.published_rate)} msg/s (trace: {_rate(sample.planned)})"),
        ("forecast", f"{_rate(sample.forecast)} msg/s, band [{_rate(sample.lower)}, {_rate(sample.upper)}]"),
        ("moves", moves),
        (
            "consumer",
            f"backlog {sample.backlog}, prefetch buffer {sample.buffered} "
            f"(target {sample.prefetch_target:.0f})",
        ),
        ("checker", verdict),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table
