"""The pod runner: the local cluster's stand-in for a kubelet, for shard pods only.

    python -m foreshard.localcluster.podrunner --kubeconfig K --workdir W \\
        --admin-token-file T --prometheus-targets DIR

Level-triggered: every pass lists the shard pods (managed-by=foreshard-operator, component=shard)
and makes the world match them, so nothing depends on having seen an event.

    scheduled pod, no broker  --> start one on loopback (ports stable per pod name)
    broker exited             --> CrashLoopBackOff, restart after 1 s, 2 s, ... 30 s
    pod being deleted         --> SIGTERM (the broker drains), then delete the pod (grace 0)
    every pass                --> status (Ready follows /readyz), endpoint annotations,
                                  Prometheus targets, recorded pids, volume provisioning

Under W/podrunner: volumes/<ns>/<claim> (a PVC's data, kept across pod re-creation),
pods/<uid> (an emptyDir, removed with its pod), logs/<ns>/<pod>.log, ports.json, brokers.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from foreshard.localcluster import volumes
from foreshard.localcluster.process import free_port, http_ok
from foreshard.localcluster.shardpods import (
    CRASH_LOOP,
    POD_SELECTOR,
    BrokerState,
    ShardPod,
    broker_flags,
    endpoint_annotations,
    pod_status_patch,
    scrape_targets,
    status_differs,
)
from foreshard_broker.testing import BrokerProcess

log = logging.getLogger("foreshard.podrunner")

TARGETS_FILE = "foreshard-brokers.json"
BACKOFF_FIRST_S, BACKOFF_MAX_S = 1.0, 30.0
BACKOFF_RESET_AFTER_S = 60.0  # a broker that ran this long starts the next crash loop at 1 s
STOP_TIMEOUT_S = 30.0
MERGE = "application/merge-patch+json"


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Slot:
    """One pod's broker, as the runner tracks it between passes."""

    pod: ShardPod
    broker: BrokerProcess | None = None
    pending: Future[BrokerProcess | None] | None = None  # a start or stop under way
    stopping: bool = False
    restarts: int = 0
    backoff_s: float = BACKOFF_FIRST_S
    retry_at: float = 0.0
    started_at: float | None = None
    last_exit: tuple[int, float] | None = None  # (code, when)
    ready: bool = False

    def state(self) -> BrokerState:
        running = self.broker is not None
        return BrokerState(
            running=running,
            ready=running and self.ready,
            restart_count=self.restarts,
            started_at=rfc3339(self.started_at) if running and self.started_at else None,
            waiting_reason=CRASH_LOOP if not running and self.last_exit else None,
            last_exit_code=self.last_exit[0] if self.last_exit else None,
            last_finished_at=rfc3339(self.last_exit[1]) if self.last_exit else None,
        )


