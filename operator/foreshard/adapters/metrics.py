"""The operator's own Prometheus metrics, labelled by the queue's namespace and name (two queues of
one name in different namespaces are two series).

The alerts and the dashboard in helm/foreshard/files/ are written against these names (and the
broker's); tests/component/test_monitoring_queries.py runs every expression they contain.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "foreshard_operator_reconciles_total",
    "Reconcile passes, by queue and result.",
    ["namespace", "queue", "result"],
)
DESIRED_SHARDS = Gauge(
    "foreshard_operator_desired_shards", "Shard count the operator asks for.", ["namespace", "queue"]
)
READY_SHARDS = Gauge("foreshard_operator_ready_shards", "Shard pods that are ready.", ["namespace", "queue"])
FORECAST_PEAK = Gauge(
    "foreshard_operator_forecast_peak_messages_per_second",
    "Planning-quantile peak arrival rate the current plan is sized for.",
    ["namespace", "queue"],
)
PLANNED_SHARDS = Gauge(
    "foreshard_operator_planned_shards", "Shard count the current plan asks for.", ["namespace", "queue"]
)
FORECAST_READY = Gauge(
    "foreshard_operator_forecast_ready",
    "1 when the plan stands on a trusted forecast, else 0.",
    ["namespace", "queue"],
)
FORECAST_RATE = Gauge(
    "foreshard_operator_forecast_messages_per_second",
    "Forecast arrival rate of the whole queue for the current step: bound is lower, point or upper "
    "(the planning interval's quantiles).",
    ["namespace", "queue", "bound"],
)
SHARD_CAPACITY = Gauge(
    "foreshard_operator_shard_capacity_messages_per_second",
    "Messages per second one shard is planned to carry (spec.capacity, or the learnt value).",
    ["namespace", "queue"],
)
ROUTING_EPOCH = Gauge(
    "foreshard_operator_routing_epoch", "Routing epoch recorded in status.routing.", ["namespace", "queue"]
)
MIGRATIONS_IN_FLIGHT = Gauge(
    "foreshard_operator_migrations_in_flight",
    "Slot and key moves in status.migrations.",
    ["namespace", "queue"],
)
MIGRATION_PHASE_AGE = Gauge(
    "foreshard_operator_migration_phase_age_seconds",
    "Seconds the oldest in-flight move has spent in its current phase (0 with none in flight).",
    ["namespace", "queue"],
)
MOVES = Counter(
    "foreshard_operator_moves_total",
    "Moves finished, by result (done, rolled_back).",
    ["namespace", "queue", "result"],
)
MOVE_PAUSE = Histogram(
    "foreshard_operator_move_pause_seconds",
    "Pause the keys of one moved slot or pin saw, from fence to resume.",
    ["namespace", "queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
# Consumer-side forecasts, for KEDA's Prometheus scaler or an HPA on external metrics.
PREDICTED_ARRIVALS = Gauge(
    "foreshard_predicted_arrivals",
    "Planning-quantile peak arrival rate (messages/s) over the short horizon, as the group must consume it.",
    ["namespace", "queue", "group"],
)
PREDICTED_BACKLOG = Gauge(
    "foreshard_predicted_backlog",
    "Messages the group is predicted to have unacknowledged at now + leadTime if its consumers stay as is.",
    ["namespace", "queue", "group"],
)
PREDICTED_ACKS = Gauge(
    "foreshard_predicted_acks",
    "Forecast acknowledgement rate (messages/s) of the group over the short horizon.",
    ["namespace", "queue", "group"],
)
