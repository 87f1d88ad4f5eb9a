"""Build, sign and publish console -> device commands (assign, rollback, self_test).

The reconciler writes each command's id, per-device sequence number and expiry to the
database *before* publishing, and marks it sent only after the broker acknowledged it (QoS 1
PUBACK). A console that dies in between publishes the very same command again on restart
(same id, same seq, same expiry: Ed25519 signatures are deterministic, so the same bytes),
which the device either obeys or refuses as a replay; it is never assigned twice.

One-off ``self_test`` commands (``POST /api/v1/devices/{id}/self-test``, used by ``edgeops hil
run --device``) go through :func:`order_self_test`: the same signer, per-device ``seq`` counter
and expiry as assignments, recorded in the ``commands`` table and published QoS 1 at once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa

from edgeops.errors import FleetError
from edgeops.fleet.clock import Clock, resolve, system_clock
from edgeops.fleet.command_seq import allocate_seq
from edgeops.fleet.db import Database
from edgeops.fleet.signing import CommandSigner
from edgeops.protocol import MAX_SELF_TEST_RUNS, Command, VersionRef, cmd_topic, valid_device_id

if TYPE_CHECKING:
    from edgeops.fleet.rollouts.records import Rollout
    from edgeops.fleet.rollouts.resolution import ProfileTarget

# Command ids of hil self-test orders start with this (ingest: their events say nothing about device health).
SELF_TEST_COMMAND_PREFIX = "selftest-"

log = logging.getLogger("edgeops.fleet.commands")

# publish(topic, payload) -> a handle with wait(timeout) -> bool (True once acknowledged)
PublishFn = Callable[[str, bytes], "PublishHandle"]


class PublishHandle:
    """What a publish function returns; ``wait`` is True once the broker acknowledged."""

    def wait(self, timeout: float) -> bool:  # pragma: no cover - protocol
        raise NotImplementedError


@dataclass
class CommandSpec:
    """One command to publish (built from an assignment row)."""

    command: Command

    @property
    def topic(self) -> str:
        """Where it goes."""
        return cmd_topic(self.command.device_id)


def assign_command(device_id: str, command_id: str, seq: int, expires: float, rollout: Rollout, target: ProfileTarget | None = None) -> Command:
    """The assign command of a rollout for one device (target exactly as signed in TUF):
    ``target``, the one pinned for the device's profile, default the rollout's primary one."""
    t = target or rollout.targets.primary()
    return Command(
        device_id=device_id,
        command_id=command_id,
        seq=seq,
        expires=expires,
        kind="assign",
        target_name=t.name,
        target_sha256=t.sha256,
        target_length=t.length,
        bundle=VersionRef(name=rollout.bundle_name, version=rollout.bundle_version, release=t.release, sha256=t.sha256),
        rollout_id=rollout.id,
        reason=f"rollout {rollout.id}",
    )


def rollback_command(device_id: str, command_id: str, seq: int, expires: float, rollout: Rollout, from_name: str | None, from_version: str | None, previous_target=None, reason: str = "") -> Command:
    """Order a device back to the version it ran before the rollout (``previous_target``: its TUF target, when published)."""
    return Command(
        device_id=device_id,
        command_id=command_id,
        seq=seq,
        expires=expires,
        kind="rollback",
        target_name=previous_target.name if previous_target else None,
        target_sha256=previous_target.sha256 if previous_target else None,
        target_length=previous_target.length if previous_target else None,
        bundle=VersionRef(name=from_name, version=from_version, release=previous_target.release if previous_target else 0, sha256=previous_target.sha256 if previous_target else None)
        if from_name and from_version
        else None,
        rollout_id=rollout.id,
        reason=reason or f"rollout {rollout.id} aborted",
    )


def self_test_command(device_id: str, command_id: str, seq: int, expires: float, target, name: str, version: str, runs: int | None = None) -> Command:
    """Order a device to fetch, verify and self-test a published version without activating it.

    ``target`` is the :class:`~edgeops.trust.targets.TargetRecord` the console signed; the agent
    refuses the command unless name, sha256 and length equal the TUF-verified target.
    """
    return Command(
        device_id=device_id,
        command_id=command_id,
        seq=seq,
        expires=expires,
        kind="self_test",
        target_name=target.name,
        target_sha256=target.sha256,
        target_length=target.length,
        bundle=VersionRef(name=name, version=version, release=target.release, sha256=target.sha256),
        reason=f"self-test of {name}@{version}",
        runs=runs,
    )


class UnpublishedBundleError(FleetError):
    """The bundle a one-off command names is not a target of the console's repository."""