@dataclass
class PodRunner:
    core: client.CoreV1Api
    workdir: Path
    admin_token_file: Path
    targets_dir: Path
    clock: Callable[[], float] = time.time
    slots: dict[str, Slot] = field(default_factory=dict)
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(4, "broker"))
    _written: dict[str, str] = field(default_factory=dict)
    _waiting: set[str] = field(default_factory=set)  # pods logged as waiting for a Secret

    @property
    def root(self) -> Path:
        return self.workdir / "podrunner"

    # -- one pass -------------------------------------------------------------------------

    def tick(self) -> None:
        listed = self.core.list_pod_for_all_namespaces(label_selector=POD_SELECTOR)
        pods = [ShardPod.of(p) for p in self.core.api_client.sanitize_for_serialization(listed)["items"]]
        present = {pod.key for pod in pods}
        for pod in pods:
            self._step(pod)
        for key in [k for k in self.slots if k not in present]:
            self._forget(key)  # deleted behind our back (e.g. force-deleted): stop its broker
        volumes.reconcile(self.core, self.root)
        self._publish()

    def _step(self, pod: ShardPod) -> None:
        slot = self.slots.get(pod.key)
        if slot is not None and slot.pod.uid != pod.uid and not slot.stopping:
            self._stop(slot)  # a new pod of the same name: the old one's broker goes first
        if slot is not None and slot.pending is not None and not slot.pending.done():
            return
        if slot is not None and slot.pending is not None:
            self._settle(slot)
        if pod.deleting:
            self._delete(pod, slot)
            return
        if slot is not None and slot.stopping:
            if slot.broker is None:
                self.slots.pop(pod.key)  # the old pod's broker is gone; next pass starts anew
            return
        if pod.node is None:
            return  # not scheduled yet: a kubelet only runs pods bound to it
        if slot is None:
            slot = self.slots[pod.key] = Slot(pod)
        slot.pod = pod
        self._supervise(slot)
        self._report(slot)

    def _supervise(self, slot: Slot) -> None:
        now = self.clock()
        if slot.broker is not None:
            code = slot.broker.exited()
            if code is None:
                slot.ready = http_ok(f"{slot.broker.http_url}/readyz", timeout_s=0.5)
                return
            self._crashed(slot, code, now)
        if now >= slot.retry_at and self._volumes_present(slot.pod):
            slot.pending = self.pool.submit(self._start, slot.pod)

    def _volumes_present(self, pod: ShardPod) -> bool:
        """A kubelet keeps a pod in ContainerCreating until its Secret volumes exist; so does this
        (the broker itself uses the cluster's token file, which that Secret is meant to hold)."""
        for name in pod.secrets:
            try:
                self.core.read_namespaced_secret(name, pod.namespace)
            except ApiException as error:
                if error.status != 404:
                    raise
                if pod.key not in self._waiting:
                    log.info("%s: waiting for Secret %s", pod.key, name)
                    self._waiting.add(pod.key)
                return False
        self._waiting.discard(pod.key)
        return True

    def _crashed(self, slot: Slot, code: int, now: float) -> None:
        ran = now - (slot.started_at or now)
        if ran >= BACKOFF_RESET_AFTER_S:
            slot.backoff_s = BACKOFF_FIRST_S
        log.warning("%s: broker exited with code %s; restart in %.0fs", slot.pod.key, code, slot.backoff_s)
        # A container killed by signal N exits 128+N in a kubelet's terms (SIGKILL: 137).
        code = 128 - code if code < 0 else code
        slot.broker, slot.ready, slot.last_exit = None, False, (code, now)
        slot.restarts += 1
        slot.retry_at = now + slot.backoff_s
        slot.backoff_s = min(slot.backoff_s * 2, BACKOFF_MAX_S)

    def _settle(self, slot: Slot) -> None:
        assert slot.pending is not None
        future, slot.pending = slot.pending, None
        try:
            result = future.result()
        except Exception as error:  # a broker that never listened counts as a crash
            log.warning("%s: broker failed to start: %s", slot.pod.key, error)
            self._crashed(slot, 1, self.clock())
            return
        slot.broker = result
        if result is not None:
            slot.started_at = self.clock()

    def _delete(self, pod: ShardPod, slot: Slot | None) -> None:
        if slot is not None and slot.broker is not None:
            self._stop(slot)
            return
        try:
            self.core.delete_namespaced_pod(pod.name, pod.namespace, grace_period_seconds=0)
        except ApiException as error:
            if error.status != 404:
                raise
        log.info("%s: deleted (broker stopped)", pod.key)
        if pod.claim is None:
            shutil.rmtree(self.root / "pods" / pod.uid, ignore_errors=True)
        self.slots.pop(pod.key, None)

    def _stop(self, slot: Slot) -> None:
        slot.stopping = True
        broker, slot.ready = slot.broker, False
        slot.pending = self.pool.submit(self._terminate, slot.pod, broker)

    def _forget(self, key: str) -> None:
        slot = self.slots[key]
        if slot.pending is not None and not slot.pending.done():
            return
        if slot.pending is not None:
            self._settle(slot)
        if slot.broker is not None:
            self._stop(slot)
            return
        if slot.pod.claim is None:
            shutil.rmtree(self.root / "pods" / slot.pod.uid, ignore_errors=True)
        del self.slots[key]

    # -- broker processes (in the pool: a start waits for the broker to listen) ---------------

    def _start(self, pod: ShardPod) -> BrokerProcess:
        grpc_port, http_port = self._ports(pod.key)
        data = (
            volumes.claim_dir(self.root, pod.namespace, pod.claim)
            if pod.claim
            else self.root / "pods" / pod.uid
        )
        flags = broker_flags(
            pod.args, grpc_port, http_port, str(data), pod.ordinal, str(self.admin_token_file)
        )
        broker = BrokerProcess(
            data,
            shard=pod.ordinal,
            flags=flags,
            admin_token=None,
            log_file=self.root / "logs" / pod.namespace / f"{pod.name}.log",
            env={"HOSTNAME": pod.name},
            new_session=True,
        )
        broker.start()
        pid = broker.process.pid if broker.process else None
        log.info("%s: broker started, pid %s, grpc %s", pod.key, pid, broker.endpoint)
        return broker

    @staticmethod
    def _terminate(pod: ShardPod, broker: BrokerProcess | None) -> None:
        if broker is None:
            return None
        try:
            code = broker.terminate(timeout=STOP_TIMEOUT_S)
        except Exception:  # did not drain in time: the kubelet's SIGKILL after the grace period
            broker.kill()
            code = -9
        log.info("%s: broker stopped with code %s", pod.key, code)
        return None

    _ports_lock = threading.Lock()

    def _ports(self, key: str) -> tuple[int, int]:
        """The pod name's ports, chosen once and kept, so a restarted broker keeps its endpoint."""
        with self._ports_lock:
            path = self.root / "ports.json"
            known: dict[str, list[int]] = json.loads(path.read_text()) if path.exists() else {}
            if key not in known:
                taken = {p for pair in known.values() for p in pair}
                grpc_port = free_port(None, taken)
                known[key] = [grpc_port, free_port(None, taken | {grpc_port})]
                write_atomic(path, json.dumps(known, indent=2, sort_keys=True))
            return known[key][0], known[key][1]

    # -- reporting ------------------------------------------------------------------------

    def _report(self, slot: Slot) -> None:
        pod = slot.pod
        patch = pod_status_patch(pod, slot.state(), rfc3339(self.clock()))
        if status_differs(pod.status, patch):
            self.core.patch_namespaced_pod_status(pod.name, pod.namespace, patch, _content_type=MERGE)
        if slot.broker is not None:
            wanted = endpoint_annotations(slot.broker.grpc_port, slot.broker.http_port)
            if any(pod.annotations.get(k) != v for k, v in wanted.items()):
                body = {"metadata": {"annotations": wanted}}
                self.core.patch_namespaced_pod(pod.name, pod.namespace, body, _content_type=MERGE)

    def _publish(self) -> None:
        running = [s for s in self.slots.values() if s.broker is not None]
        targets = scrape_targets((s.pod, s.broker.http_port) for s in running if s.broker)
        pids = {s.pod.key: s.broker.process.pid for s in running if s.broker and s.broker.process}
        self._write(self.targets_dir / TARGETS_FILE, json.dumps(targets, indent=2))
        self._write(self.root / "brokers.json", json.dumps(pids, indent=2, sort_keys=True))

    def _write(self, path: Path, text: str) -> None:
        if self._written.get(str(path)) != text:
            write_atomic(path, text)
            self._written[str(path)] = text

    # -- shutdown -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every broker gracefully (in parallel) and wait for them."""
        for slot in self.slots.values():
            if slot.pending is not None:
                self._settle_quietly(slot)
        stops = [self.pool.submit(self._terminate, s.pod, s.broker) for s in self.slots.values() if s.broker]
        for stop in stops:
            stop.result()
        for slot in self.slots.values():
            slot.broker = None
        self._publish()
        self.pool.shutdown(wait=True)

    def _settle_quietly(self, slot: Slot) -> None:
        assert slot.pending is not None
        try:
            result = slot.pending.result(timeout=STOP_TIMEOUT_S + 5)
        except Exception:
            result = None
        if result is not None:
            slot.broker = result
        slot.pending = None


def write_atomic(path: Path, text: str) -> None:
    """tmp + rename: a reader (Prometheus, `cluster down`) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(text)
    staged.replace(path)


def run(runner: PodRunner, stop: threading.Event, interval_s: float = 0.5) -> None:
    while not stop.is_set():
        try:
            runner.tick()
        except Exception:  # the API server may be briefly away; the next pass retries
            log.exception("pass failed")
        stop.wait(interval_s)
    runner.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="podrunner", description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--admin-token-file", required=True, type=Path)
    parser.add_argument("--prometheus-targets", required=True, type=Path)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    api = config.new_client_from_config(str(args.kubeconfig))  # type: ignore[no-untyped-call]
    runner = PodRunner(client.CoreV1Api(api), args.workdir, args.admin_token_file, args.prometheus_targets)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("pod runner started")
    run(runner, stop, args.interval)
    log.info("pod runner stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
