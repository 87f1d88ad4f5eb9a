"""The one allocator of per-device command sequence numbers, on SQLite and PostgreSQL.

Replay protection rests on it: a device refuses a command whose seq is not above the last one
it accepted, so two commands for one device must never carry the same number.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from edgeops.fleet.command_seq import allocate_seq, allocate_seqs
from edgeops.fleet.registry import register_devices

ROUNDS = 40  # allocations per thread


def test_concurrent_allocations_never_give_the_same_number(db):
    """Two threads, each on its own connection, allocate for the same devices at once."""
    register_devices(db, [{"id": "cam-1"}, {"id": "cam-2"}])
    barrier = threading.Barrier(2)

    def worker(_: int) -> list[dict[str, int]]:
        barrier.wait(30)
        out = []
        for _ in range(ROUNDS):
            with db.begin() as conn:
                out.append(allocate_seqs(db, conn, ["cam-2", "cam-1"]))
        return out

    with ThreadPoolExecutor(2) as pool:  # a worker's exception is raised here by map
        got = list(pool.map(worker, range(2)))
    for device in ("cam-1", "cam-2"):
        numbers = [a[device] for part in got for a in part]
        assert sorted(numbers) == list(range(1, 2 * ROUNDS + 1)), device  # every number once, none skipped
        for part in got:  # and each thread saw its own numbers rise
            mine = [a[device] for a in part]
            assert mine == sorted(mine)
    with db.connect() as conn:
        assert set(conn.execute(sa.select(db.t.devices.c.cmd_seq)).scalars()) == {2 * ROUNDS}


def test_allocation_starts_above_what_the_device_reported(db):
    register_devices(db, [{"id": "cam-1"}, {"id": "cam-2"}])
    d = db.t.devices
    with db.begin() as conn:
        conn.execute(d.update().where(d.c.id == "cam-2").values(reported_cmd_seq=7))  # e.g. a restored console database
        assert allocate_seqs(db, conn, ["cam-1", "cam-2", "not-enrolled"]) == {"cam-1": 1, "cam-2": 8}
        assert allocate_seq(db, conn, "cam-2") == 9 and allocate_seq(db, conn, "not-enrolled") is None


def test_a_rolled_back_transaction_gives_its_numbers_back(db):
    register_devices(db, [{"id": "cam-1"}])

    class Boom(Exception):
        pass

    try:
        with db.begin() as conn:
            assert allocate_seq(db, conn, "cam-1") == 1
            raise Boom  # the command was never recorded, so its number was never used
    except Boom:
        pass
    with db.begin() as conn:
        assert allocate_seq(db, conn, "cam-1") == 1
