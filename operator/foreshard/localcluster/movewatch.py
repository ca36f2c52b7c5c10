"""Every move the operator records in a queue's status.migrations, collected as it is written.

The operator keeps only the last few finished moves in status.migrations, so a replay that reads the
status once a second would miss a move that finished and was dropped between two reads. A watch on
the queue sees every status write (one event each); a poll beside it covers a reconnecting watch.

    QueueWatch(api, namespace, queue, take)  every write of the queue, to `take`, in a daemon thread
    MoveWatch(api, namespace, queue, t0)   the moves a QueueWatch sees
      .record(migrations, now)             what the poll read (merged the same way)
      .moves()                             id -> the move as last seen, with firstSeen (s since t0)

`pause_profile(moves)` is the pause's breakdown over Done moves: fence (incl. the delta import),
the settle wait inside it, and the rest (recording the switch and pushing the table).
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import urllib3
from kubernetes import watch
from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from foreshard.api.names import GROUP, SHARD_ALLOCATIONS, VERSION

WATCH_TIMEOUT_S = 30


class QueueWatch:
    """A daemon thread that hands `take` every write of one ShardAllocation while it runs.

    A watch started without a resourceVersion first delivers the object as it is, so a watch that
    dropped (an expired version, an API server restart) resumes from the current state; a state is
    missed only if it was both written and overwritten while no watch ran.
    """

    def __init__(
        self, api: CustomObjectsApi, namespace: str, queue: str, take: Callable[[dict[str, Any]], None]
    ) -> None:
        self.api, self.namespace, self.queue, self.take = api, namespace, queue, take
        self.events = 0
        self.stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{queue}")

    def start(self) -> None:
        self._thread.start()

    def stop(self, join_s: float = 0.0) -> None:
        """Ends at the next event or watch timeout (a daemon); `join_s` waits that long for it."""
        self.stopped.set()
        if join_s:
            self._thread.join(timeout=join_s)

    def _run(self) -> None:
        version: str | None = None
        while not self.stopped.is_set():
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            kwargs: dict[str, Any] = {"resource_version": version} if version else {}
            try:
                for event in stream.stream(  # type: ignore[no-untyped-call]
                    self.api.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    SHARD_ALLOCATIONS,
                    field_selector=f"metadata.name={self.queue}",
                    timeout_seconds=WATCH_TIMEOUT_S,
                    **kwargs,
                ):
                    body = event["object"]
                    if event["type"] == "ERROR":  # 410 Gone: the version was compacted, list again
                        version = None
                        break
                    version = (body.get("metadata") or {}).get("resourceVersion", version)
                    self.events += 1
                    self.take(body)
                    if self.stopped.is_set():
                        break
            except (ApiException, OSError, urllib3.exceptions.HTTPError):
                version = None  # a fresh watch delivers the current state first
                self.stopped.wait(0.5)
            finally:
                stream.stop()  # type: ignore[no-untyped-call]


class MoveWatch:
    def __init__(self, api: CustomObjectsApi, namespace: str, queue: str, t0: float) -> None:
        self.t0 = t0
        self._moves: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._watch = QueueWatch(
            api,
            namespace,
            queue,
            lambda body: self.record((body.get("status") or {}).get("migrations") or [], time.time()),
        )

    def __enter__(self) -> MoveWatch:
        self._watch.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._watch.stop()

    @property
    def events(self) -> int:
        return self._watch.events

    def record(self, migrations: Iterable[dict[str, Any]], now: float) -> None:
        with self._lock:
            for move in migrations:
                seen = self._moves.setdefault(move["id"], {"firstSeen": now - self.t0})
                seen.update(move)

    def moves(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {key: dict(value) for key, value in self._moves.items()}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 1)


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def pause_profile(moves: Iterable[dict[str, Any]]) -> dict[str, float | None]:
    """p50/p99 of the pause and its parts over Done moves: `fence` (the fence call with the settle
    and the delta import), `settle` (the source's wait for in-flight deliveries, inside fence) and
    `switch` (pause - fence: recording the switch in Kubernetes and pushing the table)."""
    done = [m for m in moves if m.get("phase") == "Done"]
    parts: dict[str, list[float]] = {
        "pause": [float(m["pauseMs"]) for m in done if "pauseMs" in m],
        "pause_fence": [float(m["fenceMs"]) for m in done if "fenceMs" in m],
        "pause_settle": [float(m["settleMs"]) for m in done if "settleMs" in m],
        "pause_switch": [
            float(m["pauseMs"]) - float(m["fenceMs"]) for m in done if "pauseMs" in m and "fenceMs" in m
        ],
    }
    out: dict[str, float | None] = {}
    for name, values in parts.items():
        out[f"{name}_p50_ms"] = median(values)
        out[f"{name}_p99_ms"] = percentile(values, 0.99)
    return out