class DeviceOfflineError(FleetError):
    """The device is not connected, so a command that waits for its answer would only wait."""


class CommandConflictError(FleetError):
    """The command cannot be ordered in the device's current situation (profile, queued commands)."""


class BrokerUnavailableError(FleetError):
    """The console cannot reach devices right now (no MQTT connection)."""


class CommandNotAcknowledgedError(BrokerUnavailableError):
    """The broker did not acknowledge a published command in time."""


class InvalidOrderError(FleetError):
    """A field of a command order (``bundle``, ``runs``) is malformed; the message names it."""


def parse_bundle_ref(text: object) -> tuple[str, str]:
    """``NAME@VERSION`` -> (name, version); InvalidOrderError naming the ``bundle`` field otherwise."""
    if not isinstance(text, str):
        raise InvalidOrderError(f"bundle: expected a string NAME@VERSION, got {type(text).__name__}")
    name, sep, version = text.partition("@")
    if not sep or not name or not version or "/" in name or "/" in version or "@" in version:
        raise InvalidOrderError(f"bundle: {text!r} should be NAME@VERSION as published (e.g. detector@1.4.0)")
    return name, version


def check_runs(runs: object) -> int | None:
    """A ``runs`` value from a request: None, or an integer in 1..MAX_SELF_TEST_RUNS."""
    if runs is None:
        return None
    if isinstance(runs, float) and runs.is_integer():  # JSON has one number type: 300.0 is the integer 300
        runs = int(runs)
    if isinstance(runs, bool) or not isinstance(runs, int) or not 1 <= runs <= MAX_SELF_TEST_RUNS:
        raise InvalidOrderError(f"runs: {runs!r} must be an integer from 1 to {MAX_SELF_TEST_RUNS}")
    return runs


