"""Files the MQTT broker reads: written atomically, readable by the broker's user, includable together.

mosquitto usually runs as its own user (``mosquitto``), drops to it when started as root, and
re-reads the password file and ACL on ``SIGHUP``. Every file it reads is therefore written to
a temporary name, fsynced and renamed over the old one (a reload never sees half a file), and
with a mode the broker can read:

- secrets (``mosquitto.passwd``: password hashes, ``broker/server.key``): 0640, group = the
  broker's group (``enroll.broker_group``, ``--broker-group``, else the group of the
  ``mosquitto`` user when the host has one). Without a group: 0600 for the user running the
  command, and the result says so;
- the rest (ACL, certificates, ``broker/*.conf``): 0644.

``ENROLL/broker/`` holds the mosquitto config, one concern per file, so that
``include_dir ENROLL/broker`` loads them all (``[enroll] password_listener_port = 0`` drops the
password listener when every client uses a certificate)::

    security.conf            allow_anonymous false, password_file, acl_file, set_tcp_nodelay (global: once)
    password-listener.conf   listener PORT + use_username_as_clientid   (fleet init / enroll)
    tls-listener.conf        listener 8883 + certificates + use_identity_as_username
                             + use_username_as_clientid                  (fleet broker-cert)
    tls.json                 the device URL of the TLS listener (read by enroll --method cert)

Global security options (``acl_file``, ``password_file``) appear in ``security.conf`` only:
mosquitto refuses a second ``acl_file``. Both listeners bind the client id to the
authenticated identity, so no device can take over another client's session
(see :mod:`edgeops.fleet.broker_identity`).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from edgeops.errors import ConfigError
from edgeops.fleet.config import FleetConfig

BROKER_USER = "mosquitto"  # the user Debian/Ubuntu/Alpine/RHEL mosquitto packages run as


@dataclass(frozen=True)
class BrokerAccess:
    """Which group the broker reads its secret files as (None: no group; files stay 0600)."""

    group: str | None
    gid: int | None
    note: str  # what is done, for the command's output

    @property
    def secret_mode(self) -> int:
        """Mode of the password file and the server key."""
        return 0o640 if self.gid is not None else 0o600


def broker_access(config: FleetConfig, group: str | None = None) -> BrokerAccess:
    """The broker's group: ``group`` (CLI), else ``enroll.broker_group``, else the mosquitto user's."""
    name = group or config.enroll.broker_group
    if name:
        try:
            gid = grp.getgrnam(name).gr_gid
        except KeyError:
            where = "--broker-group" if group else "fleet.toml [enroll] broker_group"
            raise ConfigError(f"{where} {name!r}: no such group on this host; give the group the broker runs as (e.g. mosquitto)") from None
        return BrokerAccess(name, gid, f"broker files readable by group {name!r} (0640)")
    try:
        user = pwd.getpwnam(BROKER_USER)
    except KeyError:
        me = pwd.getpwuid(os.getuid()).pw_name
        return BrokerAccess(
            None, None,
            f"no {BROKER_USER!r} user on this host: the password file and broker key are 0600, readable by {me!r} only; "
            "run the broker as that user or set broker_group in fleet.toml [enroll] (or --broker-group) to the group it runs as",
        )
    gname = grp.getgrgid(user.pw_gid).gr_name
    return BrokerAccess(gname, user.pw_gid, f"broker files readable by group {gname!r} (0640), the {BROKER_USER!r} user's group")


def write_broker_file(path: Path, data: bytes | str, access: BrokerAccess | None = None, secret: bool = False) -> str | None:
    """Write a file the broker reads, atomically; returns a warning when the group could not be set.

    ``secret`` files get ``access.secret_mode`` and the broker's group, the others 0644. The
    group is set on the temporary file before the rename, so the broker never sees the file
    with a mode it cannot read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = access.secret_mode if secret and access else (0o600 if secret else 0o644)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    warning = None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if secret and access is not None and access.gid is not None:
            try:
                os.chown(tmp, -1, access.gid)
            except PermissionError:
                mode = 0o600
                warning = f"{path}: cannot give group {access.group!r} read access (not root and not a member): run `chgrp {access.group} {path} && chmod 0640 {path}`"
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return warning


