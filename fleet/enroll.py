"""Device enrolment: broker credentials, the ACL that confines each device, and its agent.toml.

Two ways for a device to authenticate to the broker:

- **password**: an entry in a mosquitto password file, hashed exactly like ``mosquitto_passwd``
  does in mosquitto 2 (``$7$``: PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt), with the
  device id as username. The password is written (0600) next to the device's agent.toml.
- **cert**: an X.509 client certificate issued by the fleet CA (EC P-256, made with
  ``cryptography``) with the device id as CN; the broker maps it to the username with
  ``use_identity_as_username true``.

The ACL (mosquitto syntax) gives the console user the whole ``edgeops/v1/#`` tree and every
other user, through ``pattern`` lines with ``%u``, only its own subtree: it may publish its
state, events, telemetry and fetch requests, and read its commands and fetch responses, so it
can neither read another device's commands nor publish as another device.

Both listeners of the generated broker config bind the client id to the authenticated
identity (``use_username_as_clientid``), so a device cannot take over the console's or another
device's session whatever client id it sends; each console replica gets its own broker user
(:func:`add_console_user`).

Files under ``enroll.dir`` (see fleet.toml)::

    mosquitto.passwd  mosquitto.acl   password hashes (0640, broker's group) and the ACL
    broker/*.conf  broker/server.*    the broker's config and TLS files (see broker_files.py)
    ca/ca.key ca/ca.crt               the fleet CA (cert mode)
    consoles/<name>/                  broker credentials of an extra console replica
    devices/<id>/agent.toml password api-token root.json command-*.pub.json [client.crt client.key ca.crt]

Mosquitto reads the password and ACL files at start and on SIGHUP: reload it after enrolling.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from edgeops.errors import ConfigError, FleetError
from edgeops.fleet.broker_configs import refresh_broker_configs
from edgeops.fleet.broker_files import (
    BrokerAccess,
    broker_access,
    broker_dir,
    password_listener_port,
    tls_device_url,
    tls_listener_conf,
    write_broker_confs,
    write_broker_file,
    write_tls_record,
)
from edgeops.fleet.config import FleetConfig, render_toml
from edgeops.protocol import DEVICE_ID_PATTERN, DEVICE_ID_RULE, PROTOCOL, valid_device_id

PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default for $7$
SALT_BYTES = 12


def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """A mosquitto 2 password hash: ``$7$<iterations>$<b64 salt>$<b64 PBKDF2-SHA512>``."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_mosquitto_hash(password: str, encoded: str) -> bool:
    """True when ``password`` matches a ``$7$`` hash line value."""
    try:
        _, kind, iterations, salt, digest = encoded.split("$")
    except ValueError:
        return False
    if kind != "7":
        return False
    return secrets.compare_digest(mosquitto_hash(password, base64.b64decode(salt), int(iterations)), encoded)