def order_self_test(db: Database, repo_dir, sender: "CommandSender | None", device_id: str, bundle: str, runs: int | None = None, ttl_s: float = 86400.0, actor: str = "api", now: float | None = None, connected: bool = True, clock: Clock = system_clock) -> dict:
    """Sign, record and publish a ``self_test`` command of ``bundle`` (NAME@VERSION) for one device.

    Raises (each message names the device or bundle): UnknownDeviceError (not enrolled),
    UnpublishedBundleError (not in the repository), DeviceOfflineError, CommandConflictError
    (the bundle is built for another profile than the device reports, or a rollout command
    for the device is decided but not yet published: a higher ``seq`` going out first would
    make the device refuse that one as a replay), CommandNotAcknowledgedError (the broker did
    not acknowledge; the command is recorded as ``unacknowledged``), BrokerUnavailableError
    when the console runs without MQTT, and FleetError for a malformed ``bundle`` or ``runs``. Returns ``{"command_id", "device", "bundle", ...}``.
    ``now`` (default ``clock()``) stamps and expires the command; ``clock`` stamps ``sent_at``.
    """
    from edgeops.fleet.registry import UnknownDeviceError
    from edgeops.fleet.rollouts.status import LIVE_ROLLOUT, AssignmentStatus as A
    from edgeops.fleet.targets import UnknownBundleError, find_targets

    name, version = parse_bundle_ref(bundle)
    runs = check_runs(runs)
    d, a, r, c = db.t.devices, db.t.assignments, db.t.rollouts, db.t.commands
    if not valid_device_id(device_id):
        raise UnknownDeviceError(f"device {device_id!r}: not a valid device id, so not enrolled")
    with db.connect() as conn:
        if conn.execute(sa.select(d.c.id).where(d.c.id == device_id)).first() is None:
            raise UnknownDeviceError(f"device {device_id}: not enrolled (enrol it with `edgeops fleet enroll {device_id}`)")
    try:
        targets = find_targets(repo_dir, name, version)  # by profile: the device's is picked below
    except UnknownBundleError as e:
        raise UnpublishedBundleError(str(e)) from e
    if sender is None:
        raise BrokerUnavailableError("this console runs without MQTT, so it cannot send commands to devices")
    if not connected:
        raise BrokerUnavailableError("the console is not connected to the broker right now; retry when it has reconnected (see /healthz)")
    now = resolve(now, clock)
    command_id = f"{SELF_TEST_COMMAND_PREFIX}{device_id}-{uuid.uuid4().hex[:10]}"
    with db.begin() as conn:
        # the row lock (PostgreSQL; SQLite's write transaction locks the file) keeps the checks
        # below true until the command is recorded
        row = conn.execute(sa.select(d.c.online, d.c.profile, d.c.last_seen).where(d.c.id == device_id).with_for_update()).first()
        if row is None:
            raise UnknownDeviceError(f"device {device_id}: not enrolled (enrol it with `edgeops fleet enroll {device_id}`)")
        if not row.online:
            seen = f"last seen {now - row.last_seen:.0f}s ago" if row.last_seen else "never seen"
            raise DeviceOfflineError(f"device {device_id} is offline ({seen}); a self-test needs the device connected to the broker")
        # the device's profile's target; a target signed without a profile serves any; a device
        # that has not reported its profile gets the only one (the agent checks it)
        target = targets.get(row.profile or "") or targets.get("") or (next(iter(targets.values())) if not row.profile and len(targets) == 1 else None)
        if target is None:
            built = ", ".join(repr(p) for p in sorted(targets))
            runs_on = repr(row.profile) if row.profile else "a profile it has not reported yet"
            raise CommandConflictError(f"bundle {name}@{version} is built for profile {built}; device {device_id} runs {runs_on}")
        queued = conn.execute(
            sa.select(a.c.rollout_id)
            .join(r, r.c.id == a.c.rollout_id)
            .where(
                a.c.device_id == device_id,
                r.c.status.in_([s.value for s in LIVE_ROLLOUT]),
                sa.or_(a.c.status == A.PENDING.value, sa.and_(a.c.status == A.REVERTING.value, a.c.rollback_sent_at.is_(None))),
            )
            .limit(1)
        ).first()
        if queued is not None:
            raise CommandConflictError(f"device {device_id} has a command of rollout {queued.rollout_id} decided but not yet published; retry in a few seconds")
        seq = allocate_seq(db, conn, device_id)
        expires = now + ttl_s
        conn.execute(
            c.insert().values(
                command_id=command_id, device_id=device_id, kind="self_test", seq=seq, expires=expires, bundle_name=name, bundle_version=version,
                target_name=target.name, runs=runs, status="recorded", actor=actor[:64], created_at=now,
            )
        )
    cmd = self_test_command(device_id, command_id, seq, expires, target, name, version, runs)
    acked = sender.send([cmd])
    status = "published" if acked else "unacknowledged"
    with db.begin() as conn:
        conn.execute(c.update().where(c.c.command_id == command_id).values(status=status, sent_at=clock() if acked else None))
    if not acked:
        raise CommandNotAcknowledgedError(f"device {device_id}: the broker did not acknowledge self-test command {command_id} within {sender.ack_timeout_s:.0f}s; check the console's broker connection")
    log.info("self-test of %s@%s ordered on %s (command %s, seq %d)", name, version, device_id, command_id, seq)
    return {
        "command_id": command_id,
        "device": device_id,
        "bundle": f"{name}@{version}",
        "seq": seq,
        "expires": expires,
        "runs": runs,
        "target": {"name": target.name, "sha256": target.sha256, "length": target.length},
    }


def list_commands(db: Database, device_id: str | None = None, limit: int = 100) -> list[dict]:
    """One-off commands, newest first (optionally of one device)."""
    c = db.t.commands
    q = sa.select(c).order_by(c.c.created_at.desc()).limit(limit)
    if device_id:
        q = q.where(c.c.device_id == device_id)
    with db.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


class CommandSender:
    """Signs commands and publishes them QoS 1; returns which ones the broker acknowledged."""

    def __init__(self, signer: CommandSigner, publish: PublishFn, ack_timeout_s: float = 30.0):
        self.signer = signer
        self.publish = publish
        self.ack_timeout_s = ack_timeout_s

    def send(self, commands: Sequence[Command]) -> list[Command]:
        """Publish every command; the list of those acknowledged within the timeout."""
        handles = []
        for c in commands:
            try:
                payload = self.signer.sign(c)
                handles.append((c, self.publish(cmd_topic(c.device_id), payload)))
            except Exception as e:  # a broker hiccup or a signing failure: retried next tick
                log.warning("publishing command %s to %s failed: %s", c.command_id, c.device_id, e)
        deadline = time.monotonic() + self.ack_timeout_s
        acked = []
        for c, h in handles:
            if h.wait(max(0.0, deadline - time.monotonic())):
                acked.append(c)
        return acked
