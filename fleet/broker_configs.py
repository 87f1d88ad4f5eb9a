"""Broker configs with the fleet's credentials for NATS and RabbitMQ (mosquitto: fleet/broker_files.py).

``edgeops fleet broker-config --kind nats|rabbitmq|mosquitto`` writes a config the broker starts
with, holding every password user the enrolment knows: the console (``[broker]`` password of
fleet.toml), the extra console replicas (ENROLL/consoles/NAME/broker.toml) and the devices
enrolled with ``--method password`` (ENROLL/devices/ID/password). Each user gets the same rights
as in mosquitto's ACL: consoles the whole ``edgeops/v1`` tree, a device its own subtree
(publish state, events, telemetry, fetch/req, capture; subscribe cmd, fetch/resp, capture/ack).
Once written, ``enroll`` and ``console-user`` rewrite it with the new user (the settings of the
first run are kept in ``settings.json`` next to it); reload the broker afterwards.

- NATS (``ENROLL/nats/nats.conf``): an ``mqtt`` block on JetStream, the NATS client port on
  loopback, users allowed MQTT connections only, bcrypt password hashes (the system's libcrypt).
  MQTT topics are NATS subjects with ``/`` as ``.``. Reload: ``nats-server --signal reload``.
- RabbitMQ (``ENROLL/rabbitmq/``): ``rabbitmq.conf`` (MQTT listener, no anonymous MQTT, no AMQP
  listener: devices cannot reach queues except through MQTT), ``enabled_plugins``
  (rabbitmq_mqtt) and ``definitions.json`` (users with salted SHA-256 hashes, the vhost and topic
  permissions on ``amq.topic``, where ``{username}`` confines a device). Reload:
  ``rabbitmqctl import_definitions definitions.json``.

Devices enrolled with a certificate are left out (the result lists them): NATS and RabbitMQ
map certificates to users differently from mosquitto; enrol devices for them with passwords.
The files hold password hashes: written like mosquitto's password file (0640, the broker's group).
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import json
import pwd
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from edgeops.errors import ConfigError
from edgeops.fleet.broker_files import BrokerAccess, broker_access, password_listener_bind, password_listener_port, write_broker_file
from edgeops.fleet.config import FleetConfig
from edgeops.protocol import PROTOCOL

KINDS = ("mosquitto", "nats", "rabbitmq")
DEVICE_PUBLISH = ("state", "events", "telemetry", "fetch/req", "capture")
DEVICE_SUBSCRIBE = ("cmd", "fetch/resp", "capture/ack")
MQTT_DELIVERY = "$MQTT.sub.>"  # NATS: where JetStream delivers a QoS 1 subscription's messages
# The passwords are random 144-bit tokens (secrets.token_urlsafe(24)): a slow hash adds no
# safety, and the broker checks it at every connect (10,000 devices reconnecting at cost 11:
# ~15 minutes of broker CPU). 4 is bcrypt's least cost.
BCRYPT_COST = 4


@dataclass(frozen=True)
class BrokerUser:
    """A user of the broker: a console (the whole tree) or a device (its own subtree)."""

    name: str
    password: str
    console: bool


def broker_users(config: FleetConfig) -> tuple[list[BrokerUser], list[str]]:
    """(users with a password, device ids enrolled with a certificate: left out)."""
    users: list[BrokerUser] = []
    main = config.broker.resolved_password()
    if not main:
        where = f"environment variable {config.broker.password_env}" if config.broker.password_env else "fleet.toml [broker] password"
        raise ConfigError(f"the console's broker password is not set ({where}): the broker config needs it for user {config.enroll.console_username!r}")
    users.append(BrokerUser(config.enroll.console_username, main, True))
    enroll = config.path(config.enroll.dir)
    for d in sorted((enroll / "consoles").iterdir()) if (enroll / "consoles").is_dir() else []:
        toml = d / "broker.toml"
        if not toml.exists():
            continue
        try:
            password = tomllib.loads(toml.read_text())["broker"].get("password")
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"{toml}: unreadable ({e}); run `edgeops fleet console-user {d.name}` again") from e
        if password and d.name != config.enroll.console_username:
            users.append(BrokerUser(d.name, password, True))
    left_out = []
    for d in sorted((enroll / "devices").iterdir()) if (enroll / "devices").is_dir() else []:
        pw = d / "password"
        if pw.exists():
            users.append(BrokerUser(d.name, pw.read_text().strip(), False))
        elif (d / "client.crt").exists():
            left_out.append(d.name)
    return users, left_out


def bcrypt_hash(password: str, cost: int = BCRYPT_COST) -> str:
    """A ``$2b$`` bcrypt hash from the system's libcrypt (glibc's libxcrypt has bcrypt)."""
    name = ctypes.util.find_library("crypt")
    if name is None:
        raise ConfigError("no libcrypt on this host: NATS password hashes need its bcrypt (install libcrypt1 / libxcrypt)")
    lib = ctypes.CDLL(name)
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2b$", cost, None, 0)
    out = lib.crypt(password.encode(), salt) if salt else None
    if not out or not out.startswith(b"$2b$"):
        raise ConfigError("this host's libcrypt has no bcrypt ($2b$): NATS password hashes need it")
    return out.decode()


def rabbit_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt(4) + SHA-256(salt + password))."""
    salt = salt if salt is not None else secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _subject(topic: str) -> str:
    return topic.replace("/", ".")


