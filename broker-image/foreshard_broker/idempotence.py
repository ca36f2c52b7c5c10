"""Producer idempotence, after Kafka's KIP-98: producer id + epoch, per-shard sequences, a window.

PURE (no I/O, no clock), shared by the broker (server/state.py, server/broker.py) and the SDK's
in-memory twin, so both answer a batch the same way. The broker keeps, per producer id, its epoch
and its last `WINDOW` stored batches. A batch with producer id P, epoch E and sequence S is judged:

    no history for P            -> new: store it (any S >= 1 may start)
    E <  P's epoch              -> PRODUCER_FENCED: a newer producer with this id has published here
    E >  P's epoch              -> new: a restarted producer; its history starts again
    S == last + 1               -> new: store it
    S >  last + 1               -> OUT_OF_ORDER_SEQUENCE: batches last+1..S-1 were never stored
    S <= last, in the window    -> duplicate of that batch, if it has the same message count and
                                   payload bytes (else OUT_OF_ORDER_SEQUENCE: a different batch
                                   reuses the sequence); answered with the original's refusals
    S <= last, not in window    -> OUT_OF_ORDER_SEQUENCE: cannot tell whether it was stored

So "duplicate" is only ever answered for a batch this shard stored, never for a restarted
producer (new epoch) and never for a batch after a gap (a pipelined batch refused while the next
one went on: the next one is refused too, and both are stored, in order, when resent). A batch of
which nothing was stored does not consume its sequence. Sequences count per producer id *and
shard*, like Kafka's per partition: the SDK gives each lane one producer id per shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WINDOW = 16  # batches remembered per producer id: a client may pipeline up to this many
MAX_SEQUENCE = 1 << 62  # sequences and epochs stay below this (no wrap-around, room to grow)
EPOCH_AHEAD_NS = 86_400 * 10**9  # an epoch (a start time in ns) may be this far ahead of the broker
UNKNOWN = -1  # count / bytes of a batch recorded by an older broker version: matches any resend
OUT_OF_ORDER = "OUT_OF_ORDER_SEQUENCE"
FENCED = "PRODUCER_FENCED"


class SequenceError(Exception):
    """A batch the broker refuses for its (epoch, sequence); `reason` is OUT_OF_ORDER or FENCED."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class SentBatch:
    """A stored batch as a resend of it is answered: where it went and what it refused."""

    sequence: int
    first_offset: int
    size: int  # messages in the request, refused ones included
    payload_bytes: int  # payload bytes of the request, refused ones included
    refused: tuple[int, ...] = ()

    def same_request(self, size: int, payload_bytes: int) -> bool:
        return (self.size in (size, UNKNOWN)) and (self.payload_bytes in (payload_bytes, UNKNOWN))


@dataclass
class ProducerHistory:
    """One producer id's epoch and its last stored batches, ascending by sequence."""

    epoch: int
    batches: list[SentBatch] = field(default_factory=list)

    @property
    def last(self) -> int:
        return self.batches[-1].sequence if self.batches else 0

    def find(self, sequence: int) -> SentBatch | None:
        return next((batch for batch in self.batches if batch.sequence == sequence), None)


def judge(
    history: ProducerHistory | None, producer: str, epoch: int, sequence: int, size: int, payload_bytes: int
) -> SentBatch | None:
    """None when the batch is new (store it), the original when it is a resend; else raises."""
    if history is None or epoch > history.epoch:
        return None
    if epoch < history.epoch:
        raise SequenceError(
            FENCED,
            f"producer {producer!r} epoch {epoch} is fenced: the same id published here with the newer "
            f"epoch {history.epoch}; a restarted or second producer took over this id",
        )
    last = history.last
    if sequence == last + 1:
        return None
    if sequence > last:
        raise SequenceError(
            OUT_OF_ORDER,
            f"producer {producer!r} sent sequence {sequence}, but the next one this shard expects is "
            f"{last + 1}: batches {last + 1}..{sequence - 1} were never stored here; resend them first",
        )
    original = history.find(sequence)
    if original is None:
        remembered = [batch.sequence for batch in history.batches]
        raise SequenceError(
            OUT_OF_ORDER,
            f"producer {producer!r} resent sequence {sequence}, which is not among the batches this "
            f"shard remembers ({remembered[0]}..{last}); whether it was stored cannot be told",
        )
    if not original.same_request(size, payload_bytes):
        raise SequenceError(
            OUT_OF_ORDER,
            f"producer {producer!r} sequence {sequence} was stored with {original.size} messages "
            f"({original.payload_bytes} payload bytes); this batch has {size} ({payload_bytes}): "
            "a different batch reuses the sequence",
        )
    return original


def remember(history: ProducerHistory | None, epoch: int, batch: SentBatch) -> ProducerHistory:
    """The history after `batch` was stored (or merged in) under `epoch`: never moves back."""
    if history is None or epoch > history.epoch:
        return ProducerHistory(epoch, [batch])
    if epoch < history.epoch:
        return history
    batches = history.batches
    if not batches or batch.sequence > batches[-1].sequence:  # the publish path: one append
        batches.append(batch)
        if len(batches) > WINDOW:
            del batches[0]
        return history
    kept = [known for known in batches if known.sequence != batch.sequence]
    kept.append(batch)
    kept.sort(key=lambda known: known.sequence)
    history.batches = kept[-WINDOW:]
    return history


def merge(local: ProducerHistory | None, incoming: ProducerHistory) -> ProducerHistory | None:
    """Another shard's history of the same producer id: the newer epoch wins, the same epoch unites."""
    merged = local
    for batch in incoming.batches:
        merged = remember(merged, incoming.epoch, batch)
    return merged


def snapshot(history: ProducerHistory) -> ProducerHistory:
    """A copy that later publishes do not change (checkpoints are encoded after they are taken)."""
    return ProducerHistory(history.epoch, list(history.batches))
