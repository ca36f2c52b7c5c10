"""The traffic checker finds what it claims to: lost, duplicated and reordered messages per key."""

from __future__ import annotations

import pytest

from foreshard.localcluster.traffic import Checker

pytestmark = pytest.mark.unit


def feed(checker: Checker, *payloads: str) -> Checker:
    for payload in payloads:
        checker.record(payload.encode())
    return checker


def test_a_clean_run_is_complete_and_clean() -> None:
    checker = feed(Checker({"a": [0, 1], "b:x": [0]}), "|a:0", "|b:x:0", "|a:1")
    assert checker.complete() and checker.verdict() == (0, 0, 0)


def test_loss_duplication_and_reordering_are_each_counted() -> None:
    checker = feed(Checker({"a": [0, 1, 2], "b": [0, 1]}), "|a:1", "|a:0", "|a:1", "|b:0")
    assert not checker.complete()
    lost, duplicated, reordered = checker.verdict()
    assert (lost, duplicated, reordered) == (2, 1, 1)  # a:2 and b:1 lost; a:1 twice; a out of order


def test_a_message_never_acknowledged_is_not_counted_lost() -> None:
    checker = feed(Checker({"a": [0, 2]}), "|a:0", "|a:2")  # a:1 failed to publish: a gap, not a loss
    assert checker.complete() and checker.verdict() == (0, 0, 0)


def test_messages_of_another_run_are_set_apart_not_judged() -> None:
    checker = feed(Checker({"a": [0]}, run="r2"), "r1|a:0", "r1|a:0", "r2|a:0")
    assert checker.complete() and checker.verdict() == (0, 0, 0) and checker.foreign == 2


def test_a_message_delivered_again_right_after_itself_is_a_redelivery_not_a_duplicate() -> None:
    # a broker killed before it persisted the ack of a:1 hands a:1 out again, then a:2
    checker = feed(Checker({"a": [0, 1, 2]}), "|a:0", "|a:1", "|a:1", "|a:2")
    assert checker.verdict() == (0, 0, 0) and checker.redelivered() == 1


def test_a_repeat_after_later_messages_is_a_duplicate_and_out_of_order() -> None:
    checker = feed(Checker({"a": [0, 1, 2]}), "|a:0", "|a:1", "|a:2", "|a:1")
    assert checker.verdict() == (0, 1, 1) and checker.redelivered() == 0
