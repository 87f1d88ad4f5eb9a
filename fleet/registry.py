"""The device registry: enrol devices, read them back, and turn rows into API dicts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import sqlalchemy as sa

from edgeops.errors import FleetError
from edgeops.fleet.db import Database, dumps
from edgeops.protocol import DEVICE_ID_RULE, valid_device_id


class UnknownDeviceError(FleetError):
    """No device with that id is enrolled."""


def register_devices(db: Database, devices: Iterable[dict]) -> int:
    """Enrol (or update tags/profile of) devices: dicts with ``id``, optional ``tags``, ``profile``.

    Returns how many were given. Existing devices keep their state, versions and counters.
    """
    rows = []
    now = time.time()
    for d in devices:
        if not valid_device_id(d["id"]):
            raise FleetError(f"device id {d['id']!r} is not valid ({DEVICE_ID_RULE})")
        rows.append({"id": d["id"], "tags": dumps(d.get("tags") or {}), "profile": d.get("profile"), "enrolled_at": now, "state": "unknown", "online": False, "health": "unknown", "agent_version": "", "reported_cmd_seq": 0, "cmd_seq": 0})
    with db.begin() as conn:
        for i in range(0, len(rows), 5000):
            db.upsert(conn, db.t.devices, rows[i : i + 5000], ["id"], ["tags", "profile"])
    return len(rows)


def device_ids(db: Database) -> set[str]:
    """Every enrolled device id."""
    with db.connect() as conn:
        return {r[0] for r in conn.execute(sa.select(db.t.devices.c.id))}


def device_known(db: Database, device_id: str) -> bool:
    """Whether ``device_id`` is enrolled in this fleet (one indexed lookup)."""
    with db.connect() as conn:
        return conn.execute(sa.select(db.t.devices.c.id).where(db.t.devices.c.id == device_id)).first() is not None


def _devices_select(db: Database):
    """SELECT of device rows with their clock-skew counts (``device_clock``, outer-joined)."""
    t, c = db.t.devices, db.t.device_clock
    return sa.select(t, c.c.skewed_messages, c.c.last_skew_s, c.c.last_skewed_at).select_from(t.outerjoin(c, c.c.device_id == t.c.id))


def device_row_to_dict(row) -> dict:
    """API form of a devices row.

    ``clock``: how many of the device's messages carried a timestamp off the console's receive
    clock (edgeops.fleet.ingest.clock_skew), the last offset in seconds (positive: the device's
    clock is ahead) and when the console saw it; zero and None for a device never seen off.
    """
    m = row._mapping

    def ref(prefix: str):
        name = m.get(f"{prefix}_name")
        return None if name is None else {"name": name, "version": m.get(f"{prefix}_version")}

    active = ref("active")
    if active is not None:
        active["release"] = m.get("active_release") or 0
        active["sha256"] = m.get("active_sha256")
    return {
        "id": m["id"],
        "tags": json.loads(m["tags"] or "{}"),
        "profile": m["profile"],
        "active": active,
        "previous": ref("previous"),
        "pending": ref("pending"),
        "state": m["state"],
        "online": bool(m["online"]),
        "last_seen": m["last_seen"],
        "health": m["health"],
        "agent_version": m["agent_version"],
        "reported_cmd_seq": m["reported_cmd_seq"],
        "cmd_seq": m["cmd_seq"],
        "enrolled_at": m["enrolled_at"],
        "clock": {"skewed_messages": m.get("skewed_messages") or 0, "last_skew_s": m.get("last_skew_s"), "last_skewed_at": m.get("last_skewed_at")},
    }


def get_device(db: Database, device_id: str) -> dict:
    """One device as a dict; UnknownDeviceError when not enrolled."""
    with db.connect() as conn:
        row = conn.execute(_devices_select(db).where(db.t.devices.c.id == device_id)).first()
    if row is None:
        raise UnknownDeviceError(f"device {device_id}: not enrolled (enrol it with `edgeops fleet enroll {device_id}`)")
    return device_row_to_dict(row)


def list_devices(db: Database, online: bool | None = None, version: str | None = None, limit: int | None = None, offset: int = 0) -> list[dict]:
    """Devices ordered by id; filter by online flag and ``NAME@VERSION`` of the active bundle."""
    t = db.t.devices
    q = _devices_select(db).order_by(t.c.id)
    if online is not None:
        q = q.where(t.c.online == online)
    if version:
        name, _, ver = version.partition("@")
        q = q.where(t.c.active_name == name)
        if ver:
            q = q.where(t.c.active_version == ver)
    if limit is not None:
        q = q.limit(limit).offset(offset)
    with db.connect() as conn:
        return [device_row_to_dict(r) for r in conn.execute(q)]


def list_events(db: Database, device_id: str | None = None, since: float | None = None, kind: str | None = None, limit: int = 200, command_id: str | None = None) -> list[dict]:
    """Newest events first (by received time), optionally for one device / kind / command / since a time.

    ``command_id`` keeps the events a device sent in answer to that command (the agent echoes
    the id), e.g. the result of a self-test ordered through the API.
    """
    t = db.t.events
    q = sa.select(t).order_by(t.c.received_at.desc(), t.c.seq.desc()).limit(limit)
    if device_id:
        q = q.where(t.c.device_id == device_id)
    if command_id:
        q = q.where(t.c.command_id == command_id)
    if since is not None:
        q = q.where(t.c.received_at >= since)
    if kind:
        q = q.where(t.c.kind == kind)
    with db.connect() as conn:
        rows = conn.execute(q).all()
    out = []
    for r in rows:
        m = r._mapping
        target = None if m["target_name"] is None else {"name": m["target_name"], "version": m["target_version"]}
        out.append({"device_id": m["device_id"], "seq": m["seq"], "kind": m["kind"], "ts": m["ts"], "received_at": m["received_at"], "target": target, "command_id": m["command_id"], "detail": m["detail"], "gates": json.loads(m["gates"] or "[]")})
    return out
