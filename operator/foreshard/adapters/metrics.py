"""The operator's own Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RECONCILES = Counter(
    "foreshard_operator_reconciles_total", "Reconcile passes, by queue and result.", ["queue", "result"]
)
DESIRED_SHARDS = Gauge("foreshard_operator_desired_shards", "Shard count the operator asks for.", ["queue"])
READY_SHARDS = Gauge("foreshard_operator_ready_shards", "Shard pods that are ready.", ["queue"])
