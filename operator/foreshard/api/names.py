"""Names the operator and the cluster share: API group, resources, labels, annotations, ports."""

from __future__ import annotations

from foreshard import __version__

GROUP = "foreshard.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
SHARD_ALLOCATIONS = "shardallocations"
ORDER_PARAM_FORECASTS = "orderparamforecasts"

FIELD_MANAGER = "foreshard-operator"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_QUEUE = "foreshard.io/queue"

ANNOTATION_APPROVE_PLAN = "foreshard.io/approve-plan"

BROKER_GRPC_PORT = 7000
BROKER_METRICS_PORT = 9100

# No registry publishes Foreshard's images: `make images` builds these names, tagged with the
# package version, into the local container store. A cluster that pulls from a registry sets the
# chart's image values and each ShardAllocation's spec.template.image.
OPERATOR_IMAGE_REPOSITORY = "localhost/foreshard-operator"
BROKER_IMAGE_REPOSITORY = "localhost/foreshard-broker"
DEFAULT_BROKER_IMAGE = f"{BROKER_IMAGE_REPOSITORY}:{__version__}"

# Where a shard pod's broker can be reached when cluster DNS cannot (the local cluster's pod
# runner writes these on each pod it runs): "host:port" of gRPC, and the metrics base URL.
ANNOTATION_BROKER_ENDPOINT = "foreshard.io/broker-endpoint"
ANNOTATION_BROKER_METRICS = "foreshard.io/broker-metrics"

# The brokers' Admin API bearer token: a Secret of this name (key `token`) in each queue's
# namespace, mounted read-only into every shard pod at ADMIN_TOKEN_DIR; the operator reads the same
# token from the file its own Deployment mounts (--admin-token-file).
ADMIN_TOKEN_SECRET = "foreshard-broker-admin"
ADMIN_TOKEN_KEY = "token"
ADMIN_TOKEN_DIR = "/etc/foreshard/admin"
ADMIN_TOKEN_FILE = f"{ADMIN_TOKEN_DIR}/{ADMIN_TOKEN_KEY}"
