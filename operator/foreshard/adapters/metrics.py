"""The operator's own Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RECONCILES = Counter(
    "foreshard_operator_reconciles_total", "Reconcile passes, by queue and result.", ["queue", "result"]
)
DESIRED_SHARDS = Gauge("foreshard_operator_desired_shards", "Shard count the operator asks for.", ["queue"])
READY_SHARDS = Gauge("foreshard_operator_ready_shards", "Shard pods that are ready.", ["queue"])
FORECAST_PEAK = Gauge(
    "foreshard_operator_forecast_peak_messages_per_second",
    "Planning-quantile peak arrival rate the current plan is sized for.",
    ["queue"],
)
PLANNED_SHARDS = Gauge(
    "foreshard_operator_planned_shards", "Shard count the current plan asks for.", ["queue"]
)
FORECAST_READY = Gauge(
    "foreshard_operator_forecast_ready", "1 when the plan stands on a trusted forecast, else 0.", ["queue"]
)
