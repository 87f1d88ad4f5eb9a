"""The SQLite outbox: gap-free sequence numbers, persistence, the size bound and its drop policy."""

from __future__ import annotations

import json

from edgeops.agent.spool import EVENT, TELEMETRY, Spool


def _msg(kind: str, size: int = 100):
    return lambda seq, dropped: json.dumps({"kind": kind, "seq": seq, "dropped": dropped, "pad": "x" * size}).encode()


def test_sequence_numbers_are_gap_free_per_kind_and_survive_reopen(tmp_path):
    s = Spool(tmp_path / "s.sqlite", 1 << 20)
    assert [s.append(TELEMETRY, "t", _msg("t")) for _ in range(3)] == [0, 1, 2]
    assert s.append(EVENT, "e", _msg("e")) == 0
    s.close()
    s = Spool(tmp_path / "s.sqlite", 1 << 20)
    assert s.append(TELEMETRY, "t", _msg("t")) == 3
    assert [m.seq for m in s.pending() if m.kind == TELEMETRY] == [0, 1, 2, 3]


def test_ack_deletes_only_that_message(tmp_path):
    s = Spool(tmp_path / "s.sqlite", 1 << 20)
    for _ in range(3):
        s.append(TELEMETRY, "t", _msg("t"))
    first = s.pending()[0]
    s.ack(first.id)
    assert [m.seq for m in s.pending()] == [1, 2]
    assert [m.seq for m in s.pending(exclude={s.pending()[0].id})] == [2]


def test_bound_drops_oldest_telemetry_first_and_reports_it(tmp_path):
    s = Spool(tmp_path / "s.sqlite", 2000)
    s.append(EVENT, "e", _msg("e", 100))
    for _ in range(30):
        s.append(TELEMETRY, "t", _msg("t", 100))
    assert s.size_bytes() <= 2000
    left = s.pending(limit=100)
    tele = [m.seq for m in left if m.kind == TELEMETRY]
    assert tele == list(range(tele[0], 30)), "the newest batches are kept, contiguous"
    assert [m.kind for m in left].count(EVENT) == 1, "events go after telemetry"
    dropped = s.dropped(TELEMETRY)
    assert dropped == tele[0] > 0
    # The next message that reports drops gets the count and resets it in the same transaction.
    seq = s.append(TELEMETRY, "t", _msg("t", 10), report_drops=True)
    body = json.loads([m for m in s.pending(limit=100) if m.seq == seq and m.kind == TELEMETRY][0].payload)
    assert body["dropped"][TELEMETRY] >= dropped
    # Only what this very append had to drop to fit is left to report next time.
    assert s.dropped(TELEMETRY) <= 1
    for m in s.pending(limit=100):
        s.ack(m.id)
    s.append(TELEMETRY, "t", _msg("t", 10), report_drops=True)
    assert s.dropped(TELEMETRY) == 0 and s.count() == 1


def test_events_are_dropped_when_only_events_remain(tmp_path):
    s = Spool(tmp_path / "s.sqlite", 1000)
    for _ in range(20):
        s.append(EVENT, "e", _msg("e", 100))
    assert s.size_bytes() <= 1000 and s.dropped(EVENT) > 0
