"""Domain errors of the broker. `service.py` maps each class to one gRPC status code (one table)."""

from __future__ import annotations


class BrokerError(Exception):
    """Base class; the message is a sentence a client author can act on."""


class InvalidInput(BrokerError):
    pass


class NotFound(BrokerError):
    pass


class Overloaded(BrokerError):
    pass


class Draining(BrokerError):
    pass


class Unavailable(BrokerError):
    pass


class Conflict(BrokerError):
    """The request contradicts state another caller holds (e.g. a selection fenced by another lease)."""


class SequenceRefused(BrokerError):
    """A batch refused for its producer epoch or sequence (idempotence.OUT_OF_ORDER / FENCED)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Moved(BrokerError):
    def __init__(self, slot: int, key: str, owner: int, endpoint: str, epoch: int) -> None:
        super().__init__(f"slot {slot} (key {key!r}) is owned by shard {owner} at epoch {epoch}")
        self.slot, self.key, self.owner, self.endpoint, self.epoch = slot, key, owner, endpoint, epoch


class Paused(BrokerError):
    def __init__(self, slot: int, key: str, retry_after_ms: int, epoch: int) -> None:
        super().__init__(f"slot {slot} (key {key!r}) is paused for a migration; retry in {retry_after_ms} ms")
        self.slot, self.key, self.retry_after_ms, self.epoch = slot, key, retry_after_ms, epoch


class StaleEpoch(BrokerError):
    def __init__(self, current: int, offered: int, reason: str) -> None:
        super().__init__(f"routing epoch {offered} refused: {reason} (current epoch {current})")
        self.current, self.offered = current, offered
