"""Signed console -> device commands: DSSE envelopes around :class:`edgeops.protocol.Command`.

Wire format (DSSE v1, https://github.com/secure-systems-lab/dsse)::

    {"payloadType": "application/vnd.edgeops.command+json",
     "payload": base64(Command JSON),
     "signatures": [{"keyid": "<sslib keyid>", "sig": base64(Ed25519 signature over PAE)}]}

    PAE = "DSSEv1" SP len(type) SP type SP len(payload) SP payload

What a device checks, in this order (each failure its own error; nothing is persisted unless
every check passed):

1. size cap, JSON, DSSE structure, payload type          -> MalformedCommandError
2. a signature by one of the trusted command keys         -> CommandSignatureError
   (the payload is not parsed before its signature verified)
3. the payload is a valid Command                         -> MalformedCommandError
4. addressed to this device, or to ``cohort:<name>`` with
   this device in that cohort                             -> WrongDeviceError
5. not expired (``expires`` is a unix time)               -> CommandExpiredError
6. ``seq`` above the highest accepted for that audience   -> ReplayError
   (audience = the command's ``device_id`` field: the device itself, or one cohort; each has
   its own strictly increasing counter, persisted atomically before the command is returned)

For assignments, :func:`check_assignment` then requires the command's target name, sha256 and
length to equal those of the TUF-verified target exactly (AssignmentMismatchError).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeops.protocol import COMMAND_OPTIONAL_FIELDS, COMMAND_PAYLOAD_TYPE, Command
from edgeops.schema import SchemaError
from edgeops.trust import errors
from edgeops.trust.fsutil import atomic_write
from edgeops.trust.pubkeys import VerifyKey, as_verify_key

if TYPE_CHECKING:  # signing is the console's job; devices only verify (edgeops.trust.pubkeys)
    from securesystemslib.signer import Signer

PAYLOAD_TYPE = COMMAND_PAYLOAD_TYPE
MAX_ENVELOPE_BYTES = 64 * 1024
COHORT_PREFIX = "cohort:"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def command_payload(command: Command) -> bytes:
    """The canonical JSON payload of a command: sorted keys, no spaces, and the optional fields
    added after v1 (:data:`~edgeops.protocol.COMMAND_OPTIONAL_FIELDS`) left out when unset.

    The payload is validated as devices will parse it (SchemaError, a ValueError, naming the
    field), so the console never signs a command every device would refuse.
    """
    unset = {f for f in COMMAND_OPTIONAL_FIELDS if getattr(command, f) is None}
    payload = json.dumps(command.to_dict(exclude=unset), sort_keys=True, separators=(",", ":")).encode()
    Command.parse_json(payload)
    return payload


def sign_command(command: Command, key: "Signer | Sequence[Signer]") -> bytes:
    """Sign a command with one signer (or several) and return the DSSE envelope as JSON bytes."""
    return sign_payload(command_payload(command), key)


def sign_payload(payload: bytes, key: "Signer | Sequence[Signer]") -> bytes:
    """Sign command payload bytes as they are (no validation) into a DSSE envelope; the
    console signs through :func:`sign_command`, tests use this to sign what devices must refuse."""
    from securesystemslib.signer import Signer

    signers = [key] if isinstance(key, Signer) else list(key)
    message = pae(PAYLOAD_TYPE, payload)
    sigs = []
    for signer in signers:
        sig = signer.sign(message)
        sigs.append({"keyid": sig.keyid, "sig": base64.b64encode(bytes.fromhex(sig.signature)).decode()})
    envelope = {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(), "signatures": sigs}
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise errors.MalformedCommandError(f"DSSE envelope: {what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise errors.MalformedCommandError(f"DSSE envelope: {what} is not valid base64") from e


def parse_envelope(data: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Check the DSSE structure and payload type; return (payload, [(keyid, signature)]).

    Pure function on bytes. Raises MalformedCommandError for anything that is not a
    well-formed edgeops command envelope.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise errors.MalformedCommandError("DSSE envelope: expected bytes")
    if len(data) > MAX_ENVELOPE_BYTES:
        raise errors.MalformedCommandError(f"DSSE envelope: {len(data)} bytes, over the {MAX_ENVELOPE_BYTES} cap")
    try:
        doc = json.loads(bytes(data))
    except (ValueError, RecursionError) as e:
        raise errors.MalformedCommandError(f"DSSE envelope: not JSON ({e.__class__.__name__})") from e
    if not isinstance(doc, dict):
        raise errors.MalformedCommandError("DSSE envelope: expected a JSON object")
    payload_type = doc.get("payloadType")
    if payload_type != PAYLOAD_TYPE:
        raise errors.MalformedCommandError(f"DSSE envelope: payloadType {payload_type!r} is not {PAYLOAD_TYPE!r}")
    payload = _b64(doc.get("payload"), "payload")
    raw_sigs = doc.get("signatures")
    if not isinstance(raw_sigs, list) or not raw_sigs or len(raw_sigs) > 16:
        raise errors.MalformedCommandError("DSSE envelope: signatures must be a list of 1 to 16 entries")
    sigs: list[tuple[str, bytes]] = []
    for entry in raw_sigs:
        if not isinstance(entry, dict) or not isinstance(entry.get("keyid"), str):
            raise errors.MalformedCommandError("DSSE envelope: each signature needs a keyid string and a sig")
        sigs.append((entry["keyid"], _b64(entry.get("sig"), "sig")))
    return payload, sigs


def verify_envelope(data: bytes, public_keys: Iterable[Any]) -> Command:
    """Check structure and signature (steps 1-3 above) and return the Command; no device state.

    ``public_keys`` are :class:`~edgeops.trust.pubkeys.VerifyKey` objects or securesystemslib
    keys (converted). Used by :class:`CommandVerifier` and by tools that only need to know who
    signed a command.
    """
    payload, sigs = parse_envelope(data)
    message = pae(PAYLOAD_TYPE, payload)
    keys = {k.keyid: k for k in map(as_verify_key, public_keys)}
    verified = False
    for keyid, sig in sigs:
        key = keys.get(keyid)
        if key is not None and key.verify(sig, message):
            verified = True
            break
    if not verified:
        raise errors.CommandSignatureError(
            f"command envelope is not signed by a trusted command key (signed by {', '.join(k[:12] for k, _ in sigs)}; trusted: {', '.join(k[:12] for k in keys) or 'none'})"
        )
    try:
        return Command.parse_json(payload)
    except SchemaError as e:
        raise errors.MalformedCommandError(f"command payload is not a valid Command: {e}") from e


class CommandVerifier:
    """Verifies commands for one device and remembers the highest accepted sequence number.

    Args:
        device_id: this device's id.
        public_keys: the command keys this device trusts (:class:`~edgeops.trust.pubkeys.VerifyKey`,
            see :func:`edgeops.trust.pubkeys.load_verify_keys`; securesystemslib keys are converted).
        state_path: JSON file with the highest accepted ``seq`` per audience (written atomically).
        cohorts: the cohorts this device belongs to (``cohort:<name>`` commands are accepted for these).
    """

    def __init__(self, device_id: str, public_keys: Sequence[Any], state_path: str | Path, cohorts: Iterable[str] = ()):
        if not public_keys:
            raise errors.KeyFileError(f"device {device_id}: no command public keys configured; every command would be refused")
        self.device_id = device_id
        self.public_keys: list[VerifyKey] = [as_verify_key(k) for k in public_keys]
        self.state_path = Path(state_path)
        self.cohorts = set(cohorts)

    def _load_state(self) -> dict[str, int]:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise errors.CommandError(f"{self.state_path}: cannot read command sequence state ({e.strerror or e})") from e
        try:
            seqs = json.loads(raw)["seq"]
            if not isinstance(seqs, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in seqs.values()):
                raise ValueError("seq must map audiences to integers")
        except (ValueError, KeyError, TypeError) as e:
            # Fail closed: accepting commands with a lost counter would re-open replays.
            raise errors.CommandError(f"{self.state_path}: command sequence state is corrupt ({e}); restore it or re-provision the device") from e
        return dict(seqs)

    def last_seq(self, audience: str | None = None) -> int:
        """Highest accepted seq for an audience (default: this device)."""
        return self._load_state().get(audience or self.device_id, 0)

    def verify(self, envelope: bytes, now: float | None = None) -> Command:
        """Verify an envelope, record its sequence number, and return the Command.

        Raises a :class:`~edgeops.trust.errors.CommandError` subclass; see the module doc for
        the order of checks. The sequence number is persisted before returning, so a crash
        after this call can never make the same envelope acceptable again.
        """
        command = verify_envelope(envelope, self.public_keys)
        audience = command.device_id
        if audience.startswith(COHORT_PREFIX):
            if audience[len(COHORT_PREFIX):] not in self.cohorts:
                raise errors.WrongDeviceError(f"command {command.command_id} is for {audience}; device {self.device_id} is not in that cohort")
        elif audience != self.device_id:
            raise errors.WrongDeviceError(f"command {command.command_id} is for device {audience!r}, not {self.device_id!r}")
        now = time.time() if now is None else now
        if command.expires <= now:
            raise errors.CommandExpiredError(f"command {command.command_id} expired {now - command.expires:.0f} s ago")
        seqs = self._load_state()
        last = seqs.get(audience, 0)
        if command.seq <= last:
            raise errors.ReplayError(f"command {command.command_id} has seq {command.seq}, not above the last accepted {last} for {audience} (replayed or out of date)")
        seqs[audience] = command.seq
        atomic_write(self.state_path, json.dumps({"format": 1, "device_id": self.device_id, "seq": seqs}, sort_keys=True).encode() + b"\n")
        return command


def check_assignment(command: Command, target) -> None:
    """Require an assign/self_test command to name the TUF-verified ``target`` exactly.

    ``target`` is a :class:`edgeops.trust.client.TargetRecord` from ``TrustClient.get_target``.
    Name, sha256 and length must all be given and equal; AssignmentMismatchError otherwise.
    """
    problems = []
    if command.target_name != target.name:
        problems.append(f"target_name {command.target_name!r} != {target.name!r}")
    if command.target_sha256 != target.sha256:
        problems.append(f"target_sha256 {command.target_sha256!r} != {target.sha256!r}")
    if command.target_length != target.length:
        problems.append(f"target_length {command.target_length!r} != {target.length!r}")
    if problems:
        raise errors.AssignmentMismatchError(f"command {command.command_id} does not match the verified target: " + "; ".join(problems))