def _q(text: str) -> str:
    return json.dumps(text)  # NATS config strings take JSON's escapes


def nats_conf(users: list[BrokerUser], mqtt_port: int, bind: str | None, client_port: int, store_dir: str, server_name: str = "edgeops") -> str:
    """nats-server config: MQTT on JetStream, the users and their subjects."""
    root = _subject(PROTOCOL)
    lines = []
    for u in users:
        # QoS 1 subscriptions are JetStream consumers delivering on $MQTT.sub.<id>: the
        # subscriber's own connection subscribes there, so every user needs it
        if u.console:
            perms = f"publish: [{_q(root + '.>')}], subscribe: [{_q(root + '.>')}, {_q(MQTT_DELIVERY)}]"
        else:
            pub = ", ".join(_q(f"{root}.{u.name}.{_subject(k)}") for k in DEVICE_PUBLISH)
            sub = ", ".join([*(_q(f"{root}.{u.name}.{_subject(k)}") for k in DEVICE_SUBSCRIBE), _q(MQTT_DELIVERY)])
            perms = f"publish: [{pub}], subscribe: [{sub}]"
        lines.append(f"    {{ user: {_q(u.name)}, password: {_q(bcrypt_hash(u.password))}, allowed_connection_types: [\"MQTT\"], permissions: {{ {perms} }} }}")
    host = bind or "0.0.0.0"
    return (
        "# edgeops NATS config (edgeops fleet broker-config --kind nats; enroll and console-user rewrite it)\n"
        "# reload after an enrolment: nats-server --signal reload\n"
        f"server_name: {_q(server_name)}\n"
        "# NATS clients: this host only (consoles and devices speak MQTT)\n"
        f"listen: \"127.0.0.1:{client_port}\"\n"
        "# MQTT sessions, QoS 1 messages and retained states live in JetStream\n"
        f"jetstream {{ store_dir: {_q(store_dir)} }}\n"
        f"mqtt {{ host: {_q(host)}, port: {mqtt_port} }}\n"
        "authorization {\n"
        "  users: [\n" + "\n".join(lines) + "\n  ]\n}\n"
    )


