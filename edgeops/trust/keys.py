"""Ed25519 key files for the TUF roles and for command signing.

A key directory (``edgeops keys init --keys DIR``) holds::

    keyring.json              which keys each role uses, its threshold and expiry (days)
    <role>-<n>.key            PEM PKCS#8 private key, mode 0600, encrypted when a passphrase is set
    <role>-<n>.pub.json       the public key in securesystemslib/TUF form (keyid, keytype, keyval)
    retired/                  keys replaced by ``edgeops keys rotate`` (kept for audit)

A role may keep its private keys in another folder (keyring.json ``private_dir``, relative to
the key directory or absolute): ``edgeops fleet init`` puts the root keys in ``../root-keys``,
apart from the online keys, so they can be moved to offline media and brought back (to that
path) only to sign a new root. Public keys always stay in the key directory.

Roles: ``root``, ``targets``, ``snapshot``, ``timestamp`` (TUF) and ``command`` (the console's
key for DSSE command envelopes; devices get ``command-*.pub.json``).

Passphrases: ``EDGEOPS_KEY_PASSPHRASE`` when set, else a prompt when the CLI asks for one;
private keys are encrypted with the best algorithm ``cryptography`` offers. Devices only ever
load public keys (:func:`load_public_key`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, Signer, SSlibKey

from edgeops.trust.errors import KeyFileError
from edgeops.trust.fsutil import atomic_write

PASSPHRASE_ENV = "EDGEOPS_KEY_PASSPHRASE"
KEYRING_NAME = "keyring.json"
TUF_ROLES = ("root", "targets", "snapshot", "timestamp")
ALL_ROLES = TUF_ROLES + ("command",)
DEFAULT_EXPIRY_DAYS = {"root": 365, "targets": 90, "snapshot": 7, "timestamp": 1}

Passphrase = bytes | str | Callable[[str], str | bytes | None] | None


def passphrase_from_env() -> bytes | None:
    """The passphrase from ``EDGEOPS_KEY_PASSPHRASE``, or None when unset or empty."""
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def _resolve_passphrase(passphrase: Passphrase, path: Path) -> bytes | None:
    if callable(passphrase):
        passphrase = passphrase(str(path))
    if isinstance(passphrase, str):
        passphrase = passphrase.encode()
    return passphrase or None


def generate_key(directory: str | Path, name: str, passphrase: Passphrase = None, private_dir: str | Path | None = None) -> SSlibKey:
    """Create ``<name>.key`` (0600, encrypted when a passphrase is given) and ``<name>.pub.json``.

    The private key goes to ``private_dir`` (made 0700) when given, else next to the public one.
    Refuses to overwrite an existing key file (KeyFileError).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if private_dir is not None:
        Path(private_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(private_dir, 0o700)
    key_path = Path(private_dir or directory) / f"{name}.key"
    if key_path.exists():
        raise KeyFileError(f"{key_path}: key file exists already; move it away or use `edgeops keys rotate`")
    private = Ed25519PrivateKey.generate()
    secret = _resolve_passphrase(passphrase, key_path)
    encryption = serialization.BestAvailableEncryption(secret) if secret else serialization.NoEncryption()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    atomic_write(key_path, pem, mode=0o600, exclusive=True)
    public = SSlibKey.from_crypto(private.public_key())
    atomic_write(directory / f"{name}.pub.json", _public_json(public), mode=0o644)
    return public


def _public_json(key: SSlibKey) -> bytes:
    return json.dumps({"keyid": key.keyid, **key.to_dict()}, indent=2, sort_keys=True).encode() + b"\n"


def load_public_key(path: str | Path) -> SSlibKey:
    """Load a public key: a ``.pub.json`` written by :func:`generate_key`, or a PEM public key.

    Files are read by :func:`edgeops.trust.pubkeys.load_verify_key` (the device-side reader),
    so devices and tools accept exactly the same key files with the same key ids.
    """
    from edgeops.trust.pubkeys import load_verify_key

    key = load_verify_key(path)
    return SSlibKey.from_dict(key.keyid, key.to_dict())


def load_public_keys(paths: list[str | Path]) -> list[SSlibKey]:
    """Load several public keys (e.g. the command keys a device trusts)."""
    return [load_public_key(p) for p in paths]


def load_signer(path: str | Path, passphrase: Passphrase = None) -> CryptoSigner:
    """Load a private key file as a signer.

    ``passphrase`` may be bytes/str, a callable ``(path) -> passphrase`` (e.g. a prompt), or
    None, in which case ``EDGEOPS_KEY_PASSPHRASE`` is used when the key is encrypted.
    """
    path = Path(path)
    try:
        pem = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read private key ({e.strerror or e})") from e
    encrypted = b"ENCRYPTED" in pem.split(b"\n", 1)[0]
    secret = None
    if encrypted:
        secret = _resolve_passphrase(passphrase, path) if passphrase is not None else passphrase_from_env()
        if not secret:
            raise KeyFileError(f"{path}: key is encrypted; set {PASSPHRASE_ENV} or pass --passphrase-prompt")
    try:
        private = serialization.load_pem_private_key(pem, password=secret)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path}: cannot load private key (wrong passphrase or not a PEM PKCS#8 key): {e}") from e
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))


@dataclass
class RoleKeys:
    """One role's entry in keyring.json."""

    keys: list[str]
    threshold: int = 1
    expiry_days: float | None = None
    private_dir: str | None = None  # where the private keys live (relative to the key directory); None: there

    def to_dict(self) -> dict:
        """JSON form."""
        out: dict = {"keys": list(self.keys), "threshold": self.threshold}
        if self.expiry_days is not None:
            out["expiry_days"] = self.expiry_days
        if self.private_dir is not None:
            out["private_dir"] = self.private_dir
        return out


