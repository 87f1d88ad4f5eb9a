"""Data capture on the device (issue 17): which served inferences to keep, sealed to the console.

Off by default. A signed ``capture`` command (:class:`edgeops.protocol.CapturePolicy`) turns it
on; the policy is persisted (``capture_policy.json``) so it survives restarts, and it ends at
its ``until`` time or with a policy whose ``enabled`` is false.

For every served inference (never probation's synthetic golden traffic) :meth:`Capturer.offer`
checks the triggers in a fixed order (nonfinite, low confidence, shadow disagreement, drift,
random share), then the sampling rate and the minimum interval, then the day's byte budget.
A kept sample is one ``.npz`` (``in/<name>``, ``out/<name>`` arrays and a ``meta`` JSON
record: device, time, trigger, model name/version/sha256, rollout id, policy id) sealed with
a libsodium sealed box (Curve25519 + XSalsa20-Poly1305, PyNaCl) to the console's capture
public key. Only the console's private key opens it: the broker, relays and anyone reading
the device's spool see ciphertext. It waits in :class:`~edgeops.agent.capture_spool.CaptureSpool`
until the console answers "stored".
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgeops.protocol import CapturePolicy
from edgeops.schema import SchemaError
from edgeops.trust.fsutil import atomic_write

from edgeops.agent.capture_spool import CaptureSpool

log = logging.getLogger("edgeops.agent.capture")

DRIFT_CHECK_S = 1.0  # the drift trigger scores the interval's sketches at most this often
LEVELS = {"warn": 1, "alert": 2}


class CaptureRefused(ValueError):
    """A capture policy the device will not take; the message says why."""


def seal(public_key_b64: str, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` to a Curve25519 public key (libsodium sealed box)."""
    from nacl.public import PublicKey, SealedBox

    return SealedBox(PublicKey(base64.b64decode(public_key_b64))).encrypt(plaintext)


def encode_sample(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], meta: dict) -> bytes:
    """One sample as ``.npz`` bytes: ``in/<name>``, ``out/<name>`` and ``meta`` (UTF-8 JSON as uint8)."""
    arrays = {f"in/{k}": np.asarray(v) for k, v in inputs.items()}
    arrays.update({f"out/{k}": np.asarray(v) for k, v in outputs.items()})
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def top1_confidence(outputs: dict[str, np.ndarray]) -> float | None:
    """Lowest top-1 probability over the rows of the first output (softmax of logits when the
    rows are not already probabilities); None when there is no class axis."""
    for value in outputs.values():
        a = np.asarray(value, dtype=np.float64)
        if a.ndim == 0 or a.shape[-1] < 2 or not np.all(np.isfinite(a)):
            return None
        rows = a.reshape(-1, a.shape[-1])
        if rows.min() < 0 or rows.max() > 1 or not np.allclose(rows.sum(axis=1), 1.0, atol=1e-3):
            e = np.exp(rows - rows.max(axis=1, keepdims=True))
            rows = e / e.sum(axis=1, keepdims=True)
        return float(rows.max(axis=1).min())
    return None


