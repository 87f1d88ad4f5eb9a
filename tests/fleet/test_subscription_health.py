"""The subscription probe's definition of "not receiving" (a fake clock; the real brokers are
in test_broker_matrix.py)."""

from __future__ import annotations

from edgeops.fleet.subscription_health import SubscriptionProbe, is_probe_topic, probe_topic
from edgeops.protocol import parse_topic, valid_device_id


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_probe_topics_are_no_device_topics():
    topic = probe_topic("console-a")
    assert is_probe_topic(topic) and topic != probe_topic("console-b")
    assert parse_topic(topic) is None and not valid_device_id(topic.split("/")[2])
    assert not is_probe_topic("edgeops/v1/dev-1/telemetry")


def test_not_receiving_only_when_a_probe_is_late():
    clock = Clock()
    p = SubscriptionProbe("c", timeout_s=10, clock=clock)
    assert p.problem() is None  # nothing sent yet
    first = p.next_payload()
    clock.t += 9
    assert p.problem() is None  # not late yet
    clock.t += 2
    assert "subscriptions not receiving" in p.problem() and "11s ago" in p.problem()
    second = p.next_payload()
    assert p.received(p.topic, second)  # a later probe back clears the earlier one too
    assert p.problem() is None and p.back == 1
    assert p.received(p.topic, first) and p.back == 1  # ours, already cleared


def test_foreign_and_malformed_probes_are_not_ours():
    clock = Clock()
    p, other = SubscriptionProbe("c", timeout_s=1, clock=clock), SubscriptionProbe("c", timeout_s=1, clock=clock)
    p.next_payload()
    assert not p.received(p.topic, other.next_payload())  # an earlier process's probe, same topic
    assert not p.received(p.topic, b"\xff garbage") and not p.received(probe_topic("x"), b"probe a 1")
    clock.t += 2
    assert p.problem() is not None
    p.reset()  # a disconnect: the session's state is reported on its own
    assert p.problem() is None


def test_state_catch_up_chunks():
    from edgeops.fleet.retained_state import chunks, probe_state_topic

    assert [len(c) for c in chunks([str(i) for i in range(1201)], 500)] == [500, 500, 201]
    assert probe_state_topic(probe_topic("c")) == probe_topic("c")[: -len("telemetry")] + "state"
