"""Data capture from the console's side (issue 17): the capture key pair and ``capture`` orders.

The console's capture key is a Curve25519 key pair (PyNaCl) in ``capture/capture.key`` next to
fleet.toml (created on first use, mode 0600). Its public half travels inside every capture
policy, signed with the command key, so a device seals samples only to the key its console
signed; the private half opens them (``edgeops data show|export``) and never leaves the console.

:func:`order_capture` signs a ``capture`` command for each device a target names (one device
id, or a selector of tags/profile: the cohort is resolved to devices here, each gets its own
command, sequence number and expiry like a rollout's) and publishes it QoS 1, recording each in
the ``commands`` table (kind ``capture``).
"""

from __future__ import annotations

import base64
import logging
import os
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from edgeops.errors import FleetError
from edgeops.fleet.command_seq import allocate_seqs
from edgeops.fleet.db import Database
from edgeops.protocol import CapturePolicy, CaptureTriggers, Command

log = logging.getLogger("edgeops.fleet.capture")

KEY_FILE = "capture.key"
CAPTURE_COMMAND_PREFIX = "capture-"


def load_or_create_key(folder: Path, create: bool = True):
    """The console's capture private key (nacl PrivateKey) from ``folder/capture.key``; created
    (0600) when missing and ``create``."""
    from nacl.public import PrivateKey

    path = Path(folder) / KEY_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise FleetError(f"{path}: no capture key; the console creates one when it first orders a capture (`edgeops fleet capture`) or with `edgeops data key`") from None
        key = PrivateKey.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Replicas on one host may share the folder and start together: the key is written whole
        # to a file of this process's own, then linked into place (atomic, fails if another got
        # there first), so no console ever reads a half-written key or dies on another's.
        tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(base64.b64encode(bytes(key)) + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
        except FileExistsError:
            return load_or_create_key(folder, create=False)  # another console created it first: use that one
        finally:
            tmp.unlink(missing_ok=True)
        return key
    try:
        return PrivateKey(base64.b64decode(raw.strip(), validate=True))
    except Exception as e:  # noqa: BLE001
        raise FleetError(f"{path}: not a capture key (base64 of 32 bytes): {e}") from e


def public_key_b64(private_key) -> str:
    """The base64 public half, as policies and agent configs carry it."""
    return base64.b64encode(bytes(private_key.public_key)).decode()


def make_policy(public_key: str, *, until: float, policy_id: str | None = None, enabled: bool = True, sample_rate: float = 1.0, min_interval_s: float = 0.0,
                budget_bytes_per_day: int = 64 << 20, min_confidence: float | None = None, shadow_disagreement: bool = False, drift: str | None = None,
                nonfinite: bool = False, random_share: float = 0.0, drift_config=None) -> CapturePolicy:
    """A validated policy (SchemaError, a ValueError, names a bad field). ``drift`` (warn/alert)
    takes its thresholds from ``drift_config`` (fleet.toml's [drift]) when given."""
    thresholds = {}
    if drift_config is not None:
        thresholds = dict(warn_psi=drift_config.warn_psi, alert_psi=drift_config.alert_psi, alpha=drift_config.alpha, min_samples=drift_config.min_samples)
    triggers = CaptureTriggers(min_confidence=min_confidence, shadow_disagreement=shadow_disagreement, drift=drift, nonfinite=nonfinite, random_share=random_share, **thresholds)
    if enabled and not any([min_confidence is not None, shadow_disagreement, drift, nonfinite, random_share > 0]):
        raise ValueError("a capture policy needs at least one trigger: min_confidence, shadow_disagreement, drift, nonfinite or random_share")
    policy = CapturePolicy(policy_id=policy_id or f"cap-{uuid.uuid4().hex[:10]}", until=until, public_key=public_key, enabled=enabled, triggers=triggers,
                           sample_rate=sample_rate, min_interval_s=min_interval_s, budget_bytes_per_day=budget_bytes_per_day)
    return CapturePolicy.parse(policy.to_dict())  # bounds checked as devices check them


def order_capture(db: Database, sender, devices: list[str], policy: CapturePolicy, ttl_s: float = 86400.0, actor: str = "api", now: float | None = None) -> dict:
    """Sign, record and publish a ``capture`` command with ``policy`` for each of ``devices``.

    Raises FleetError when no device is given or one is not enrolled, and when the console has
    no broker connection. Returns ``{"policy_id", "devices": {id: {"command_id", "seq", "acknowledged"}}}``.
    """
    from edgeops.fleet.commands import BrokerUnavailableError

    if not devices:
        raise FleetError("capture: no device matches; name a device or a selector that matches enrolled devices")
    if sender is None:
        raise BrokerUnavailableError("this console runs without MQTT, so it cannot send commands to devices")
    now = time.time() if now is None else now
    c = db.t.commands
    cmds = []
    with db.begin() as conn:
        seqs = allocate_seqs(db, conn, devices)
        unknown = sorted(set(devices) - set(seqs))
        if unknown:
            raise FleetError(f"capture: device(s) {', '.join(unknown[:5])} not enrolled (enrol with `edgeops fleet enroll`)")
        for device_id in sorted(devices):
            command_id = f"{CAPTURE_COMMAND_PREFIX}{device_id}-{uuid.uuid4().hex[:8]}"
            cmd = Command(device_id=device_id, command_id=command_id, seq=seqs[device_id], expires=now + ttl_s, kind="capture", capture=policy, reason=f"capture policy {policy.policy_id}")
            conn.execute(c.insert().values(command_id=command_id, device_id=device_id, kind="capture", seq=cmd.seq, expires=cmd.expires, status="recorded", actor=actor[:64], created_at=now))
            cmds.append(cmd)
    acked = {cmd.command_id for cmd in sender.send(cmds)}
    with db.begin() as conn:
        for cmd in cmds:
            ok = cmd.command_id in acked
            conn.execute(c.update().where(c.c.command_id == cmd.command_id).values(status="published" if ok else "unacknowledged", sent_at=time.time() if ok else None))
    log.info("capture policy %s ordered on %d device(s)", policy.policy_id, len(cmds))
    return {"policy_id": policy.policy_id, "devices": {cmd.device_id: {"command_id": cmd.command_id, "seq": cmd.seq, "acknowledged": cmd.command_id in acked} for cmd in cmds}}


def select_devices(db: Database, device: str | None = None, tags: dict[str, str] | None = None, profile: str | None = None) -> list[str]:
    """One device id, or every enrolled device with all of ``tags`` (and ``profile``)."""
    import json

    if device:
        return [device]
    d = db.t.devices
    q = sa.select(d.c.id, d.c.tags, d.c.profile)
    if profile:
        q = q.where(d.c.profile == profile)
    with db.connect() as conn:
        rows = conn.execute(q).all()
    return sorted(i for i, text, _ in rows if all((json.loads(text or "{}") or {}).get(k) == v for k, v in (tags or {}).items()))


CAPTURE_FIELDS = {
    "device": str, "tags": dict, "profile": str, "enabled": bool, "duration_s": (int, float), "policy_id": str, "sample_rate": (int, float),
    "min_interval_s": (int, float), "budget_bytes_per_day": int, "min_confidence": (int, float), "shadow_disagreement": bool, "drift": str,
    "nonfinite": bool, "random_share": (int, float),
}


def order_capture_request(db: Database, sender, capture_dir: Path, body: dict, drift_config=None, ttl_s: float = 86400.0, actor: str = "api", connected: bool = True) -> dict:
    """``POST /api/v1/capture``: check the body, resolve the target to devices, order the policy.

    The target is ``device`` (one id) or ``tags`` (``{"site": "north"}``) and/or ``profile``
    (every enrolled device matching all); the policy lasts ``duration_s`` (default a day).
    Every malformed field is an InvalidOrderError naming it (400); an unknown device 404.
    """
    from edgeops.fleet.commands import BrokerUnavailableError, InvalidOrderError
    from edgeops.fleet.registry import UnknownDeviceError
    from edgeops.protocol import valid_device_id
    from edgeops.schema import SchemaError

    if not isinstance(body, dict):
        raise InvalidOrderError("the body must be a JSON object")
    extra = sorted(set(body) - set(CAPTURE_FIELDS))
    if extra:
        raise InvalidOrderError(f"unknown field(s) {', '.join(repr(k[:40]) for k in extra[:5])}; the body takes {', '.join(sorted(CAPTURE_FIELDS))}")
    for name, kind in CAPTURE_FIELDS.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
            raise InvalidOrderError(f"{name}: {str(value)[:40]!r} has the wrong type")
    device, tags, profile = body.get("device"), body.get("tags"), body.get("profile")
    if bool(device) == bool(tags or profile):
        raise InvalidOrderError("name the target: device, or tags and/or profile (a cohort), not both")
    if tags is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise InvalidOrderError("tags: a map of strings to strings, e.g. {\"site\": \"north\"}")
    if device is not None and not valid_device_id(device):
        raise UnknownDeviceError(f"device {device[:70]!r}: not a valid device id, so not enrolled")
    duration = float(body.get("duration_s", 86400.0))
    if not 0 < duration <= 366 * 86400:
        raise InvalidOrderError("duration_s: between 0 and a year (seconds)")
    drift = body.get("drift")
    if drift is not None and drift not in ("warn", "alert"):
        raise InvalidOrderError(f"drift: {drift[:20]!r} must be warn or alert (the [drift] levels of fleet.toml)")
    key = load_or_create_key(capture_dir)
    try:
        policy = make_policy(
            public_key_b64(key), until=time.time() + duration, policy_id=body.get("policy_id"), enabled=body.get("enabled", True),
            sample_rate=body.get("sample_rate", 1.0), min_interval_s=body.get("min_interval_s", 0.0), budget_bytes_per_day=body.get("budget_bytes_per_day", 64 << 20),
            min_confidence=body.get("min_confidence"), shadow_disagreement=body.get("shadow_disagreement", False), drift=drift,
            nonfinite=body.get("nonfinite", False), random_share=body.get("random_share", 0.0), drift_config=drift_config,
        )
    except (SchemaError, ValueError) as e:
        raise InvalidOrderError(f"capture policy: {e}") from e
    devices = select_devices(db, device, tags, profile)
    if device is not None:
        with db.connect() as conn:
            if conn.execute(sa.select(db.t.devices.c.id).where(db.t.devices.c.id == device)).first() is None:
                raise UnknownDeviceError(f"device {device}: not enrolled (enrol it with `edgeops fleet enroll {device}`)")
    if not devices:
        raise InvalidOrderError(f"no enrolled device has tags {tags or {}} and profile {profile!r}")
    if sender is None:
        raise BrokerUnavailableError("this console runs without MQTT, so it cannot send commands to devices")
    if not connected:
        raise BrokerUnavailableError("the console is not connected to the broker right now; retry when it has reconnected (see /healthz)")
    out = order_capture(db, sender, devices, policy, ttl_s=ttl_s, actor=actor)
    out["policy"] = policy.to_dict()
    return out
