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