def _write_private(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class PasswordFile:
    """A mosquitto password file (``user:hash`` lines), edited atomically."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, str] = {}
        if self.path.exists():
            for n, line in enumerate(self.path.read_text().splitlines(), 1):
                if not line.strip() or line.startswith("#"):
                    continue
                user, sep, value = line.partition(":")
                if not sep:
                    raise ConfigError(f"{self.path}:{n}: not a 'user:hash' line")
                self.entries[user] = value

    def set(self, username: str, password: str) -> None:
        """Add or replace the entry of ``username``."""
        self.entries[username] = mosquitto_hash(password)

    def save(self, access: BrokerAccess | None = None) -> str | None:
        """Write the file atomically, readable by the broker's group (0640; 0600 without one).

        Returns a warning when the group could not be set (see ``write_broker_file``).
        """
        return write_broker_file(self.path, "".join(f"{u}:{h}\n" for u, h in sorted(self.entries.items())), access, secret=True)


def acl_text(console_usernames: str | list[str]) -> str:
    """The mosquitto ACL: the console users see everything, each device only its own subtree."""
    p = PROTOCOL
    users = [console_usernames] if isinstance(console_usernames, str) else list(console_usernames)
    consoles = "".join(f"user {u}\ntopic readwrite {p}/#\n" for u in users)
    return (
        "# edgeops broker ACL (written by `edgeops fleet enroll`; regenerate rather than edit)\n"
        f"{consoles}"
        "\n"
        "# every other user (a device: username = device id = %u) is confined to its own subtree\n"
        f"pattern write {p}/%u/state\n"
        f"pattern write {p}/%u/events\n"
        f"pattern write {p}/%u/telemetry\n"
        f"pattern write {p}/%u/fetch/req\n"
        f"pattern read {p}/%u/cmd\n"
        f"pattern read {p}/%u/fetch/resp\n"
        f"pattern write {p}/%u/capture\n"
        f"pattern read {p}/%u/capture/ack\n"
    )


class FleetCA:
    """The fleet's certificate authority for device client certificates (EC P-256)."""

    def __init__(self, ca_dir: str | Path):
        self.dir = Path(ca_dir)
        self.key_path = self.dir / "ca.key"
        self.cert_path = self.dir / "ca.crt"

    def ensure(self, common_name: str = "edgeops fleet CA", days: int = 3650) -> None:
        """Create the CA key and self-signed certificate when missing."""
        if self.cert_path.exists() and self.key_path.exists():
            return
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        _write_private(self.key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        _write_private(self.cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def issue(self, device_id: str, days: int = 825) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) for a device: CN = device id, client authentication only."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        self.ensure()
        ca_key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return (
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM),
        )


    def issue_server(self, names: list[str], days: int = 825) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) for the broker's TLS listener: every name in the SAN.

        Names that parse as IP addresses become IP SANs (agents check the broker's hostname or
        address against the certificate), the rest DNS names.
        """
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        if not names:
            raise ConfigError("broker certificate: give at least one host name or IP address the devices use to reach the broker")
        sans: list = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", name):
                    raise ConfigError(f"broker certificate: {name!r} is neither a host name nor an IP address") from None
                sans.append(x509.DNSName(name))
        self.ensure()
        ca_key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return (
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM),
        )


def write_broker_tls(config: FleetConfig, names: list[str], port: int = 8883, access: BrokerAccess | None = None) -> dict:
    """Issue the broker's server certificate and the console's client certificate from the fleet CA.

    Writes ENROLL/broker/{server.crt,server.key,ca.crt,tls-listener.conf,tls.json} (the key
    0640 with the broker's group, see broker_files.py), the shared security.conf, and
    ENROLL/console/{client.crt,client.key}; returns their paths and the fleet.toml [broker]
    lines the console needs. Devices enrolled with ``--method cert`` then connect with their own
    certificates (identity = device id = ACL user = client id), so the broker needs no password
    file for them.
    """
    access = access or broker_access(config)
    ca = FleetCA(config.path(config.enroll.ca_dir))
    key_pem, cert_pem = ca.issue_server(names)
    bdir = broker_dir(config)
    notes = [access.note]
    warning = write_broker_file(bdir / "server.key", key_pem, access, secret=True)
    notes += [warning] if warning else []
    write_broker_file(bdir / "server.crt", cert_pem)
    write_broker_file(bdir / "ca.crt", ca.cert_path.read_bytes())
    console_dir = config.path(config.enroll.dir) / "console"
    ckey, ccert = ca.issue(config.enroll.console_username)
    _write_private(console_dir / "client.key", ckey)
    _write_private(console_dir / "client.crt", ccert, 0o644)
    write_broker_file(bdir / "tls-listener.conf", tls_listener_conf(port, bdir / "ca.crt", bdir / "server.crt", bdir / "server.key"))
    ensure_acl(config, access)
    host = names[0]
    device_url = f"mqtts://{host}:{port}"
    write_tls_record(config, device_url)
    toml_lines = (
        "[broker]\n"
        f'url = "{device_url}"\n'
        f'ca_file = "{(bdir / "ca.crt").resolve()}"\n'
        f'cert_file = "{(console_dir / "client.crt").resolve()}"\n'
        f'key_file = "{(console_dir / "client.key").resolve()}"\n'
    )
    return {
        "server_cert": str(bdir / "server.crt"),
        "server_key": str(bdir / "server.key"),
        "ca_cert": str(bdir / "ca.crt"),
        "listener_conf": str(bdir / "tls-listener.conf"),
        "broker_dir": str(bdir),
        "console_cert": str(console_dir / "client.crt"),
        "console_key": str(console_dir / "client.key"),
        "fleet_toml_broker": toml_lines,
        "device_broker_url": device_url,
        "notes": notes,
    }


@dataclass
class Enrollment:
    """What ``enroll_device`` wrote."""

    device_id: str
    method: str
    device_dir: Path
    agent_toml: Path
    files: list[Path] = field(default_factory=list)
    password: str | None = None
    notes: list[str] = field(default_factory=list)  # what was done about the broker files' group

    def to_dict(self) -> dict:
        """JSON form (the password is not included)."""
        return {"device_id": self.device_id, "method": self.method, "device_dir": str(self.device_dir), "agent_toml": str(self.agent_toml), "files": [str(f) for f in self.files], "notes": self.notes}


def parse_tags(text: str | None) -> dict[str, str]:
    """``k=v,k2=v2`` -> dict; ConfigError naming the bad pair."""
    tags: dict[str, str] = {}
    for pair in [p.strip() for p in (text or "").split(",") if p.strip()]:
        k, sep, v = pair.partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"--tags: {pair!r} is not KEY=VALUE")
        tags[k.strip()] = v.strip()
    return tags


def consoles_dir(config: FleetConfig) -> Path:
    """ENROLL/consoles: one folder per extra console replica user."""
    return config.path(config.enroll.dir) / "consoles"


def console_users(config: FleetConfig) -> list[str]:
    """Broker users with the whole tree: the console's and one per extra replica."""
    extra = sorted(d.name for d in consoles_dir(config).iterdir() if d.is_dir()) if consoles_dir(config).is_dir() else []
    return [config.enroll.console_username] + [u for u in extra if u != config.enroll.console_username]


def ensure_acl(config: FleetConfig, access: BrokerAccess | None = None) -> Path:
    """(Re)write the ACL file and the broker's security.conf / password-listener.conf."""
    acl = config.path(config.enroll.acl_file)
    write_broker_file(acl, acl_text(console_users(config)), access)
    write_broker_confs(config)
    return acl


def set_console_password(config: FleetConfig, password: str, access: BrokerAccess | None = None) -> list[str]:
    """Put the console's own broker user into the password file; returns notes on its group."""
    access = access or broker_access(config)
    pw = PasswordFile(config.path(config.enroll.password_file))
    pw.set(config.enroll.console_username, password)
    warning = pw.save(access)
    ensure_acl(config, access)
    refresh_broker_configs(config)  # NATS / RabbitMQ configs made before hold the console's hash too
    return [access.note] + ([warning] if warning else [])


def _device_url(config: FleetConfig, method: str) -> str:
    """The broker URL a device enrolled with ``method`` reaches its listener at.

    Password devices use the password listener (an mqtts:// URL there would be the certificate
    listener, which ignores passwords); certificate devices the TLS listener ``broker-cert``
    made (its port, not the plain one with an s added).
    """
    from urllib.parse import urlparse

    configured = config.enroll.device_broker_url
    scheme = urlparse(configured).scheme if configured else None
    if method == "password":  # always the port password-listener.conf opens
        port = password_listener_port(config)
        if not port:
            raise ConfigError("--method password: fleet.toml [enroll] password_listener_port = 0 (no password listener); enroll with --method cert or set the port")
        host = urlparse(configured or config.broker.url).hostname or "127.0.0.1"
        return f"mqtt://{host}:{port}"
    if scheme in ("mqtts", "ssl"):
        return configured
    recorded = tls_device_url(config)
    if recorded:
        return recorded
    raise ConfigError(
        "--method cert: no TLS listener yet; run `edgeops fleet broker-cert HOST ...` first "
        "(or set device_broker_url = \"mqtts://host:port\" in fleet.toml [enroll])"
    )


def _check_user_name(config: FleetConfig, name: str, kind: str) -> None:
    if not valid_device_id(name):
        # one pattern every supported broker (mosquitto, NATS, RabbitMQ) accepts as a topic level and user
        raise ConfigError(f"{kind} {name!r} does not match {DEVICE_ID_PATTERN} ({DEVICE_ID_RULE}; '.' breaks NATS and RabbitMQ MQTT); pick another")
    if kind == "device id" and name in console_users(config):
        raise ConfigError(f"device id {name!r} is a console's broker user; pick another id")
    if kind == "console user" and (config.path(config.enroll.dir) / "devices" / name).exists():
        raise ConfigError(f"console user {name!r} is an enrolled device; pick another name")


def add_console_user(config: FleetConfig, name: str, method: str = "password", access: BrokerAccess | None = None) -> dict:
    """A broker user for one more console replica (the broker forces client id = user, so each
    replica needs its own, or they would keep taking each other's session).

    Writes ENROLL/consoles/NAME/broker.toml (0600): the ``[broker]`` lines for that replica's
    fleet.toml; with ``password`` a password file entry, with ``cert`` a client certificate
    (CN = NAME). Regenerates the ACL so the user gets the whole tree.
    """
    _check_user_name(config, name, "console user")
    if method not in ("password", "cert"):
        raise ConfigError(f"--method {method!r}: password or cert")
    access = access or broker_access(config)
    d = consoles_dir(config) / name
    d.mkdir(parents=True, exist_ok=True)
    notes = [access.note]
    broker: dict = {"username": name}
    if method == "password":
        password = secrets.token_urlsafe(24)
        pw = PasswordFile(config.path(config.enroll.password_file))
        pw.set(name, password)
        warning = pw.save(access)
        notes += [warning] if warning else []
        broker.update(url=_device_url(config, "password"), password=password)
    else:
        ca = FleetCA(config.path(config.enroll.ca_dir))
        key_pem, cert_pem = ca.issue(name)
        _write_private(d / "client.key", key_pem)
        _write_private(d / "client.crt", cert_pem, 0o644)
        _write_private(d / "ca.crt", ca.cert_path.read_bytes(), 0o644)
        broker.update(url=_device_url(config, "cert"), ca_file=str((d / "ca.crt").resolve()), cert_file=str((d / "client.crt").resolve()), key_file=str((d / "client.key").resolve()))
    acl = ensure_acl(config, access)
    toml = d / "broker.toml"
    _write_private(toml, f"# [broker] of console replica {name!r} (edgeops fleet console-user); secret: keep 0600\n" + render_toml({"broker": broker}))
    refreshed = refresh_broker_configs(config)  # NATS / RabbitMQ configs made before: the new user
    return {"user": name, "method": method, "broker_toml": str(toml), "acl": str(acl), "notes": notes, "broker_configs": refreshed}


def _copy_trust_files(config: FleetConfig, device_dir: Path) -> tuple[Path | None, list[Path]]:
    """root.json and the command public keys the device needs (when the repository exists)."""
    copied: list[Path] = []
    root_src = config.path(config.repository.dir) / "metadata" / "root.json"
    root_dst = None
    if root_src.exists():
        root_dst = device_dir / "root.json"
        shutil.copyfile(root_src, root_dst)
        copied.append(root_dst)
    keys_dir = config.path(config.repository.keys_dir)
    keys = []
    for pub in sorted(keys_dir.glob("command-*.pub.json")) if keys_dir.exists() else []:
        dst = device_dir / pub.name
        shutil.copyfile(pub, dst)
        keys.append(dst)
    return root_dst, copied + keys


def enroll_device(
    config: FleetConfig,
    device_id: str,
    tags: dict[str, str] | None = None,
    profile: str | None = None,
    method: str = "password",
    password: str | None = None,
    register: bool = True,
    access: BrokerAccess | None = None,
) -> Enrollment:
    """Create credentials, update the ACL, write the device's agent.toml, register it in the database."""
    _check_user_name(config, device_id, "device id")
    if method not in ("password", "cert"):
        raise ConfigError(f"--method {method!r}: password or cert")
    access = access or broker_access(config)
    notes = [access.note]
    broker: dict = {"url": _device_url(config, method), "mqtt_version": "auto", "username": device_id}
    device_dir = config.path(config.enroll.dir) / "devices" / device_id
    device_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    if method == "password":
        password = password or secrets.token_urlsafe(24)
        pw = PasswordFile(config.path(config.enroll.password_file))
        pw.set(device_id, password)
        warning = pw.save(access)
        notes += [warning] if warning else []
        _write_private(device_dir / "password", password + "\n")
        files += [pw.path, device_dir / "password"]
        broker["password_file"] = "password"
    else:
        ca = FleetCA(config.path(config.enroll.ca_dir))
        key_pem, cert_pem = ca.issue(device_id)
        _write_private(device_dir / "client.key", key_pem)
        _write_private(device_dir / "client.crt", cert_pem, 0o644)
        shutil.copyfile(ca.cert_path, device_dir / "ca.crt")
        files += [device_dir / "client.key", device_dir / "client.crt", device_dir / "ca.crt"]
        broker.update(client_cert="client.crt", client_key="client.key", ca_file="ca.crt")
    files.append(ensure_acl(config, access))
    files += [Path(f) for f in refresh_broker_configs(config)]  # NATS / RabbitMQ configs made before: the new user
    # the bearer token local applications present to the agent's inference API (docs/agent.md)
    _write_private(device_dir / "api-token", secrets.token_urlsafe(32) + "\n")
    files.append(device_dir / "api-token")
    root, trust_files = _copy_trust_files(config, device_dir)
    files += trust_files
    agent = {
        "device_id": device_id,
        "data_dir": "/var/lib/edgeops-agent",  # the systemd unit's StateDirectory (agent/edgeops-agent.service)
        "profile": profile or "x86_64-avx2",
        "tags": tags or {},
        "broker": broker,
        "trust": {
            "root": "root.json",  # copied from REPO/metadata/root.json when the repository exists
            "command_keys": [p.name for p in trust_files if p.name.startswith("command-")],
            "repository": config.enroll.repository_http_url or "mqtt",
        },
        "api": {"token_file": "api-token"},
    }
    agent_toml = device_dir / "agent.toml"
    header = f"# agent.toml for {device_id}, written by `edgeops fleet enroll`; install with the files next to it.\n"
    _write_private(agent_toml, header + render_toml(agent), 0o644)
    files.append(agent_toml)
    if register:
        from edgeops.fleet.db import Database
        from edgeops.fleet.registry import register_devices

        db = Database.from_config(config)
        try:
            db.create_all()
            register_devices(db, [{"id": device_id, "tags": tags or {}, "profile": profile}])
        except Exception as e:
            raise FleetError(f"device {device_id}: credentials written, but registering it in {config.database.url} failed: {e}") from e
        finally:
            db.dispose()
    return Enrollment(device_id, method, device_dir, agent_toml, files, password, notes)
