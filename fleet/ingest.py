"""Ingest: device state, events and telemetry from MQTT into the registry, in batches.

The MQTT thread only calls :meth:`Ingestor.submit` (split the topic, put on a bounded queue);
one writer thread drains the queue and stores a whole batch per transaction with
``executemany``. That keeps the MQTT loop fast at 10,000 devices and lets SQLite keep up.

Per batch:

- validate each message with :mod:`edgeops.protocol`; malformed messages (values outside the
  schema's bounds included), bodies whose ``device_id`` disagrees with the topic, and messages
  from devices that are not enrolled are counted and dropped (never raised);
- events and telemetry are stored with ``received_at``, the console's clock when the message
  arrived (:meth:`Ingestor.submit`): gates and /metrics select by it. The device's own
  timestamps are kept as data; one that is off the receive clock (:func:`clock_skew`) is
  counted, per kind and per device (``device_clock``);
- state: the last message per device wins (the broker delivers one topic in order);
- events and telemetry: ``INSERT .. ON CONFLICT DO NOTHING RETURNING`` on (device_id, seq), so
  QoS 1 redeliveries and replays from a device's spool are counted as duplicates and dropped;
- new events move rollout assignments forward (:mod:`edgeops.fleet.rollouts.progress`);
- last seen and health are updated for every device heard from.

A batch the database refuses is stored again message by message, each in a savepoint
(``process(items, isolate=True)``): a message the database refuses is dropped and counted by
reason (``db_rejected``), the others are stored. Transient errors (connection cut, database
restarting, deadlock) retry the whole batch until the database answers (each counted in
``db_errors``), acknowledging nothing meanwhile; other failures retry ``db_retries`` times, then
the batch is dropped.

When the queue is full, :meth:`submit` blocks: the MQTT client stops acknowledging, and the
broker holds the QoS 1 messages, so a burst is slowed down rather than lost.

Batches: the writer takes what is queued, and while messages keep arriving it waits a little
for more (``GATHER_POLL_S`` at a time, ``GATHER_MAX_S`` in all) before it writes: a batch
costs a dozen statements whatever its size, so at 10,000 devices a few large batches are much
cheaper than many small ones. It stops waiting as soon as a poll brings nothing new (a broker
that holds back unacknowledged messages, or a quiet fleet), so latency grows by at most one
poll when there is nothing to gather.

:attr:`Ingestor.final_reports` counts stored events that can end a device's assignment
(committed, failed, rolled back, ...): the console wakes its reconciler on them instead of
waiting for the next interval.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable

import sqlalchemy as sa

from edgeops.fleet.acks import acknowledge
from edgeops.fleet.commands import SELF_TEST_COMMAND_PREFIX
from edgeops.fleet.config import IngestConfig
from edgeops.fleet.db import Database, dumps
from edgeops.fleet.rollouts import progress
from edgeops.protocol import DeviceEvent, DeviceState, EventKind, TelemetryBatch, parse_message, parse_topic

log = logging.getLogger("edgeops.fleet.ingest")

KINDS = {"state": DeviceState, "events": DeviceEvent, "telemetry": TelemetryBatch}
_UNHEALTHY_EVENTS = {EventKind.ROLLED_BACK, EventKind.PROBATION_FAILED, EventKind.SELF_TEST_FAILED, EventKind.INSTALL_FAILED}
_HEALTHY_EVENTS = {EventKind.COMMITTED, EventKind.PROBATION_PASSED}
GATHER_MAX_S = 0.05  # longest wait for more messages before writing a batch
GATHER_POLL_S = 0.005  # ... in polls of this length; a poll that brings nothing ends the wait


class IngestStats:
    """Thread-safe counters (exported to /metrics and the API)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received: Counter[str] = Counter()
        self.stored: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()
        self.unknown_device: Counter[str] = Counter()
        self.clock_skew: Counter[str] = Counter()  # stored messages whose device time is off (clock_skew())
        self.db_rejected: Counter[tuple[str, str]] = Counter()  # (kind, reason): messages the database refused
        self.db_errors = 0
        self.batches = 0

    def add(self, field: str, kind: str, n: int = 1) -> None:
        """Add ``n`` to counter ``field`` for message kind ``kind``."""
        if n:
            with self._lock:
                getattr(self, field)[kind] += n

    def add_rejected(self, kind: str, reason: str, n: int = 1) -> None:
        """Count ``n`` messages of ``kind`` the database refused, by reason (see ``REFUSAL_REASONS``)."""
        with self._lock:
            self.db_rejected[kind, reason] += n

    def snapshot(self) -> dict:
        """A copy of all counters (``db_rejected``: kind -> reason -> n)."""
        with self._lock:
            rejected: dict[str, dict[str, int]] = {}
            for (kind, reason), n in self.db_rejected.items():
                rejected.setdefault(kind, {})[reason] = n
            return {
                "received": dict(self.received),
                "stored": dict(self.stored),
                "duplicates": dict(self.duplicates),
                "malformed": dict(self.malformed),
                "unknown_device": dict(self.unknown_device),
                "clock_skew": dict(self.clock_skew),
                "db_rejected": rejected,
                "db_errors": self.db_errors,
                "batches": self.batches,
            }


