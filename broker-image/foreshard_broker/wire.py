"""The generated protobuf modules, typed as Any.

The generated code is committed and excluded from type checking; importing it through importlib
keeps mypy from analysing it while every other module stays strictly typed.
"""

from __future__ import annotations

import importlib
from typing import Any

pb: Any = importlib.import_module("foreshard_broker.proto.broker_pb2")
pb_grpc: Any = importlib.import_module("foreshard_broker.proto.broker_pb2_grpc")

ERROR_TRAILER = "foreshard-error-bin"
"""Trailing-metadata key holding a serialized ErrorDetail on failed calls."""
