"""Ed25519 public keys for verifying signatures on a device, without securesystemslib or cryptography.

The agent verifies every command envelope, so the key type it holds stays resident for the
life of the process. securesystemslib's keys verify through ``cryptography`` (its Rust
extension alone is ~8 MiB of resident memory); PyNaCl's libsodium does the same Ed25519
verification (RFC 8032) for ~1 MiB. :class:`VerifyKey` is that small key: it reads the same
key files (``.pub.json`` in securesystemslib form, or a PEM SubjectPublicKeyInfo) and the key
dicts signed into root.json, and computes the same key ids securesystemslib does, so
publisher-side tools keep using :mod:`edgeops.trust.keys`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeops.trust.errors import KeyFileError

# DER SubjectPublicKeyInfo of an Ed25519 key (RFC 8410): this fixed prefix, then the 32 key bytes.
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class VerifyKey:
    """An Ed25519 public key with its securesystemslib key id."""

    keyid: str
    public: bytes  # the 32 raw key bytes

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True when ``signature`` is this key's Ed25519 signature over ``message``."""
        from nacl.exceptions import BadSignatureError
        from nacl.signing import VerifyKey as _NaclKey

        try:
            _NaclKey(self.public).verify(message, signature)
        except (BadSignatureError, ValueError, TypeError):
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        """The securesystemslib/TUF key dict (without the key id)."""
        return {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": self.public.hex()}}


def ed25519_keyid(public: bytes) -> str:
    """The key id securesystemslib gives an Ed25519 key: sha256 of its canonical JSON key dict."""
    doc = {"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": public.hex()}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def verify_key_from_dict(keyid: Any, data: Any, source: str = "public key") -> VerifyKey:
    """A VerifyKey from a key id and a ``{"keytype", "scheme", "keyval": {"public"}}`` dict.

    Only ``ed25519`` keys with the ``ed25519`` scheme are accepted (all edgeops generates);
    KeyFileError names ``source`` and what is wrong otherwise.
    """
    if not isinstance(keyid, str) or not keyid:
        raise KeyFileError(f"{source}: missing key id")
    if not isinstance(data, dict):
        raise KeyFileError(f"{source}: a key must be a JSON object")
    if data.get("keytype") != "ed25519" or data.get("scheme") != "ed25519":
        raise KeyFileError(f"{source}: key type {data.get('keytype')!r} / scheme {data.get('scheme')!r} is not ed25519 (devices verify Ed25519 keys only)")
    keyval = data.get("keyval")
    public = keyval.get("public") if isinstance(keyval, dict) else None
    if not isinstance(public, str) or not _HEX64.fullmatch(public):
        raise KeyFileError(f"{source}: keyval.public must be 64 lowercase hex characters (a 32-byte Ed25519 key)")
    return VerifyKey(keyid=keyid, public=bytes.fromhex(public))


def as_verify_key(key: Any) -> VerifyKey:
    """A VerifyKey from a VerifyKey or a securesystemslib key object (``keyid``, ``keytype``, ``scheme``, ``keyval``)."""
    if isinstance(key, VerifyKey):
        return key
    return verify_key_from_dict(getattr(key, "keyid", None), {"keytype": getattr(key, "keytype", None), "scheme": getattr(key, "scheme", None), "keyval": getattr(key, "keyval", None)}, "key")


def _public_from_pem(raw: bytes, source: str) -> bytes:
    text = raw.decode("ascii", "replace").strip()
    m = re.fullmatch(r"-----BEGIN PUBLIC KEY-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END PUBLIC KEY-----", text)
    if not m:
        raise KeyFileError(f"{source}: not a PEM public key (expected a BEGIN PUBLIC KEY block)")
    try:
        der = base64.b64decode("".join(m.group(1).split()), validate=True)
    except ValueError as e:
        raise KeyFileError(f"{source}: PEM body is not valid base64") from e
    if len(der) != len(_ED25519_SPKI_PREFIX) + 32 or not der.startswith(_ED25519_SPKI_PREFIX):
        raise KeyFileError(f"{source}: not an Ed25519 public key")
    return der[len(_ED25519_SPKI_PREFIX):]


def load_verify_key(path: str | Path) -> VerifyKey:
    """Load a public key file: a ``.pub.json`` written by ``edgeops keys``, or a PEM public key."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read public key ({e.strerror or e})") from e
    if raw.lstrip().startswith(b"{"):
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise KeyFileError(f"{path}: invalid JSON: {e}") from e
        if not isinstance(data, dict):
            raise KeyFileError(f"{path}: expected a JSON object")
        return verify_key_from_dict(data.get("keyid"), data, str(path))
    public = _public_from_pem(raw, str(path))
    return VerifyKey(keyid=ed25519_keyid(public), public=public)


def load_verify_keys(paths: Iterable[str | Path]) -> list[VerifyKey]:
    """Load several public keys (the command keys a device trusts)."""
    return [load_verify_key(p) for p in paths]


def verify_keys_from_field(field_value: Any, source: str) -> list[VerifyKey]:
    """The keys of a ``{keyid: key dict}`` mapping (root.json's command-key field); MalformedMetadataError when malformed."""
    from edgeops.trust.errors import MalformedMetadataError

    if not isinstance(field_value, dict):
        raise MalformedMetadataError(f"{source}: expected a mapping of key ids to keys")
    try:
        return [verify_key_from_dict(keyid, d, f"{source} key {str(keyid)[:12]}") for keyid, d in field_value.items()]
    except KeyFileError as e:
        raise MalformedMetadataError(str(e)) from e