@dataclass
class Keyring:
    """A key directory: its keyring.json and the key files next to it."""

    directory: Path
    roles: dict[str, RoleKeys] = field(default_factory=dict)
    passphrase: Passphrase = None

    @classmethod
    def create(
        cls,
        directory: str | Path,
        root_keys: int = 3,
        root_threshold: int = 2,
        expiry_days: dict[str, float] | None = None,
        passphrase: Passphrase = None,
        root_private_dir: str | None = None,
    ) -> "Keyring":
        """Generate all keys in a new (or empty) directory and write keyring.json.

        ``root_private_dir`` (relative to ``directory`` or absolute) keeps the root private keys
        apart from the online ones.
        """
        directory = Path(directory)
        if (directory / KEYRING_NAME).exists():
            raise KeyFileError(f"{directory}: a keyring exists already (keyring.json); use `edgeops keys rotate ROLE`")
        if root_keys < 1 or not 1 <= root_threshold <= root_keys:
            raise KeyFileError(f"root threshold {root_threshold} must be between 1 and the number of root keys ({root_keys})")
        expiry = {**DEFAULT_EXPIRY_DAYS, **(expiry_days or {})}
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        ring = cls(directory, {}, passphrase)
        for role in ALL_ROLES:
            count = root_keys if role == "root" else 1
            names = [f"{role}-{i + 1}" for i in range(count)]
            ring.roles[role] = RoleKeys(names, root_threshold if role == "root" else 1, expiry.get(role), root_private_dir if role == "root" else None)
            for name in names:
                generate_key(directory, name, passphrase, ring.private_dir(role))
        ring.save()
        return ring

    @classmethod
    def load(cls, directory: str | Path, passphrase: Passphrase = None) -> "Keyring":
        """Read keyring.json from a key directory."""
        directory = Path(directory)
        path = directory / KEYRING_NAME
        try:
            data = json.loads(path.read_bytes())
            roles = {name: RoleKeys(list(r["keys"]), int(r.get("threshold", 1)), r.get("expiry_days"), r.get("private_dir")) for name, r in data["roles"].items()}
        except OSError as e:
            raise KeyFileError(f"{path}: cannot read keyring ({e.strerror or e}); create one with `edgeops keys init --keys {directory}`") from e
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise KeyFileError(f"{path}: malformed keyring: {e}") from e
        return cls(directory, roles, passphrase)

    def save(self) -> None:
        """Write keyring.json atomically."""
        data = {"format": 1, "roles": {name: r.to_dict() for name, r in sorted(self.roles.items())}}
        atomic_write(self.directory / KEYRING_NAME, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n", mode=0o600)

    def role(self, role: str) -> RoleKeys:
        """The entry of a role; KeyFileError when the keyring has none."""
        try:
            return self.roles[role]
        except KeyError:
            raise KeyFileError(f"{self.directory / KEYRING_NAME}: no keys for role {role!r}") from None

    def private_dir(self, role: str) -> Path:
        """The folder holding the private keys of ``role`` (the key directory unless keyring.json says otherwise)."""
        entry = self.roles.get(role)
        if entry is None or not entry.private_dir:
            return self.directory
        p = Path(entry.private_dir).expanduser()
        return p if p.is_absolute() else Path(os.path.normpath(self.directory / p))

    def public_keys(self, role: str) -> list[SSlibKey]:
        """The public keys of a role."""
        return [load_public_key(self.directory / f"{name}.pub.json") for name in self.role(role).keys]

    def signers(self, role: str, minimum: int | None = None) -> list[Signer]:
        """Signers for every private key of ``role`` present in the directory.

        Keys kept offline (file absent) are skipped; KeyFileError when fewer than ``minimum``
        (default: the role's threshold) are available.
        """
        entry = self.role(role)
        where = self.private_dir(role)
        out: list[Signer] = []
        for name in entry.keys:
            key_path = where / f"{name}.key"
            if key_path.exists():
                out.append(load_signer(key_path, self.passphrase))
        need = entry.threshold if minimum is None else minimum
        if len(out) < need:
            offline = f" (keyring.json keeps them in {where}: bring the offline keys back there)" if where != self.directory else ""
            raise KeyFileError(f"{self.directory}: {len(out)} private key(s) of role {role!r} available in {where}, {need} needed{offline}")
        return out

    def expiry_days(self, role: str) -> float:
        """Expiry period of a TUF role in days."""
        entry = self.roles.get(role)
        value = entry.expiry_days if entry and entry.expiry_days is not None else DEFAULT_EXPIRY_DAYS[role]
        return float(value)

    def next_key_name(self, role: str) -> str:
        """A key file name for a new key of ``role`` that is not used yet (nor retired)."""
        n = 1
        dirs = {self.directory, self.private_dir(role)}
        while any((d / f"{role}-{n}.key").exists() or (d / "retired" / f"{role}-{n}.key").exists() for d in dirs) or (self.directory / f"{role}-{n}.pub.json").exists():
            n += 1
        return f"{role}-{n}"

    def retire(self, name: str) -> None:
        """Move a key's files to ``retired/`` (kept for audit; no longer used)."""
        role = next((r for r, entry in self.roles.items() if name in entry.keys), name.rsplit("-", 1)[0])
        for folder, suffix in ((self.private_dir(role), ".key"), (self.directory, ".key"), (self.directory, ".pub.json")):
            src = folder / f"{name}{suffix}"
            if src.exists():
                retired = folder / "retired"
                retired.mkdir(mode=0o700, exist_ok=True)
                os.replace(src, retired / src.name)
