"""The agent's configuration: one TOML file, validated against typed schemas (edgeops.schema).

Every error names the file and the key at fault (``ConfigError``, exit code 3). See
``agent/agent.example.toml`` for a commented example of every setting.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

from edgeops.errors import ConfigError
from edgeops.protocol import DEVICE_ID_PATTERN
from edgeops.schema import FieldError, Meta, Schema, SchemaError, field

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


Positive = Annotated[float, Meta(gt=0)]
Share = Annotated[float, Meta(ge=0, le=1)]


class BrokerConfig(Schema):
    """How to reach the MQTT broker: URL, protocol version, credentials, TLS, reconnect backoff.

    ``url`` is mqtt://host:port or mqtts://host:port; ``mqtt_version`` "auto" (default: MQTT 5,
    falling back to 3.1.1 when the broker refuses 5, as RabbitMQ's and NATS's MQTT do), "5" or
    "3.1.1"; ``username`` defaults to the device id when a
    password is set; ``password_file`` (preferred over ``password``) holds the broker password;
    ``ca_file`` is the CA bundle that signed the broker certificate, ``client_cert`` /
    ``client_key`` an X.509 client certificate and its key (mqtts). ``failover_urls``: the other
    nodes of a clustered broker (NATS, RabbitMQ, VerneMQ), same scheme; after a failed or lost
    connection the next connect goes to the next URL in turn. The first reconnect waits
    ``reconnect_min_s``; each failure doubles it up to ``reconnect_max_s``, with jitter.
    """

    url: str
    failover_urls: list[str] = field(default_factory=list)
    mqtt_version: Literal["auto", "5", "3.1.1"] = "auto"
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    keepalive_s: Annotated[int, Meta(ge=5, le=3600)] = 30
    reconnect_min_s: Positive = 0.5
    reconnect_max_s: Positive = 30.0

    def __post_init__(self) -> None:
        u = urlparse(self.url)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise FieldError("url", f"{self.url!r} must look like mqtt://host:port or mqtts://host:port")
        for other in self.failover_urls:
            o = urlparse(other)
            if o.scheme != u.scheme or not o.hostname:
                raise FieldError("failover_urls", f"{other!r} must look like {u.scheme}://host:port (the scheme of url: one TLS setting for every node)")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together: set both or neither")
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")

    @property
    def tls(self) -> bool:
        """True for mqtts:// URLs."""
        return urlparse(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        """Broker host name."""
        return urlparse(self.url).hostname or ""

    @property
    def port(self) -> int:
        """Broker port (1883 / 8883 by default)."""
        return urlparse(self.url).port or (8883 if self.tls else 1883)

    def endpoints(self) -> list[tuple[str, int]]:
        """(host, port) of ``url`` and then of each failover URL."""
        default = 8883 if self.tls else 1883
        return [(u.hostname or "", u.port or default) for u in map(urlparse, [self.url, *self.failover_urls])]

    def read_password(self) -> str | None:
        """The password from ``password`` or ``password_file`` (stripped), or None."""
        if self.password_file is not None:
            try:
                return self.password_file.read_text().strip()
            except OSError as e:
                raise ConfigError(f"broker.password_file {self.password_file}: cannot read ({e.strerror or e})") from e
        return self.password


class TrustConfig(Schema):
    """What the device trusts: the TUF root, the command keys, and where the repository is.

    ``root`` is the trusted TUF root.json shipped with the device; ``command_keys`` the public
    key files of the console's command signing keys (empty: the keys signed into the TUF
    root); ``repository`` is 'mqtt' (fetch through the broker) or an http(s):// base URL;
    ``fetch_timeout_s`` how long to wait for one MQTT fetch chunk before re-requesting it.
    ``metadata_worker`` verifies TUF metadata in a short-lived child process (keeps python-tuf
    and cryptography out of the resident agent); false verifies in the agent's process.
    """

    root: Path
    command_keys: list[Path] = field(default_factory=list)
    repository: str = "mqtt"
    fetch_timeout_s: Positive = 10.0
    metadata_worker: bool = True

    def __post_init__(self) -> None:
        if self.repository != "mqtt" and not self.repository.startswith(("http://", "https://")):
            raise FieldError("repository", f"{self.repository!r} must be 'mqtt' or an http(s):// base URL")


class ApiConfig(Schema):
    """The local inference API: ``listen`` is ``127.0.0.1:PORT``, ``[::1]:PORT`` or
    ``unix:/path/to.sock`` (empty disables it); ``shadow_sample_rate`` is the share of live
    inputs also run on the previous model during probation.

    Who may call it: ``token_file`` holds a bearer token every request must carry
    (``Authorization: Bearer ...``; ``edgeops fleet enroll`` writes one, 0600) and/or, on a Unix
    socket, the socket's ``socket_mode`` and ``socket_group`` (default 0660, the agent's group).
    A socket mode with bits for 'other' needs a token. Without a token, any local process that
    can reach a TCP port calls the API (the agent logs a warning).

    Bounds: a request body over ``max_body_bytes`` is refused before it is read (413), and the
    bodies being read at once never exceed it in total; a request (headers and body) must
    arrive within ``timeout_s``, and an idle kept-alive connection closes after it; ``workers``
    threads serve requests, at most ``max_queued`` connections wait for one, and further ones
    are answered 503 at once.
    """

    listen: str = "127.0.0.1:8765"
    token_file: Path | None = None
    socket_mode: Annotated[int, Meta(ge=0, le=0o777)] = 0o660
    socket_group: str | None = None
    max_body_bytes: Annotated[int, Meta(ge=1 << 10, le=1 << 30)] = 64 << 20
    timeout_s: Positive = 10.0
    workers: Annotated[int, Meta(ge=1, le=64)] = 4
    max_queued: Annotated[int, Meta(ge=0, le=1024)] = 16
    shadow_sample_rate: Share = 0.25

    def __post_init__(self) -> None:
        if self.socket_mode & 0o007 and self.token_file is None:
            raise FieldError("socket_mode", f"{oct(self.socket_mode)} lets every local user call the API; set api.token_file or drop the bits for 'other' (e.g. 0o660)")
        v = self.listen
        if v == "" or v.startswith("unix:"):
            if v.startswith("unix:") and len(v) <= 5:
                raise FieldError("listen", "unix: needs a socket path, e.g. unix:/run/edgeops/agent.sock")
            return
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not (0 <= int(port) < 65536):
            raise FieldError("listen", f"{v!r} must be HOST:PORT or unix:/path")
        if host.strip("[]") not in ("127.0.0.1", "localhost", "::1"):
            raise FieldError("listen", f"{v!r}: the inference API listens on loopback only (127.0.0.1, ::1) or a unix socket")


class TelemetryConfig(Schema):
    """Telemetry batching and the on-disk spool: one TelemetryBatch per ``interval_s``; the
    spool holds at most ``spool_max_bytes`` (oldest batches are dropped first, and reported);
    ``max_inflight`` unacknowledged QoS 1 publishes at a time; a spooled message not
    acknowledged after ``resend_after_s`` is published again."""

    interval_s: Positive = 10.0
    spool_max_bytes: Annotated[int, Meta(ge=16 << 10)] = 16 << 20
    max_inflight: Annotated[int, Meta(ge=1)] = 50
    resend_after_s: Positive = 30.0


class CaptureConfig(Schema):
    """Data capture (off until a signed ``capture`` command turns it on; docs/monitoring.md).

    ``public_key``: the console's capture public key (base64 Curve25519, ``edgeops data key``)
    used when a policy names none; ``max_budget_bytes_per_day``: the largest daily budget a
    policy may ask (a larger one is refused); ``spool_max_bytes``: the bound of the on-disk
    spool of sealed samples (the oldest are dropped first, and reported); at most
    ``max_inflight`` samples upload at a time, and one without the console's answer after
    ``resend_after_s`` is sent again.
    """

    public_key: Annotated[str, Meta(pattern=r"^[A-Za-z0-9+/]{43}=$")] | None = None
    max_budget_bytes_per_day: Annotated[int, Meta(ge=1)] = 256 << 20
    spool_max_bytes: Annotated[int, Meta(ge=64 << 10)] = 64 << 20
    max_inflight: Annotated[int, Meta(ge=1, le=64)] = 2
    resend_after_s: Positive = 30.0


class SelfTestConfig(Schema):
    """Self-test before activation: golden vectors, load time, latency, memory.

    ``latency_runs`` timed inferences give the p95, which fails above the manifest's
    ``latency_p95_ms`` x ``latency_factor``; loading may take ``max_load_s`` at most and grow
    RSS by ``max_memory_mb`` at most (default: the manifest budget, if any).
    """

    latency_runs: Annotated[int, Meta(ge=1)] = 30
    latency_factor: Positive = 1.5
    max_load_s: Positive = 60.0
    max_memory_mb: Positive | None = None


class ProbationConfig(Schema):
    """The probation window after activation and its gates.

    The window needs ``window_count`` inferences and lasts ``window_seconds`` at least. Gates:
    error rate up to ``max_error_rate``; at most ``max_nan`` outputs with NaN/Inf; p95 up to
    the budget x ``latency_factor`` and the previous model's p95 x ``previous_latency_factor``;
    agreement with the previous model on shadowed inputs at least ``min_agreement`` once
    ``min_shadow_samples`` were taken. Golden inputs run every ``synthetic_interval_s`` while
    live traffic is short of the window (0 disables); more than ``max_restarts`` agent restarts
    during probation roll back.
    """

    window_count: Annotated[int, Meta(ge=1)] = 200
    window_seconds: Annotated[float, Meta(ge=0)] = 60.0
    max_error_rate: Share = 0.01
    max_nan: Annotated[int, Meta(ge=0)] = 0
    latency_factor: Positive = 1.5
    previous_latency_factor: Positive = 2.0
    min_agreement: Share = 0.95
    min_shadow_samples: Annotated[int, Meta(ge=1)] = 10
    synthetic_interval_s: Annotated[float, Meta(ge=0)] = 0.5
    max_restarts: Annotated[int, Meta(ge=0)] = 1


class AgentConfig(Schema):
    """The whole agent configuration file.

    ``profile`` is a hardware profile name or the path to a profile TOML; ``cohorts`` the
    cohorts whose commands this device obeys; ``store_quota_bytes`` the largest size of the
    model store (installs beyond it abort cleanly).
    """

    device_id: Annotated[str, Meta(pattern=DEVICE_ID_PATTERN)]
    data_dir: Path
    profile: str
    cohorts: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    broker: BrokerConfig | None = None
    trust: TrustConfig
    api: ApiConfig = field(default_factory=ApiConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    self_test: SelfTestConfig = field(default_factory=SelfTestConfig)
    probation: ProbationConfig = field(default_factory=ProbationConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    store_quota_bytes: Annotated[int, Meta(ge=1)] | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def __post_init__(self) -> None:
        if self.trust.repository == "mqtt" and self.broker is None:
            raise ValueError("trust.repository = 'mqtt' needs a [broker] section")


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate an agent TOML file; relative paths resolve against its folder."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: agent config not found; copy agent/agent.example.toml and edit it") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    return parse_config(raw, source=str(path), base_dir=path.parent)


def parse_config(raw: dict, source: str = "agent config", base_dir: Path | None = None) -> AgentConfig:
    """Validate a config dict; the error names ``source`` and the dotted key."""
    try:
        cfg = AgentConfig.parse(raw)
    except SchemaError as e:
        hint = " (check the spelling against agent.example.toml)" if e.kind == "unknown" else ""
        raise ConfigError(f"{source}: key '{e.key or '(top level)'}': {e.message}{hint}") from e
    if base_dir is not None:
        cfg = _resolve_paths(cfg, Path(base_dir))
    return cfg


def _resolve_paths(cfg: AgentConfig, base: Path) -> AgentConfig:
    def fix(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p))

    cfg.data_dir = fix(cfg.data_dir)  # type: ignore[assignment]
    cfg.trust.root = fix(cfg.trust.root)  # type: ignore[assignment]
    cfg.trust.command_keys = [fix(k) for k in cfg.trust.command_keys]  # type: ignore[misc]
    cfg.api.token_file = fix(cfg.api.token_file)  # type: ignore[assignment]
    if cfg.broker:
        for name in ("password_file", "ca_file", "client_cert", "client_key"):
            setattr(cfg.broker, name, fix(getattr(cfg.broker, name)))
    if cfg.profile.endswith(".toml"):
        cfg.profile = str(fix(Path(cfg.profile)))
    return cfg