def password_listener_bind(config: FleetConfig) -> str | None:
    """127.0.0.1 when every client reaches the password listener on this host (the URLs name a
    loopback host), else None (all interfaces): passwords cross no network they need not cross."""
    hosts = {urlparse(u).hostname for u in (config.enroll.device_broker_url, config.broker.url) if u and urlparse(u).scheme in ("mqtt", "tcp")}
    return "127.0.0.1" if hosts and hosts <= {"127.0.0.1", "localhost"} else None


def password_listener_port(config: FleetConfig) -> int:
    """Port of the password listener: ``enroll.password_listener_port``, else the mqtt:// URL's, else 1883."""
    if config.enroll.password_listener_port is not None:
        return config.enroll.password_listener_port
    for url in (config.enroll.device_broker_url, config.broker.url):
        u = urlparse(url or "")
        if u.scheme in ("mqtt", "tcp"):
            return u.port or 1883
    return 1883


def broker_dir(config: FleetConfig) -> Path:
    """ENROLL/broker: the mosquitto config files and the broker's TLS files."""
    return config.path(config.enroll.dir) / "broker"


def security_conf(config: FleetConfig) -> str:
    """Global mosquitto options: no anonymous clients, the password file, the ACL."""
    e = config.enroll
    return (
        "# edgeops broker security (edgeops fleet init/enroll/broker-cert; regenerate rather than edit)\n"
        "# global options: include this file once (include_dir of this folder does)\n"
        "allow_anonymous false\n"
        f"password_file {config.path(e.password_file).resolve()}\n"
        f"acl_file {config.path(e.acl_file).resolve()}\n"
        "# agents fetch bundles as request/response chunks: without this every request waits for\n"
        "# a delayed ACK (~40 ms on Linux); bench/agent.py measured 951 ms vs 226 ms for 20 MB\n"
        "set_tcp_nodelay true\n"
    )


def password_listener_conf(port: int, bind: str | None = None) -> str:
    """A listener for username/password clients whose client id is forced to the username."""
    return (
        "# edgeops password listener (edgeops fleet init/enroll; [enroll] password_listener_port = 0 removes it)\n"
        f"listener {port}{' ' + bind if bind else ''}\n"
        "# the client id is the username, whatever the client asks for: no device can take over the\n"
        "# console's or another device's session\n"
        "use_username_as_clientid true\n"
    )


def tls_listener_conf(port: int, ca: Path, cert: Path, key: Path) -> str:
    """A TLS listener where the certificate's CN is the user and the client id."""
    return (
        "# edgeops TLS listener for devices and console (edgeops fleet broker-cert)\n"
        f"listener {port}\n"
        f"cafile {ca.resolve()}\n"
        f"certfile {cert.resolve()}\n"
        f"keyfile {key.resolve()}\n"
        "require_certificate true\n"
        "use_identity_as_username true\n"
        "# the client id is the certificate's CN, whatever the client asks for\n"
        "use_username_as_clientid true\n"
    )


def write_broker_confs(config: FleetConfig) -> list[Path]:
    """(Re)write security.conf and password-listener.conf (removed when the port is 0)."""
    d = broker_dir(config)
    write_broker_file(d / "security.conf", security_conf(config))
    paths = [d / "security.conf"]
    listener = d / "password-listener.conf"
    port = password_listener_port(config)
    if port:
        write_broker_file(listener, password_listener_conf(port, password_listener_bind(config)))
        paths.append(listener)
    else:
        listener.unlink(missing_ok=True)
    return paths


def write_tls_record(config: FleetConfig, url: str) -> Path:
    """Remember the TLS listener's device URL (enroll --method cert writes it into agent.toml)."""
    path = broker_dir(config) / "tls.json"
    write_broker_file(path, json.dumps({"device_broker_url": url}, indent=2) + "\n")
    return path


def tls_device_url(config: FleetConfig) -> str | None:
    """The device URL of the TLS listener ``broker-cert`` made, None before it ran."""
    path = broker_dir(config) / "tls.json"
    try:
        return json.loads(path.read_text())["device_broker_url"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: unreadable ({e}); run `edgeops fleet broker-cert` again") from e
