"""fleet.toml: the console's configuration, validated with pydantic.

Example (``edgeops fleet init`` writes one)::

    [broker]
    url = "mqtt://127.0.0.1:1883"      # mqtts:// for TLS
    username = "edgeops-console"
    password_env = "EDGEOPS_BROKER_PASSWORD"   # or password = "..."
    protocol = "auto"                  # "5", "3.1.1" or "auto" (5, falling back to 3.1.1)
    # client_id                        # default: the username (the broker binds client ids to users)
    # allow_anonymous_broker = false   # true: accept a broker without authentication off this host
    # shared_group = "edgeops"         # MQTT shared subscriptions when running several replicas
    # failover_urls = ["mqtt://node2:1883", "mqtt://node3:1883"]   # the other nodes of a clustered broker
    # ca_file / cert_file / key_file   # TLS

    [database]
    url = "sqlite:///fleet.db"         # or postgresql+psycopg://user@host/db
    # telemetry_partitions = "auto"    # PostgreSQL: daily partitions of telemetry for a new table
                                       # ("daily": required, "off": one table); docs/scale.md

    [repository]
    dir = "repo"                       # the TUF repository (metadata/, targets/)
    keys_dir = "keys"                  # keyring with the command, snapshot and timestamp keys
    refresh_check_s = 60               # re-sign timestamp/snapshot before they expire (checked this often)

    [api]
    bind = "127.0.0.1:8780"
    tokens = ["..."]                   # Bearer tokens; or tokens_env = "EDGEOPS_FLEET_TOKEN"
    # [[api.access]]                   # named tokens with a role: viewer, operator or admin
    # name = "alice"; role = "operator"; token = "..." (or token_env = "...")
    # cert_file / key_file             # serve https (`edgeops fleet api-cert` issues them from the fleet CA)
    # ca_file                          # the CA clients verify the API with (`edgeops rollout --config`)
    # metrics_public = false           # true: /metrics without the token

    [rollouts]
    reconcile_interval_s = 2.0
    offline_timeout_s = 300
    assignment_timeout_s = 3600
    command_ttl_s = 86400

    [drift]                            # drift of served data against each bundle's reference (docs/monitoring.md)
    warn_psi = 0.1                     # PSI at which a significant drift warns ...
    alert_psi = 0.25                   # ... and alerts
    alpha = 0.01                       # significance: the KS p-value must be below this too
    min_samples = 200                  # inferences a score needs before it is read at all
    window_s = 3600                    # the scores cover the sketches received this long back

    [enroll]
    dir = "enroll"                     # password file, ACL, CA, broker/*.conf and per-device agent.toml
    # broker_group = "mosquitto"       # group the broker runs as (default: the mosquitto user's group)
    # password_listener_port = 1883    # 0: no password listener (every client uses a certificate)

Relative paths are resolved against the folder of the config file. Unknown keys are errors.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeops.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BrokerConfig(_Section):
    """How the console reaches the MQTT broker."""

    url: str = Field(default="mqtt://127.0.0.1:1883", description="mqtt://host:port or mqtts://host:port")
    failover_urls: list[str] = Field(default_factory=list, description="the other nodes of a clustered broker (same scheme); after a lost connection the console reconnects to the next one in turn")
    username: str | None = None
    password: str | None = None
    password_env: str | None = Field(default=None, description="environment variable holding the password")
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    client_id: str | None = Field(default=None, description="MQTT client id; default: the username (with authentication the broker binds the client id to it), else edgeops-console")
    allow_anonymous_broker: bool = Field(default=False, description="accept a broker reached without authentication on another host (any client there can take the console's session)")
    shared_group: str | None = Field(default=None, description="MQTT shared subscription group for events and telemetry (several replicas)")
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive_s: int = Field(default=30, ge=5)
    session_expiry_s: int = Field(default=7 * 86400, ge=0, description="MQTT 5 session expiry (events are queued for the console while it is down)")
    ingest_client_id: str = Field(default="edgeops-ingest", description="on a broker without shared subscriptions (NATS, RabbitMQ) and with shared_group set: the one ingest session the leader replica holds, so the next leader resumes what was queued for it")

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        u = urlparse(v)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
            raise ValueError(f"{v!r}: expected mqtt://host:port or mqtts://host:port")
        return v

    @model_validator(mode="after")
    def _default_client_id(self) -> "BrokerConfig":
        # the broker forces client id = username (use_username_as_clientid): say so in the config
        if self.client_id is None:
            self.client_id = self.username or "edgeops-console"
        return self

    @property
    def host(self) -> str:
        """Broker host name."""
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        """Broker port (1883 for mqtt://, 8883 for mqtts:// when not given)."""
        u = urlparse(self.url)
        return u.port or (8883 if self.tls else 1883)

    @property
    def tls(self) -> bool:
        """True for mqtts:// URLs."""
        return urlparse(self.url).scheme in ("mqtts", "ssl")

    def endpoints(self) -> list[tuple[str, int]]:
        """(host, port) of ``url`` and then of each failover URL (the same scheme, checked at load)."""
        default = 8883 if self.tls else 1883
        return [(u.hostname or "127.0.0.1", u.port or default) for u in map(urlparse, [self.url, *self.failover_urls])]

    @field_validator("failover_urls")
    @classmethod
    def _check_failover(cls, v: list[str], info) -> list[str]:
        main = urlparse(info.data.get("url") or "mqtt://x").scheme
        for url in v:
            u = urlparse(url)
            if u.scheme != main or not u.hostname:
                raise ValueError(f"{url!r}: expected {main}://host:port (the scheme of broker.url: one TLS setting for every node)")
        return v

    def resolved_password(self) -> str | None:
        """The password, from the file or from ``password_env``."""
        if self.password_env:
            return os.environ.get(self.password_env) or self.password
        return self.password


class DatabaseConfig(_Section):
    """Where the registry lives: a SQLite file by default, PostgreSQL by URL."""

    url: str = "sqlite:///fleet.db"
    schema_name: str | None = Field(default=None, alias="schema", description="PostgreSQL schema (several fleets in one database, tests)")
    table_prefix: str = Field(default="", pattern=r"^[a-z0-9_]*$")
    telemetry_partitions: Literal["auto", "daily", "off"] = Field(
        default="auto",
        description="PostgreSQL: telemetry partitioned by day, retention drops whole days (fleet/partitions.py). auto: a new table is "
        "partitioned, an existing plain one kept; daily: a plain one is refused (`edgeops fleet db partition-telemetry`); off: one table",
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if not v.startswith(("sqlite://", "postgresql")):
            raise ValueError(f"{v!r}: expected sqlite:///path or postgresql+psycopg://user@host/db")
        return v


class RepositoryConfig(_Section):
    """The TUF repository the console serves and keeps fresh."""

    dir: str = "repo"
    keys_dir: str = "keys"
    refresh_check_s: float = Field(default=60, gt=0, description="how often to check whether timestamp/snapshot must be re-signed (the trust layer re-signs a role with less than half its validity left)")
    http_prefix: str = Field(default="/repo", pattern=r"^/[A-Za-z0-9_/-]*$")


class AccessToken(_Section):
    """One ``[[api.access]]`` entry: a named token with a role (fleet/access.py)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$", description="shown in the audit log (never the token)")
    token: str | None = None
    token_env: str | None = Field(default=None, description="environment variable holding the token")
    role: Literal["viewer", "operator", "admin"]

    @model_validator(mode="after")
    def _one_source(self) -> "AccessToken":
        if bool(self.token) == bool(self.token_env):
            raise ValueError(f"access {self.name!r}: set token or token_env (one of them)")
        return self

    def resolved(self) -> str | None:
        """The token, from the file or the environment (None when the variable is unset)."""
        return self.token or os.environ.get(self.token_env or "") or None


class ApiConfig(_Section):
    """The REST API, /metrics and the HTTP repository."""

    bind: str = "127.0.0.1:8780"
    tokens: list[str] = Field(default_factory=list)
    tokens_env: str | None = "EDGEOPS_FLEET_TOKEN"
    metrics_public: bool = Field(default=False, description="serve /metrics without a token (a scraper that cannot send one); default: the token is required")
    cert_file: str | None = Field(default=None, description="PEM certificate (chain) of the API: serve https (with key_file)")
    key_file: str | None = Field(default=None, description="PEM private key of cert_file")
    ca_file: str | None = Field(default=None, description="CA certificate clients (edgeops rollout ..., --config fleet.toml) verify the API's certificate with")
    access: list[AccessToken] = Field(default_factory=list, description="named tokens with roles viewer/operator/admin; tokens/tokens_env are admin tokens")

    @model_validator(mode="after")
    def _tls_pair(self) -> "ApiConfig":
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file: set both to serve https, or neither for plain http")
        return self

    @property
    def tls(self) -> bool:
        """True when the API serves https."""
        return bool(self.cert_file)

    @field_validator("bind")
    @classmethod
    def _check_bind(cls, v: str) -> str:
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"{v!r}: expected host:port")
        return v

    @property
    def host(self) -> str:
        """Bind host."""
        return self.bind.rpartition(":")[0]

    @property
    def port(self) -> int:
        """Bind port (0: any free port)."""
        return int(self.bind.rpartition(":")[2])

    def token_roles(self) -> list[tuple[str, str, str]]:
        """(name, token, role) of every configured token: ``access`` entries, then the admin ``tokens``."""
        out = [(a.name, t, a.role) for a in self.access if (t := a.resolved())]
        out += [(f"token-{i + 1}", t, "admin") for i, t in enumerate(self.tokens) if t]
        if self.tokens_env and os.environ.get(self.tokens_env):
            out.append((self.tokens_env, os.environ[self.tokens_env], "admin"))
        return out

    def all_tokens(self) -> list[str]:
        """Tokens from the file plus the one in ``tokens_env`` (when set)."""
        out = [t for t in self.tokens if t]
        if self.tokens_env and os.environ.get(self.tokens_env):
            out.append(os.environ[self.tokens_env])
        return out


class RolloutConfig(_Section):
    """The reconciler."""

    reconcile_interval_s: float = Field(default=2.0, gt=0)
    offline_timeout_s: float = Field(default=300.0, gt=0, description="an assigned device offline this long counts as failed")
    assignment_timeout_s: float = Field(default=3600.0, gt=0, description="an assignment with no final report after this counts as failed")
    command_ttl_s: float = Field(default=86400.0, gt=0, description="expiry of signed commands")
    leader_lock_id: int = Field(default=0x6564676F, description="PostgreSQL advisory lock key of the reconciler leader")


class IngestConfig(_Section):
    """Device message ingest."""

    batch_size: int = Field(default=2000, ge=1)
    flush_interval_s: float = Field(default=0.2, gt=0)
    queue_max: int = Field(default=200_000, ge=100)
    db_retries: int = Field(default=3, ge=0, description="retries of a batch that failed for another reason than an unavailable database (connection cut, restart, deadlock: retried until it answers) before it is dropped (counted)")
    auto_register: bool = Field(default=False, description="register unknown devices from their state message (demo/simulator); off: unknown devices are dropped")
    telemetry_retention_s: float = Field(default=7 * 86400, gt=0, description="telemetry rows (and the drift sketches stored beside them) older than this are removed hourly")
    event_retention_s: float = Field(default=30 * 86400, gt=0, description="device events (install, rollback, self-test...) older than this are removed hourly: a device's history on its page and in the API")


class DriftConfig(_Section):
    """Drift thresholds: a score warns or alerts when its PSI reaches the threshold *and* its KS
    p-value is below ``alpha``, on at least ``min_samples`` inferences (edgeops.sketch.level)."""

    warn_psi: float = Field(default=0.1, gt=0, description="PSI at which a significant drift is a warning")
    alert_psi: float = Field(default=0.25, gt=0, description="PSI at which a significant drift is an alert")
    alpha: float = Field(default=0.01, gt=0, lt=1, description="largest KS p-value read as significant")
    min_samples: int = Field(default=200, ge=1, description="inferences a score needs before it is read (fewer: 'insufficient')")
    window_s: float = Field(default=3600.0, gt=0, le=30 * 86400, description="default window of the drift scores (sketches received this long back)")

    @model_validator(mode="after")
    def _order(self) -> "DriftConfig":
        if self.alert_psi < self.warn_psi:
            raise ValueError(f"alert_psi {self.alert_psi} is below warn_psi {self.warn_psi}")
        return self


class EnrollConfig(_Section):
    """Where `edgeops fleet enroll` writes broker credentials and device configs."""

    dir: str = "enroll"
    password_file: str = "enroll/mosquitto.passwd"
    acl_file: str = "enroll/mosquitto.acl"
    ca_dir: str = "enroll/ca"
    console_username: str = "edgeops-console"
    broker_group: str | None = Field(default=None, description="group the broker runs as: its password file and server key are written 0640 with this group (default: the group of the 'mosquitto' user when there is one)")
    password_listener_port: int | None = Field(default=None, ge=0, le=65535, description="port of the broker's password listener (enroll/broker/password-listener.conf); default: the port of the mqtt:// device or console URL, else 1883; 0: none")
    device_broker_url: str | None = Field(default=None, description="broker URL written into agent.toml (default: broker.url)")
    repository_http_url: str | None = Field(default=None, description="HTTP repository URL for agent.toml (default: MQTT fetch)")


class FleetConfig(_Section):
    """The whole fleet.toml."""

    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    repository: RepositoryConfig = Field(default_factory=RepositoryConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    rollouts: RolloutConfig = Field(default_factory=RolloutConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    enroll: EnrollConfig = Field(default_factory=EnrollConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    base_dir: str = Field(default=".", description="folder relative paths are resolved against (set by load_config)")

    def path(self, value: str) -> Path:
        """Resolve a path from the config against ``base_dir``."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    def database_url(self) -> str:
        """The database URL with a relative SQLite path resolved against ``base_dir``."""
        url = self.database.url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
            return "sqlite:///" + str(self.path(url[len("sqlite:///"):]))
        return url


def _format_validation(source: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        parts.append(f"{loc}: {e['msg']}")
    return f"{source}: " + "; ".join(parts)


def load_config(path: str | os.PathLike) -> FleetConfig:
    """Read and validate fleet.toml; ConfigError names the file and key at fault."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror or e}); create one with `edgeops fleet init`") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    data.setdefault("base_dir", str(path.resolve().parent))
    return config_from_dict(data, source=str(path))


def config_from_dict(data: dict, source: str = "fleet config") -> FleetConfig:
    """Validate a config given as a dict (tests, in-process consoles)."""
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(source, e)) from e


def render_toml(data: dict) -> str:
    """Write a nested dict of sections as TOML (strings, numbers, booleans, lists of strings)."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'

    lines: list[str] = []
    for key, v in data.items():
        if not isinstance(v, dict) and v is not None:
            lines.append(f"{key} = {value(v)}")
    for section, body in data.items():
        if isinstance(body, dict):
            lines.append(f"\n[{section}]")
            for key, v in body.items():
                if isinstance(v, dict):
                    continue
                if v is not None:
                    lines.append(f"{key} = {value(v)}")
            for key, v in body.items():
                if isinstance(v, dict):
                    lines.append(f"\n[{section}.{key}]")
                    lines.extend(f"{k} = {value(x)}" for k, x in v.items() if x is not None)
    return "\n".join(lines).lstrip() + "\n"