CLOCK_AHEAD_S = 300.0  # a device timestamp this far ahead of the console's receive clock is skew
CLOCK_BEHIND_S = 7 * 86400.0  # ... or this far behind it (longer than a spool holds a message)
REFUSAL_REASONS = ("out_of_range", "integrity", "refused")


def clock_skew(kind: str, msg, received_at: float) -> float | None:
    """Seconds the device's own clock is off, judged from one message; None when it looks sane.

    The console places messages on its receive clock and keeps the device's timestamps as data.
    A message cannot be made after it arrived, so a device time more than ``CLOCK_AHEAD_S`` ahead
    of ``received_at`` is a clock ahead; a time behind it may be a spool replay after an outage,
    so only more than ``CLOCK_BEHIND_S`` counts. A telemetry interval that ends before it starts
    (the clock stepped back) counts too.
    """
    ts = msg.ts_end if kind == "telemetry" else msg.ts
    off = ts - received_at
    if off > CLOCK_AHEAD_S or off < -CLOCK_BEHIND_S or (kind == "telemetry" and msg.ts_start > msg.ts_end):
        return off
    return None


def _transient(e: BaseException) -> bool:
    # the database or the connection failed, not the message: retry the batch, drop nothing
    return isinstance(e, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError, sa.exc.TimeoutError))


def _refusal_reason(e: BaseException) -> str:
    """One of REFUSAL_REASONS for an error the database raised for one message's data."""
    orig = getattr(e, "orig", None) or e.__cause__ or e
    if isinstance(e, (OverflowError, sa.exc.DataError)) or isinstance(orig, OverflowError):
        return "out_of_range"
    if isinstance(e, sa.exc.IntegrityError):
        return "integrity"
    return "refused"


def p95_from_histogram(bounds: list[float], counts: list[int]) -> float | None:
    """Upper bound of the bucket holding the 95th percentile (None when empty or inconsistent)."""
    return quantile_from_histogram(bounds, counts, 0.95)


def quantile_from_histogram(bounds: list[float], counts: list[int], q: float) -> float | None:
    """Upper bound of the bucket holding quantile ``q`` (None when empty or inconsistent)."""
    total = sum(counts)
    if not total or len(counts) not in (len(bounds), len(bounds) + 1):
        return None
    need = q * total
    acc = 0
    for i, c in enumerate(counts):
        acc += c
        if acc >= need:
            return float(bounds[i]) if i < len(bounds) else float(bounds[-1]) if bounds else None
    return None