def top1(outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """The arg-max class per row of the first output."""
    for value in outputs.values():
        a = np.asarray(value)
        return None if a.ndim == 0 or a.shape[-1] < 2 else a.reshape(-1, a.shape[-1]).argmax(axis=1)
    return None


@dataclass
class Offer:
    """What one served inference brings to the capturer."""

    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    model_name: str
    model_version: str
    model_sha256: str
    rollout_id: str | None = None
    shadow_outputs: dict[str, np.ndarray] | None = None


class Capturer:
    """The device's capture policy, trigger checks and sealing into the spool (thread-safe)."""

    def __init__(self, data_dir: Path, device_id: str, spool: CaptureSpool, *, max_budget_bytes_per_day: int, config_key: str | None = None, clock: Callable[[], float] = time.time, rng=None):
        import random

        self.device_id = device_id
        self.spool = spool
        self.max_budget = max_budget_bytes_per_day
        self.config_key = config_key
        self.clock = clock
        self.rng = rng or random.Random()
        self.path = Path(data_dir) / "capture_policy.json"
        self._lock = threading.Lock()
        self.policy: CapturePolicy | None = None
        self._last_sample = 0.0
        self._drift_level = 0
        self._drift_checked = 0.0
        self.captured = 0  # since the last telemetry batch
        self.over_budget = 0
        self.total_captured = 0
        self._load()

    # -- policy ------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            self.policy = CapturePolicy.parse_json(self.path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, SchemaError) as e:  # a corrupt file turns capture off: it is opt-in
            log.warning("%s: capture policy %s unreadable (%s); capture stays off", self.device_id, self.path, e)
            self.policy = None

    def key_of(self, policy: CapturePolicy) -> str | None:
        """The public key samples are sealed to: the policy's (signed with it), else the config's."""
        return policy.public_key or self.config_key

    def check(self, policy: CapturePolicy | None, now: float) -> CapturePolicy:
        """The policy, or CaptureRefused naming what is wrong with it."""
        if policy is None:
            raise CaptureRefused("capture command without a policy")
        if not policy.enabled:
            return policy
        if policy.until <= now:
            raise CaptureRefused(f"capture policy {policy.policy_id} expired {now - policy.until:.0f} s ago (until {policy.until:.0f})")
        if policy.budget_bytes_per_day > self.max_budget:
            raise CaptureRefused(f"capture policy {policy.policy_id} asks {policy.budget_bytes_per_day} bytes a day, over this device's capture.max_budget_bytes_per_day {self.max_budget}")
        if self.key_of(policy) is None:
            raise CaptureRefused(f"capture policy {policy.policy_id} names no public key and the agent config has no capture.public_key: samples could not be sealed")
        return policy

    def apply(self, policy: CapturePolicy) -> None:
        """Take a checked policy (persisted; ``enabled`` false turns capture off and forgets it)."""
        with self._lock:
            if policy.enabled:
                atomic_write(self.path, policy.to_json().encode())
                self.policy = policy
            else:
                self.path.unlink(missing_ok=True)
                self.policy = None

    def active(self, now: float | None = None) -> CapturePolicy | None:
        """The policy in force, or None (none, or it ran out)."""
        p = self.policy
        if p is not None and p.until <= (self.clock() if now is None else now):
            return None
        return p

    # -- per inference ----------------------------------------------------------------------
    def wants_shadow(self) -> bool:
        """Whether the policy needs the shadow model's answer for every inference it sees."""
        p = self.active()
        return p is not None and p.triggers.shadow_disagreement

    def _trigger(self, p: CapturePolicy, offer: Offer, drift_level: Callable[[], int] | None) -> str | None:
        t = p.triggers
        if t.nonfinite and any(not np.all(np.isfinite(np.asarray(v, dtype=np.float64))) for v in offer.outputs.values()):
            return "nonfinite"
        if t.min_confidence is not None:
            c = top1_confidence(offer.outputs)
            if c is not None and c < t.min_confidence:
                return "low_confidence"
        if t.shadow_disagreement and offer.shadow_outputs is not None:
            a, b = top1(offer.outputs), top1(offer.shadow_outputs)
            if a is not None and b is not None and a.shape == b.shape and bool(np.any(a != b)):
                return "shadow_disagreement"
        if t.drift is not None and drift_level is not None:
            now = self.clock()
            if now - self._drift_checked >= DRIFT_CHECK_S:
                self._drift_checked = now
                self._drift_level = drift_level()
            if self._drift_level >= LEVELS[t.drift]:
                return f"drift_{t.drift}"
        if t.random_share > 0 and self.rng.random() < t.random_share:
            return "random"
        return None

    def offer(self, offer: Offer, drift_level: Callable[[], int] | None = None) -> str | None:
        """Capture this inference if the policy wants it; returns the sample id or None.

        Never raises: capture must not fail an inference (an error is logged and counted as
        nothing captured)."""
        p = self.active()
        if p is None:
            return None
        try:
            with self._lock:
                trigger = self._trigger(p, offer, drift_level)
                if trigger is None or (p.sample_rate < 1.0 and self.rng.random() >= p.sample_rate):
                    return None
                now = self.clock()
                if p.min_interval_s and now - self._last_sample < p.min_interval_s:
                    return None
                day = int(now // 86400)
                if self.spool.budget_left(day, p.budget_bytes_per_day) <= 0:
                    self.over_budget += 1
                    return None
                self._last_sample = now
            meta = {
                "device_id": self.device_id,
                "ts": now,
                "trigger": trigger,
                "model": {"name": offer.model_name, "version": offer.model_version, "sha256": offer.model_sha256},
                "rollout_id": offer.rollout_id,
                "policy_id": p.policy_id,
            }
            sealed = seal(self.key_of(p), encode_sample(offer.inputs, offer.outputs, meta))  # type: ignore[arg-type]
            sample_id = hashlib.sha256(sealed).hexdigest()
            with self._lock:
                # sealing runs outside the lock; a policy applied meanwhile (capture turned off, or
                # replaced) wins: once apply() returns, nothing more is spooled under the old policy
                if self.policy is not p:
                    return None
                if not self.spool.append(sample_id, sealed, now, day, p.budget_bytes_per_day):
                    self.over_budget += 1
                    return None
                self.captured += 1
                self.total_captured += 1
            return sample_id
        except Exception:  # noqa: BLE001 (capture never fails an inference)
            log.exception("%s: capturing a sample failed", self.device_id)
            return None

    def drain_counts(self) -> tuple[int, int, int]:
        """(captured, dropped by the spool, over budget) since the last call; each reported once."""
        with self._lock:
            captured, over, self.captured, self.over_budget = self.captured, self.over_budget, 0, 0
        return captured, self.spool.take_dropped(), over


def load_rollouts(path: Path) -> dict[str, str]:
    """sha256 -> rollout id of the assignments this device accepted (for the samples' ``rollout_id``)."""
    try:
        data = json.loads(Path(path).read_bytes())
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def remember_rollout(path: Path, sha256: str, rollout_id: str) -> dict[str, str]:
    """Record which rollout assigned ``sha256`` (the last 16 kept)."""
    known = load_rollouts(path)
    known.pop(sha256, None)
    known[sha256] = rollout_id
    known = dict(list(known.items())[-16:])
    atomic_write(Path(path), json.dumps(known).encode())
    return known
