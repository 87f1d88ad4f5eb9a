"""The console's broker identity: a client id no device can take over.

MQTT brokers let a new connection with an existing client id take over that session: the old
connection is dropped and the newcomer inherits its subscriptions and queued messages. If any
authenticated device could connect as ``edgeops-console``, it would kick the console every
second and receive (and acknowledge) the telemetry and events queued for it; the devices have
already deleted those from their spools, so they are lost for good.

The generated broker config therefore binds every client id to the authenticated identity
(mosquitto ``use_username_as_clientid true``, on the certificate listener after
``use_identity_as_username``): a device's connection always gets its own id, whatever it asks
for. The console's side of that bargain is checkable from fleet.toml alone, and
:func:`check_console_identity` refuses to start a console that breaks it:

- with authentication (a username or a client certificate) the client id must equal the
  identity the broker knows the console by, so the broker-forced id and the configured one are
  the same session (and two replicas need two broker users: ``edgeops fleet console-user``);
- without authentication the broker must be on this host (loopback), or the operator says
  ``allow_anonymous_broker = true``: an anonymous broker lets anyone pick any client id.
"""

from __future__ import annotations

from pathlib import Path

from edgeops.errors import ConfigError
from edgeops.fleet.config import BrokerConfig
from edgeops.fleet.hosts import is_loopback


def certificate_identity(cert_file: str | Path) -> str:
    """The common name of a PEM client certificate (what ``use_identity_as_username`` uses)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    path = Path(cert_file)
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"broker.cert_file {path}: cannot read the console's client certificate ({e})") from e
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise ConfigError(f"broker.cert_file {path}: the certificate has no common name, so the broker cannot map it to a user; issue one with `edgeops fleet broker-cert`")
    return str(names[0].value)


def console_identity(cfg: BrokerConfig) -> str | None:
    """The user the broker knows the console by (certificate CN or username); None when anonymous."""
    cn = certificate_identity(cfg.cert_file) if cfg.cert_file else None
    if cn is not None and cfg.username and cfg.username != cn:
        raise ConfigError(
            f"fleet.toml [broker]: username {cfg.username!r} and the common name {cn!r} of cert_file differ; "
            "the broker knows the console by one of them, so make them equal (or drop username with a certificate listener)"
        )
    return cn or cfg.username


def check_console_identity(cfg: BrokerConfig, source: str = "fleet.toml") -> None:
    """Refuse a broker config that would let a device take the console's client id (ConfigError)."""
    identity = console_identity(cfg)
    if identity is None:
        if not is_loopback(cfg.host) and not cfg.allow_anonymous_broker:
            raise ConfigError(
                f"{source} [broker]: the broker at {cfg.url} is reached without a username or client certificate, so any client "
                f"there can connect as {cfg.client_id!r} and take over the console's session; set broker.username/password "
                "(or cert_file/key_file) from `edgeops fleet init`/`broker-cert`, or set allow_anonymous_broker = true on a network you trust"
            )
        return
    if cfg.client_id != identity:
        raise ConfigError(
            f"{source} [broker]: client_id {cfg.client_id!r} differs from the console's broker user {identity!r}; a device could "
            f"connect as {cfg.client_id!r} unless the broker binds client ids to users, and where it does the console's session is "
            f"{identity!r} anyway. Remove client_id (it defaults to the username) or set client_id = {identity!r}, and include the "
            "generated enroll/broker/*.conf (use_username_as_clientid true). Each console replica needs its own broker user: "
            "`edgeops fleet console-user NAME`"
        )