class Ingestor:
    """Queue + writer thread that stores device messages in batches."""

    def __init__(self, db: Database, config: IngestConfig | None = None, stats: IngestStats | None = None, on_batch: Callable[[], None] | None = None):
        self.db = db
        self.config = config or IngestConfig()
        self.stats = stats or IngestStats()
        self.on_batch = on_batch
        self._queue: queue.Queue = queue.Queue(maxsize=self.config.queue_max)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._known: set[str] = set()
        self._known_loaded = 0.0
        self._negative: dict[str, float] = {}
        self._pending = 0
        self._pending_lock = threading.Condition()
        self.final_reports = 0  # stored events that can end an assignment (see module doc)
        self._state_stmts: tuple | None = None  # _state_statements()

    # -- producer side (MQTT thread) ------------------------------------------------------
    def submit(self, topic: str, payload: bytes, ack: Callable[[], None] | None = None) -> None:
        """Queue one message (blocks when the queue is full: back-pressure, no loss).

        ``ack`` is called once the message is stored (or dropped as malformed/unknown): the
        console acknowledges QoS 1 messages to the broker only then, so a crash loses nothing
        the broker will not deliver again.
        """
        parsed = parse_topic(topic)
        if parsed is None or parsed[1] not in KINDS:
            self.stats.add("malformed", "topic")
            if ack:
                ack()
            return
        self.stats.add("received", parsed[1])
        with self._pending_lock:
            self._pending += 1
        self._queue.put((parsed[0], parsed[1], payload, time.time(), ack))

    # -- writer thread ---------------------------------------------------------------------
    def start(self) -> "Ingestor":
        """Start the writer thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="edgeops-ingest", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Drain what is queued and stop the writer thread."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
            self._thread = None

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything submitted so far is stored; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._pending_lock:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._pending_lock.wait(min(left, 0.1))
        return True

    @property
    def queue_depth(self) -> int:
        """Messages waiting for the writer."""
        return self._queue.qsize()

    def _run(self) -> None:
        batch_size = self.config.batch_size
        while True:
            items = []
            try:
                items.append(self._queue.get(timeout=self.config.flush_interval_s))
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            self._gather(items, batch_size)
            # The first attempt stores the batch in one go; when the database refuses it, the
            # next attempts store each message in a savepoint of its own, so one message it
            # refuses is dropped and counted and never costs the others (issue 13).
            # A transient error (the connection was cut, the database restarts, a deadlock) is
            # retried until the database answers: nothing is acknowledged meanwhile, so the
            # queue fills, submit() blocks and the broker holds the rest. Only while stopping,
            # and for other errors, do the retries run out (db_retries) and the batch drop.
            isolate, failures, waits = False, 0, 0
            while failures <= self.config.db_retries:
                try:
                    self.process(items, isolate=isolate)
                    break
                except Exception as e:  # never let one bad batch kill ingest
                    if not isolate and not _transient(e):
                        log.info("ingest batch of %d messages refused (%s: %s); storing its messages one by one", len(items), type(e).__name__, e)
                        isolate = True
                        continue
                    with self.stats._lock:
                        self.stats.db_errors += 1
                    if _transient(e) and not self._stop.is_set():
                        waits += 1
                        log.warning("ingest batch of %d messages: database unavailable (%s), retry %d", len(items), str(getattr(e, "orig", e)).strip().splitlines()[0][:200], waits)
                        time.sleep(min(5.0, 0.5 * 2 ** min(waits - 1, 4)))
                        continue
                    failures += 1
                    log.exception("ingest batch of %d messages failed (attempt %d)", len(items), failures)
                    if failures <= self.config.db_retries and not self._stop.is_set():
                        time.sleep(min(5.0, 0.5 * 2 ** (failures - 1)))
            try:
                # after the commit, all at once: one PUBACK packet per connection (fleet/acks.py)
                acknowledge(item[4] for item in items)
            except Exception:
                log.exception("acknowledging messages failed")
            finally:
                with self._pending_lock:
                    self._pending -= len(items)
                    self._pending_lock.notify_all()
            if self.on_batch:
                try:
                    self.on_batch()
                except Exception:
                    log.exception("on_batch hook failed")

    def _gather(self, items: list, batch_size: int) -> None:
        """Add queued messages to ``items``; while they keep coming, wait a little for more (module doc)."""
        deadline = time.monotonic() + GATHER_MAX_S
        polled = False
        while True:
            before = len(items)
            while len(items) < batch_size:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if len(items) >= batch_size or (polled and len(items) == before):
                return  # full, or nothing arrived during a poll: write what we have
            if self._stop.is_set() or time.monotonic() >= deadline:
                return
            time.sleep(GATHER_POLL_S)
            polled = True

    # -- one batch -------------------------------------------------------------------------
    def _refresh_known(self, conn, wanted: set[str]) -> None:
        now = time.monotonic()
        if now - self._known_loaded > 10.0:
            self._known = {r[0] for r in conn.execute(sa.select(self.db.t.devices.c.id))}
            self._known_loaded = now
            self._negative = {k: v for k, v in self._negative.items() if v > now}
        # devices enrolled since the last full load: look the missing ones up once
        missing = [d for d in wanted - self._known if self._negative.get(d, 0) <= now]
        for i in range(0, len(missing), 500):
            chunk = missing[i : i + 500]
            found = {r[0] for r in conn.execute(sa.select(self.db.t.devices.c.id).where(self.db.t.devices.c.id.in_(chunk)))}
            self._known |= found
            for d in set(chunk) - found:
                self._negative[d] = now + 1.0  # bounds look-ups for a spamming unknown id to 1/s

    def process(self, items: list[tuple], isolate: bool = False) -> None:
        """Validate, de-duplicate and store one batch of (device, kind, payload, received_at[, ack]).

        ``received_at`` is the console's clock when the message arrived: stored with events and
        telemetry, it is the time the gates and /metrics select by. With ``isolate`` each message
        is stored in a savepoint of its own, so a message the database refuses is dropped and
        counted (``db_rejected`` by reason) while the rest of the batch is stored; a transient
        database error (connection, lock) still fails the whole attempt, to be retried.
        """
        db, t = self.db, self.db.t
        msgs: list[tuple[str, object, float]] = []  # (kind, message, received_at)
        last_state: dict[str, int] = {}
        for device, kind, payload, received_at, *_ in items:
            msg = parse_message(KINDS[kind], payload)
            if msg is None or msg.device_id != device:
                # a body that does not validate (bounds included), or claims another device than its topic
                self.stats.add("malformed", kind)
                continue
            if kind == "state":
                last_state[device] = len(msgs)  # arrival order per topic is publish order: last wins
            msgs.append((kind, msg, received_at))
        superseded = {i for i, (kind, m, _) in enumerate(msgs) if kind == "state" and last_state[m.device_id] != i}
        msgs = [m for i, m in enumerate(msgs) if i not in superseded]
        if not msgs:
            return
        tally: Counter[tuple[str, str]] = Counter()  # (stats field, kind) -> n, added once committed
        rejected: Counter[tuple[str, str]] = Counter()  # (kind, reason) -> n
        final_reports = 0
        with db.begin() as conn:
            self._refresh_known(conn, {m.device_id for _, m, _ in msgs})
            # rows this batch must write (state, events); last seen and health skip locked rows
            self._lock_devices(conn, {m.device_id for kind, m, _ in msgs if kind != "telemetry"} & self._known)
            if self.config.auto_register:
                new = [m for kind, m, _ in msgs if kind == "state" and m.device_id not in self._known]
                for group in ([[s] for s in new] if isolate else [new]):
                    if self._isolated(conn, isolate, lambda: self._auto_register(conn, group), "state", rejected):
                        self._known |= {s.device_id for s in group}
            known = self._known
            for kind, m, _ in msgs:
                if m.device_id not in known:
                    tally["unknown_device", kind] += 1
            msgs = [x for x in msgs if x[1].device_id in known]
            seen: dict[str, float] = {}
            health: dict[str, str] = {}
            skew: dict[str, tuple[int, float, float]] = {}  # device -> (messages, last skew s, at)
            # (no group at all when every message was from a device not enrolled: a fleet coming up)
            for group in ([[x] for x in msgs] if isolate else [msgs] if msgs else []):
                part_tally: Counter[tuple[str, str]] = Counter()
                part_seen: dict[str, float] = {}
                part_health: dict[str, str] = {}
                finals = [0]

                def store(group=group, part_tally=part_tally, part_seen=part_seen, part_health=part_health, finals=finals) -> None:
                    finals[0] = self._store(conn, group, part_tally, part_seen, part_health)

                if not self._isolated(conn, isolate, store, group[0][0], rejected):
                    continue
                tally.update(part_tally)
                final_reports += finals[0]
                for d, ts in part_seen.items():
                    seen[d] = max(seen.get(d, 0.0), ts)
                health.update(part_health)
                for kind, m, received_at in group:
                    off = clock_skew(kind, m, received_at)
                    if off is not None:
                        tally["clock_skew", kind] += 1
                        n, _, _ = skew.get(m.device_id, (0, 0.0, 0.0))
                        skew[m.device_id] = (n + 1, off, received_at)
            if (seen or health) and db.dialect == "postgresql":
                self._touch_devices_pg(conn, seen, health)
            elif seen or health:
                # one statement for both: sorted ids keep the row-lock order stable across replicas
                rows = [{"id": d, "last_seen": seen.get(d), "health": health.get(d)} for d in sorted(set(seen) | set(health))]
                full = [r for r in rows if r["last_seen"] is not None and r["health"] is not None]
                only_seen = [{"id": r["id"], "last_seen": r["last_seen"]} for r in rows if r["health"] is None]
                only_health = [{"id": r["id"], "health": r["health"]} for r in rows if r["last_seen"] is None]
                db.bulk_update(conn, t.devices, "id", full)
                db.bulk_update(conn, t.devices, "id", only_seen)
                db.bulk_update(conn, t.devices, "id", only_health)
            if skew:
                db.add_clock_skew(conn, [{"device_id": d, "skewed_messages": n, "last_skew_s": off, "last_skewed_at": at} for d, (n, off, at) in sorted(skew.items())])
        for (field, kind), n in tally.items():
            self.stats.add(field, kind, n)
        for (kind, reason), n in rejected.items():
            self.stats.add_rejected(kind, reason, n)
        self.final_reports += final_reports
        with self.stats._lock:
            self.stats.batches += 1

    def _lock_devices(self, conn, ids: set[str]) -> None:
        """PostgreSQL: lock the device rows the batch writes (state, events) in id order first.

        Every replica receives every state message, and events of one device reach any of them,
        so concurrent batches update overlapping device rows in several statements; without one
        lock order two or three replicas deadlocked (seen with 3 replicas, PostgreSQL aborting
        one batch after its 1 s ``deadlock_timeout``). The command seq allocator locks in the
        same order (fleet/command_seq.py). Telemetry alone takes no lock here: see
        :meth:`_touch_devices_pg`."""
        if self.db.dialect != "postgresql" or not ids:
            return
        d = self.db.t.devices
        ordered = sorted(ids)
        for i in range(0, len(ordered), 1000):
            conn.execute(sa.select(d.c.id).where(d.c.id.in_(ordered[i : i + 1000])).order_by(d.c.id).with_for_update()).all()

    def _touch_devices_pg(self, conn, seen: dict[str, float], health: dict[str, str]) -> None:
        """Last seen and health of the batch's devices, skipping rows another transaction holds.

        With shared subscriptions a device's telemetry batches reach every replica in turn, so
        every replica's batch touches nearly every device row: waiting for those row locks (held
        until the other batch commits) would serialize the replicas' writers. Both
        values are refreshed by the device's next message, so a row another replica is writing
        at this instant is left to it (its batch is as recent), and last seen never moves back
        (GREATEST). Rows this batch locked itself (:meth:`_lock_devices`) are updated as usual."""
        d = self.db.t.devices
        ids = sorted(set(seen) | set(health))
        table = self.db._qualified(d)  # noqa: SLF001 - the schema-qualified name, as bulk_update uses
        conn.exec_driver_sql(
            f"UPDATE {table} AS t SET last_seen = GREATEST(COALESCE(t.last_seen, 0), COALESCE(u.last_seen, t.last_seen, 0)), "
            "health = COALESCE(u.health, t.health) "
            "FROM unnest(%s::text[], %s::double precision[], %s::text[]) AS u(id, last_seen, health) "
            f"WHERE t.id = u.id AND t.id IN (SELECT id FROM {table} WHERE id = ANY(%s::text[]) FOR UPDATE SKIP LOCKED)",
            (ids, [seen.get(i) for i in ids], [health.get(i) for i in ids], ids),
        )

    def _isolated(self, conn, isolate: bool, work: Callable[[], None], kind: str, rejected: Counter) -> bool:
        """Run ``work``; with ``isolate``, in a savepoint: a refusal of this message's data rolls it
        back and is counted by reason (False), a transient error is raised for the whole batch."""
        if not isolate:
            work()
            return True
        try:
            with conn.begin_nested():
                work()
            return True
        except Exception as e:
            if _transient(e):
                raise
            reason = _refusal_reason(e)
            log.warning("ingest: the database refused one %s message (%s: %s); dropped, the rest of the batch is stored", kind, reason, e)
            rejected[kind, reason] += 1
            return False

    def _store(self, conn, msgs: list[tuple[str, object, float]], tally: Counter, seen: dict[str, float], health: dict[str, str]) -> int:
        """Store validated messages of known devices; returns how many stored events can end an assignment."""
        states = [(m, r) for kind, m, r in msgs if kind == "state"]
        events = [(m, r) for kind, m, r in msgs if kind == "events"]
        telemetry = [(m, r) for kind, m, r in msgs if kind == "telemetry"]
        self._store_states(conn, [m for m, _ in states], seen, tally)
        finals = self._store_events(conn, events, seen, health, tally)
        self._store_telemetry(conn, telemetry, seen, health, tally)
        return finals

    def _auto_register(self, conn, states: list[DeviceState]) -> None:
        if not states:
            return
        now = time.time()
        rows = [
            {"id": s.device_id, "tags": dumps(s.tags), "profile": s.profile, "enrolled_at": now, "state": "unknown", "online": False, "health": "unknown", "agent_version": "", "reported_cmd_seq": 0, "cmd_seq": 0}
            for s in states
        ]
        self.db.upsert(conn, self.db.t.devices, rows, ["id"], [])

    def _state_statements(self) -> tuple:
        """The UPDATEs of device state (online; offline; offline and not older), built once."""
        if self._state_stmts is None:
            t = self.db.t.devices
            values = {
                "online": sa.bindparam("b_online"),
                "state": sa.bindparam("b_state"),
                "profile": sa.func.coalesce(sa.bindparam("b_profile", type_=sa.String), t.c.profile),
                "active_name": sa.bindparam("b_an"),
                "active_version": sa.bindparam("b_av"),
                "active_release": sa.bindparam("b_ar"),
                "active_sha256": sa.bindparam("b_as"),
                "previous_name": sa.bindparam("b_pn"),
                "previous_version": sa.bindparam("b_pv"),
                "pending_name": sa.bindparam("b_qn"),
                "pending_version": sa.bindparam("b_qv"),
                "agent_version": sa.bindparam("b_agent"),
                "reported_cmd_seq": sa.bindparam("b_seq"),
                "state_ts": sa.bindparam("b_ts"),
            }
            self._state_stmts = (
                t.update().where(t.c.id == sa.bindparam("b_id")).values(**values),
                t.update().where(t.c.id == sa.bindparam("b_id")).values(online=False),
                t.update().where(t.c.id == sa.bindparam("b_id"), sa.or_(t.c.state_ts.is_(None), t.c.state_ts <= sa.bindparam("b_ts"))).values(**values),
            )
        return self._state_stmts

    def _store_states(self, conn, states: list[DeviceState], seen: dict[str, float], tally: Counter) -> None:
        if not states:
            return
        full, offline = [], []
        for s in states:
            row = {
                "b_id": s.device_id,
                "b_online": s.online,
                "b_state": s.state[:64],
                "b_profile": s.profile,
                "b_an": s.active.name if s.active else None,
                "b_av": s.active.version if s.active else None,
                "b_ar": s.active.release if s.active else None,
                "b_as": s.active.sha256 if s.active else None,
                "b_pn": s.previous.name if s.previous else None,
                "b_pv": s.previous.version if s.previous else None,
                "b_qn": s.pending.name if s.pending else None,
                "b_qv": s.pending.version if s.pending else None,
                "b_agent": s.agent_version[:64],
                "b_seq": s.last_command_seq,
                "b_ts": s.ts,
            }
            (full if s.online else offline).append(row)
            if s.online:
                seen[s.device_id] = max(seen.get(s.device_id, 0.0), time.time())
        full_stmt, offline_stmt, newer_stmt = self._state_statements()
        if full:
            conn.execute(full_stmt, full)
        if offline:
            # The last will is composed when the device connects, so its versions may be stale:
            # always take online=false, the rest only when it is not older than what we have.
            conn.execute(offline_stmt, [{"b_id": r["b_id"]} for r in offline])
            conn.execute(newer_stmt, offline)
        progress.apply_states(self.db, conn, states)
        tally["stored", "state"] += len(states)

    def _store_events(self, conn, received: list[tuple[DeviceEvent, float]], seen: dict[str, float], health: dict[str, str], tally: Counter) -> int:
        if not received:
            return 0
        events = [e for e, _ in received]
        arrived = {(e.device_id, e.seq): at for e, at in received}
        rows = [
            {
                "device_id": e.device_id,
                "seq": e.seq,
                "kind": e.kind.value,
                "ts": e.ts,
                "received_at": at,
                "target_name": e.target.name if e.target else None,
                "target_version": e.target.version if e.target else None,
                "command_id": e.command_id,
                "detail": e.detail[:4000],
                "gates": dumps([g.to_dict() for g in e.gates]),
            }
            for e, at in received
        ]
        # one batch may hold the same (device, seq) twice (a redelivery racing the original)
        unique = list({(r["device_id"], r["seq"]): r for r in rows}.values())
        inserted = set(self.db.insert_ignore_returning(conn, self.db.t.events, unique, ["device_id", "seq"]))
        tally["duplicates", "events"] += len(events) - len(inserted)
        tally["stored", "events"] += len(inserted)
        new = sorted((e for e in {(e.device_id, e.seq): e for e in events}.values() if (e.device_id, e.seq) in inserted), key=lambda e: (e.device_id, e.seq))
        for e in new:
            seen[e.device_id] = max(seen.get(e.device_id, 0.0), arrived[e.device_id, e.seq])
            if e.command_id and e.command_id.startswith(SELF_TEST_COMMAND_PREFIX):
                pass  # a hil self-test of a candidate bundle says nothing about the device's health
            elif e.kind in _UNHEALTHY_EVENTS:
                health[e.device_id] = "unhealthy"
            elif e.kind in _HEALTHY_EVENTS:
                health[e.device_id] = "healthy"
        progress.apply_events(self.db, conn, new, max(arrived.values()))
        return sum(1 for e in new if e.kind in progress.FINAL_EVENTS)

    def _store_telemetry(self, conn, received: list[tuple[TelemetryBatch, float]], seen: dict[str, float], health: dict[str, str], tally: Counter) -> None:
        if not received:
            return
        rows = {}
        for b, received_at in received:
            p95 = b.latency_p95_ms
            if p95 is None and b.latency_counts:
                p95 = p95_from_histogram(b.latency_buckets_ms, b.latency_counts)
            p50 = b.latency_p50_ms
            if p50 is None and b.latency_counts:
                p50 = quantile_from_histogram(b.latency_buckets_ms, b.latency_counts, 0.5)
            rows[(b.device_id, b.seq)] = {
                "device_id": b.device_id,
                "seq": b.seq,
                "ts_start": b.ts_start,
                "ts_end": b.ts_end,
                "version_name": b.active.name if b.active else None,
                "version_version": b.active.version if b.active else None,
                "state": b.state[:64],
                "inference_count": b.inference_count,
                "error_count": b.error_count,
                "nan_count": b.nan_count,
                "p95_ms": p95,
                "p50_ms": p50,
                "agreement": b.agreement,
                "dropped_batches": b.dropped_batches,
                "received_at": received_at,
            }
        inserted = set(self.db.insert_ignore_returning(conn, self.db.t.telemetry, list(rows.values()), ["device_id", "seq"]))
        tally["duplicates", "telemetry"] += len(received) - len(inserted)
        tally["stored", "telemetry"] += len(inserted)
        # drift sketches of the new batches only (a redelivery's were stored with it)
        sketches = {
            (b.device_id, b.seq): {"device_id": b.device_id, "seq": b.seq, "version_name": b.active.name, "version_version": b.active.version,
                                   "rows": max(st.rows for st in b.sketches.values()), "received_at": received_at,
                                   "body": dumps({k: st.to_dict() for k, st in b.sketches.items()})}
            for b, received_at in received
            if b.sketches and b.active is not None and (b.device_id, b.seq) in inserted
        }
        if sketches:
            self.db.insert_ignore_returning(conn, self.db.t.sketches, list(sketches.values()), ["device_id", "seq"])
        for key in sorted(inserted):
            r = rows[key]
            seen[r["device_id"]] = max(seen.get(r["device_id"], 0.0), r["received_at"])
            if r["inference_count"]:
                health[r["device_id"]] = "unhealthy" if (r["nan_count"] or r["error_count"]) else "healthy"
