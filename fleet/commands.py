"""Build, sign and publish console -> device commands (assign, rollback).

The reconciler writes each command's id, per-device sequence number and expiry to the
database *before* publishing, and marks it sent only after the broker acknowledged it (QoS 1
PUBACK). A console that dies in between publishes the very same command again on restart
(same id, same seq, same expiry: Ed25519 signatures are deterministic, so the same bytes),
which the device either obeys or refuses as a replay; it is never assigned twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgeops.fleet.signing import CommandSigner
from edgeops.protocol import Command, VersionRef, cmd_topic

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


def assign_command(device_id: str, command_id: str, seq: int, expires: float, rollout: dict) -> Command:
    """The assign command of a rollout for one device (target exactly as signed in TUF)."""
    return Command(
        device_id=device_id,
        command_id=command_id,
        seq=seq,
        expires=expires,
        kind="assign",
        target_name=rollout["target_name"],
        target_sha256=rollout["target_sha256"],
        target_length=rollout["target_length"],
        bundle=VersionRef(name=rollout["bundle_name"], version=rollout["bundle_version"], release=rollout.get("release") or 0, sha256=rollout["target_sha256"]),
        rollout_id=rollout["id"],
        reason=f"rollout {rollout['id']}",
    )


def rollback_command(device_id: str, command_id: str, seq: int, expires: float, rollout: dict, from_name: str | None, from_version: str | None, previous_target=None, reason: str = "") -> Command:
    """Order a device back to the version it ran before the rollout (``previous_target``: its TUF target, when published)."""
    return Command(
        device_id=device_id,
        command_id=command_id,
        seq=seq,
        expires=expires,
        kind="rollback",
        target_name=previous_target.path if previous_target else None,
        target_sha256=previous_target.sha256 if previous_target else None,
        target_length=previous_target.length if previous_target else None,
        bundle=VersionRef(name=from_name, version=from_version, release=previous_target.release if previous_target else 0, sha256=previous_target.sha256 if previous_target else None)
        if from_name and from_version
        else None,
        rollout_id=rollout["id"],
        reason=reason or f"rollout {rollout['id']} aborted",
    )


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
