"""Generated from proto/foreshard/v1 by foreshard_broker.protogen; do not edit."""
