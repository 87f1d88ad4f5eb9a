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
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64encode(bytes(key)) + b"\n")
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
