"""The fleet console process: wires config, database, MQTT, ingest, repository, reconciler, API.

In-process use (tests, the simulator, the demo)::

    from edgeops.fleet.config import config_from_dict
    from edgeops.fleet.console import FleetConsole

    console = FleetConsole(config_from_dict({...})).start()
    ...
    console.stop()

Threads: paho's network thread (routes messages; never blocks on the database), the ingest
writer (batches), a small repository-server pool, the reconciler loop (runs only while this
replica holds the leader lease), and the aiohttp thread. Every replica ingests, serves the
repository and answers the API; one drives rollouts.

The reconciler runs every ``rollouts.reconcile_interval_s``, and sooner when ingest stored an
event that can end a device's assignment (a wave may now pass or halt), but never more often
than every ``MIN_TICK_GAP_S``: a wave's last report is acted on within a fraction of a second
rather than up to a whole interval later.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from edgeops.errors import FleetError
from edgeops.fleet.commands import CommandSender
from edgeops.fleet.config import FleetConfig
from edgeops.fleet.db import Database
from edgeops.fleet.ingest import Ingestor
from edgeops.fleet.leader import LeaderLease
from edgeops.fleet import partitions
from edgeops.fleet.rollouts.reconciler import Reconciler
from edgeops.fleet.signing import CommandSigner

log = logging.getLogger("edgeops.fleet.console")

MIN_TICK_GAP_S = 0.2  # reconciler ticks woken by device reports come at most this often


class FleetConsole:
    """One console replica. ``start()`` returns once MQTT is connected and the API listens."""

    def __init__(
        self,
        config: FleetConfig,
        signer: CommandSigner | None = None,
        db: Database | None = None,
        mqtt: bool = True,
        api: bool = True,
        reconcile: bool = True,
    ):
        self.config = config
        self.db = db or Database.from_config(config)
        self.repo_dir = config.path(config.repository.dir)
        self.keys_dir = config.path(config.repository.keys_dir)
        self._signer = signer
        self._use_mqtt = mqtt
        self._use_api = api
        self._use_reconciler = reconcile
        self.ingest = Ingestor(self.db, config.ingest, on_batch=self._after_ingest)
        self._final_seen = 0
        self.mqtt = None
        self._ingest_mqtt = None
        self.repo_server = None
        self.capture = None  # CaptureStore once started with MQTT (fleet/capture_store.py)
        self.api = None
        self.reconciler: Reconciler | None = None
        self.leader = LeaderLease(self.db, config.rollouts.leader_lock_id)
        self.refresher = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0

    # -- status ----------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        """True while this replica drives rollouts."""
        return self.leader.held

    @property
    def mqtt_connected(self) -> bool:
        """True while connected to the broker."""
        return bool(self.mqtt and self.mqtt.connected.is_set())

    @property
    def subscription_problem(self) -> str | None:
        """Why this replica's subscriptions are not receiving (a probe did not come back), or None."""
        for m in (self.mqtt, self._ingest_mqtt):
            problem = m.subscription_problem if m is not None else None
            if problem:
                return problem
        return None

    @property
    def api_url(self) -> str | None:
        """Base URL of the HTTP API (None when not serving)."""
        return self.api.url if self.api else None

    # -- lifecycle -------------------------------------------------------------------------
    def _load_signer(self) -> CommandSigner:
        from edgeops.fleet.signing import KeyringCommandSigner

        try:
            return KeyringCommandSigner(self.keys_dir)
        except Exception as e:
            raise FleetError(f"{self.keys_dir}: cannot load the command signing key ({e}); create keys with `edgeops fleet init` or `edgeops keys init --keys {self.keys_dir}`") from e

    def start(self) -> "FleetConsole":
        """Create the schema if needed and start every component."""
        from edgeops.fleet.repo_server import MqttRepositoryServer, RepositoryRefresher

        if self._use_mqtt:  # before anything starts: a config that lets devices take our session is refused
            from edgeops.fleet.broker_identity import check_console_identity

            check_console_identity(self.config.broker)
        from edgeops.fleet.capture_store import capture_table

        # the capture index in the same (locked) transaction: CaptureStore then finds it made
        self.db.create_all(extra_tables=[capture_table(self.db)] if self._use_mqtt else [])
        self.ingest.start()
        sender = None
        if self._use_mqtt:
            from edgeops.fleet.mqtt import ConsoleMqtt

            signer = self._signer or self._load_signer()
            from edgeops.fleet.capture import load_or_create_key
            from edgeops.fleet.capture_store import CaptureStore, default_capture_dir
            from edgeops.fleet.registry import device_ids, device_known

            capture_dir = default_capture_dir(self.config)
            self.capture = CaptureStore(self.db, capture_dir, load_or_create_key(capture_dir), lambda topic, payload: self.mqtt.publish(topic, payload, qos=1),
                                        known_device=lambda device_id: device_known(self.db, device_id))

            # known_devices: the registry names the exact state topics where retained state does not reach wildcards
            # ingest_under_lease: on a broker without $share, replicas (shared_group set) leave device
            # messages to one ingest session that the leader holds (_follow_lease)
            self.mqtt = ConsoleMqtt(
                self.config.broker, self.ingest.submit, self._on_fetch, known_devices=lambda: device_ids(self.db),
                ingest_under_lease=bool(self.config.broker.shared_group), on_capture=self.capture.handle,
            )
            self.repo_server = MqttRepositoryServer(self.repo_dir, lambda topic, payload: self.mqtt.publish(topic, payload, qos=1))
            self.mqtt.start()
            sender = CommandSender(signer, lambda topic, payload: self.mqtt.publish(topic, payload, qos=1))
        self.reconciler = Reconciler(self.db, self.config.rollouts, sender, self.repo_dir)
        if (self.keys_dir / "keyring.json").exists():
            self.refresher = RepositoryRefresher(self.repo_dir, self.keys_dir)
        if self._use_api:
            from edgeops.fleet.api import ApiServer

            self.api = ApiServer(self, self.config.api.host, self.config.api.port).start()
        if self._use_reconciler:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="edgeops-reconciler", daemon=True)
            self._thread.start()
        log.info("fleet console started (db %s, broker %s, api %s)", self.db.dialect, self.config.broker.url if self._use_mqtt else "-", self.api_url or "-")
        return self

    @property
    def ingest_session(self):
        """The leader's ingest connection (brokers without $share), else None."""
        return self._ingest_mqtt

    def _follow_lease(self, leader: bool) -> None:
        """Brokers without shared subscriptions: the leader holds the one ingest session.

        Its client id (``broker.ingest_client_id``) is the same on every replica, so the session,
        with what the broker queued for it while no replica held it, passes to the next leader.
        A replica that lost the lease closes it at once (two holders would take it from each
        other)."""
        if self.mqtt is None or self.mqtt.carries_ingest:
            return
        if leader and self._ingest_mqtt is None:
            from edgeops.fleet.mqtt import ConsoleMqtt

            cfg = self.config.broker.model_copy(update={"client_id": self.config.broker.ingest_client_id, "shared_group": None, "protocol": self.mqtt.protocol})
            try:
                self._ingest_mqtt = ConsoleMqtt(cfg, self.ingest.submit, self._on_fetch, subscribe_state=False, on_capture=self.capture.handle if self.capture else None).start()
            except FleetError as e:  # tried again on the next tick; the reconciler goes on meanwhile
                log.error("leader: cannot open the ingest session %s: %s", cfg.client_id, e)
                return
            log.info("leader: holding the ingest session %s", cfg.client_id)
        elif not leader and self._ingest_mqtt is not None:
            self._ingest_mqtt.stop()
            self._ingest_mqtt = None
            log.info("not the leader: ingest session closed")

    def _on_fetch(self, topic: str, payload: bytes) -> None:
        if self.repo_server is not None:
            self.repo_server.submit(topic, payload)

    def wake(self) -> None:
        """Ask the reconciler to run now (after an operator action)."""
        self._wake.set()

    def _after_ingest(self) -> None:
        """Ingest writer hook: new final reports may decide a wave, so reconcile soon."""
        n = self.ingest.final_reports
        if n != self._final_seen:
            self._final_seen = n
            self._wake.set()

    def _loop(self) -> None:
        interval = self.config.rollouts.reconcile_interval_s
        gap = min(MIN_TICK_GAP_S, interval)
        last_refresh = 0.0
        last_prune = time.monotonic()
        last_tick = 0.0
        while not self._stop.is_set():
            wait = last_tick + gap - time.monotonic()
            if wait > 0 and self._stop.wait(wait):  # a wake-up right after a tick waits out the gap
                break
            last_tick = time.monotonic()
            try:
                leader = self.leader.acquire()
                self._follow_lease(leader)
                if leader:
                    self.reconciler.tick()
                    self.ticks += 1
                    now = time.monotonic()
                    if self.refresher and now - last_refresh >= self.config.repository.refresh_check_s:
                        last_refresh = now
                        self.refresher.check()
                    if now - last_prune >= 3600:
                        last_prune = now
                        self.prune_telemetry()
                        self.prune_history()
                        if self.capture is not None:  # uploads a device never finished (fleet/capture_store.py)
                            self.capture.prune_partial()
            except Exception:
                log.exception("reconciler loop iteration failed")
            self._wake.wait(interval)
            self._wake.clear()

    def reconcile_once(self) -> None:
        """Run one reconciler tick now, in the caller's thread (tests, tools)."""
        if self.reconciler is None:
            self.reconciler = Reconciler(self.db, self.config.rollouts, None, self.repo_dir)
        self.reconciler.tick()

    def prune_telemetry(self) -> int:
        """Telemetry retention (``ingest.telemetry_retention_s``), run hourly by the leader.

        A partitioned table (PostgreSQL, fleet/partitions.py): the days ahead are created and the
        partitions wholly older than the retention dropped; returns the partitions dropped. A
        plain table (SQLite): older rows are deleted; returns the rows deleted."""
        cutoff = time.time() - self.config.ingest.telemetry_retention_s
        if self.db.telemetry_partitioned():
            with self.db.begin() as conn:
                name = self.db.t.telemetry.name
                created = partitions.ensure_partitions(conn, self.db.schema, name)
                dropped = partitions.drop_expired(conn, self.db.schema, name, cutoff)
            if created or dropped:
                log.info("telemetry partitions: created %s, dropped %s", created or "-", [p.name for p in dropped] or "-")
            return len(dropped)
        t = self.db.t.telemetry
        with self.db.begin() as conn:
            res = conn.execute(t.delete().where(t.c.received_at < cutoff))
        return res.rowcount or 0

    def prune_history(self) -> dict[str, int]:
        """Retention of the other tables that grow with every device message, run hourly by the
        leader: drift sketches as telemetry (``ingest.telemetry_retention_s``: a wave's drift reads
        minutes of them), device events after ``ingest.event_retention_s``. Returns rows deleted."""
        now = time.time()
        t = self.db.t
        with self.db.begin() as conn:
            sketches = conn.execute(t.sketches.delete().where(t.sketches.c.received_at < now - self.config.ingest.telemetry_retention_s)).rowcount or 0
            events = conn.execute(t.events.delete().where(t.events.c.received_at < now - self.config.ingest.event_retention_s)).rowcount or 0
        return {"sketches": sketches, "events": events}

    def stop(self, drain: bool = True) -> None:
        """Stop every component; with ``drain`` the ingest queue is stored first."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(30)
            self._thread = None
        if self.api:
            self.api.stop()
            self.api = None
        if self._ingest_mqtt:
            self._ingest_mqtt.stop()
            self._ingest_mqtt = None
        if self.mqtt:
            self.mqtt.stop()
        if drain:
            self.ingest.flush(30)
        self.ingest.stop()
        if self.repo_server:
            self.repo_server.close()
        self.leader.release()
        self.db.dispose()

    def __enter__(self) -> "FleetConsole":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def count_rows(db: Database, table: str) -> int:
    """Rows in one of the console's tables (tools, tests)."""
    t = getattr(db.t, table)
    with db.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()


def repo_dir_of(config: FleetConfig) -> Path:
    """The repository folder of a config."""
    return config.path(config.repository.dir)