def rabbitmq_files(users: list[BrokerUser], mqtt_port: int, bind: str | None, definitions_path: Path) -> dict[str, str]:
    """rabbitmq.conf, enabled_plugins and definitions.json for the MQTT plugin."""
    root = PROTOCOL.replace("/", r"\.")
    dev_write = "|".join(k.replace("/", r"\.") for k in DEVICE_PUBLISH)
    dev_read = "|".join(k.replace("/", r"\.") for k in DEVICE_SUBSCRIBE)
    definitions = {
        "vhosts": [{"name": "/"}],
        "users": [{"name": u.name, "password_hash": rabbit_hash(u.password), "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []} for u in users],
        # queue and exchange rights: the MQTT plugin's own subscription queues; AMQP is off (rabbitmq.conf)
        "permissions": [{"user": u.name, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"} for u in users],
        # topics (routing keys on amq.topic, '/' as '.'): what mosquitto's ACL grants
        "topic_permissions": [
            {"user": u.name, "vhost": "/", "exchange": "amq.topic", "write": f"^{root}\\..+", "read": f"^{root}\\..+"}
            if u.console
            else {"user": u.name, "vhost": "/", "exchange": "amq.topic", "write": f"^{root}\\.{{username}}\\.({dev_write})$", "read": f"^{root}\\.{{username}}\\.({dev_read})$"}
            for u in users
        ],
    }
    conf = (
        "# edgeops RabbitMQ config (edgeops fleet broker-config --kind rabbitmq; enroll and console-user rewrite it)\n"
        "# no AMQP listener: clients reach the broker through MQTT only\n"
        "listeners.tcp = none\n"
        f"mqtt.listeners.tcp.default = {bind + ':' if bind else ''}{mqtt_port}\n"
        "mqtt.allow_anonymous = false\n"
        "mqtt.vhost = /\n"
        "mqtt.exchange = amq.topic\n"
        "# users, permissions and topic permissions; after an enrolment: rabbitmqctl import_definitions FILE\n"
        f"load_definitions = {definitions_path.resolve()}\n"
    )
    return {"rabbitmq.conf": conf, "enabled_plugins": "[rabbitmq_mqtt].\n", "definitions.json": json.dumps(definitions, indent=2) + "\n"}


def config_dir(config: FleetConfig, kind: str) -> Path:
    """ENROLL/nats or ENROLL/rabbitmq (outside ENROLL/broker, which mosquitto's include_dir reads)."""
    return config.path(config.enroll.dir) / kind


def _access(config: FleetConfig, kind: str, group: str | None) -> BrokerAccess:
    """The broker's group: --broker-group, else [enroll] broker_group, else the group of the
    user the broker's package runs as (``nats``, ``rabbitmq``) when the host has one."""
    if group or config.enroll.broker_group:
        return broker_access(config, group)
    try:
        user = pwd.getpwnam(kind)
    except KeyError:
        return BrokerAccess(None, None, f"no {kind!r} user on this host: the config is 0600; set --broker-group to the group the broker runs as")
    import grp

    name = grp.getgrgid(user.pw_gid).gr_name
    return BrokerAccess(name, user.pw_gid, f"config readable by group {name!r} (0640)")


def write_broker_config(
    config: FleetConfig, kind: str, mqtt_port: int | None = None, bind: str | None = None, client_port: int = 4222,
    store_dir: str = "/var/lib/nats/jetstream", group: str | None = None,
) -> dict:
    """Write the config of ``kind`` with the enrolment's users; returns what was written."""
    if kind not in KINDS:
        raise ConfigError(f"--kind {kind!r}: one of {', '.join(KINDS)}")
    if kind == "mosquitto":
        from edgeops.fleet.enroll import ensure_acl

        access = _access(config, kind, group)
        ensure_acl(config, access)
        d = config.path(config.enroll.dir) / "broker"
        return {"kind": kind, "files": sorted(str(p) for p in d.glob("*.conf")), "include": f"include_dir {d.resolve()}", "notes": [access.note]}
    port = mqtt_port if mqtt_port is not None else password_listener_port(config) or 1883
    bind = bind if bind is not None else password_listener_bind(config)
    settings = {"mqtt_port": port, "bind": bind, "client_port": client_port, "store_dir": store_dir, "group": group}
    return _render(config, kind, settings)


def _render(config: FleetConfig, kind: str, settings: dict) -> dict:
    users, left_out = broker_users(config)
    access = _access(config, kind, settings.get("group"))
    d = config_dir(config, kind)
    written = []
    notes = [access.note]
    if kind == "nats":
        files = {"nats.conf": nats_conf(users, settings["mqtt_port"], settings["bind"], settings["client_port"], settings["store_dir"])}
        start = f"nats-server -c {(d / 'nats.conf').resolve()}"
    else:
        files = rabbitmq_files(users, settings["mqtt_port"], settings["bind"], d / "definitions.json")
        start = f"RABBITMQ_CONFIG_FILE={(d / 'rabbitmq.conf').resolve()} RABBITMQ_ENABLED_PLUGINS_FILE={(d / 'enabled_plugins').resolve()} rabbitmq-server"
    for name, text in files.items():
        secret = name in ("nats.conf", "definitions.json")
        warning = write_broker_file(d / name, text, access, secret=secret)
        notes += [warning] if warning else []
        written.append(str(d / name))
    write_broker_file(d / "settings.json", json.dumps(settings, indent=2) + "\n")
    if left_out:
        notes.append(f"{len(left_out)} devices enrolled with a certificate are not in it ({', '.join(left_out[:5])}{'...' if len(left_out) > 5 else ''}): enrol them with --method password for {kind}")
    return {"kind": kind, "files": written, "users": len(users), "devices_left_out": left_out, "start": start, "notes": notes}


def refresh_broker_configs(config: FleetConfig) -> list[str]:
    """Rewrite the NATS and RabbitMQ configs ``broker-config`` made before (enroll and
    console-user call it after adding a user); returns the files rewritten."""
    out: list[str] = []
    for kind in ("nats", "rabbitmq"):
        path = config_dir(config, kind) / "settings.json"
        if path.exists():
            try:
                settings = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise ConfigError(f"{path}: unreadable ({e}); run `edgeops fleet broker-config --kind {kind}` again") from e
            out += _render(config, kind, settings)["files"]
    return out
