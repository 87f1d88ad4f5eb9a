"""The agent's configuration: one TOML file, validated with pydantic.

Every error names the file and the key at fault (``ConfigError``, exit code 3). See
``agent/agent.example.toml`` for a commented example of every setting.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeops.errors import ConfigError
from edgeops.protocol import DEVICE_ID_PATTERN

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BrokerConfig(_Section):
    """How to reach the MQTT broker: URL, protocol version, credentials, TLS, reconnect backoff."""

    url: str = Field(description="mqtt://host:port or mqtts://host:port")
    mqtt_version: Literal["5", "3.1.1"] = Field(default="5", description="MQTT 5 (default) or 3.1.1 for brokers such as the embedded amqtt one")
    username: str | None = Field(default=None, description="broker username; defaults to the device id when a password is set")
    password: str | None = Field(default=None, description="broker password (prefer password_file)")
    password_file: Path | None = Field(default=None, description="file holding the broker password")
    ca_file: Path | None = Field(default=None, description="CA bundle that signed the broker certificate (mqtts)")
    client_cert: Path | None = Field(default=None, description="X.509 client certificate (mqtts)")
    client_key: Path | None = Field(default=None, description="private key of the client certificate")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_min_s: float = Field(default=0.5, gt=0, description="first reconnect delay; doubles up to reconnect_max_s, with jitter")
    reconnect_max_s: float = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        u = urlparse(v)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise ValueError(f"{v!r} must look like mqtt://host:port or mqtts://host:port")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "BrokerConfig":
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together: set both or neither")
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        return self

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

    def read_password(self) -> str | None:
        """The password from ``password`` or ``password_file`` (stripped), or None."""
        if self.password_file is not None:
            try:
                return self.password_file.read_text().strip()
            except OSError as e:
                raise ConfigError(f"broker.password_file {self.password_file}: cannot read ({e.strerror or e})") from e
        return self.password


class TrustConfig(_Section):
    """What the device trusts: the TUF root, the command keys, and where the repository is."""

    root: Path = Field(description="trusted TUF root.json shipped with the device")
    command_keys: list[Path] = Field(default_factory=list, description="public key files of the console's command signing keys (empty: the keys signed into the TUF root)")
    repository: str = Field(default="mqtt", description="'mqtt' (fetch through the broker) or an http(s):// base URL")
    fetch_timeout_s: float = Field(default=10.0, gt=0, description="time to wait for one MQTT fetch chunk before re-requesting it")
    metadata_worker: bool = Field(
        default=True,
        description="verify TUF metadata in a short-lived child process (keeps python-tuf and cryptography out of the resident agent); false verifies in the agent's process",
    )

    @field_validator("repository")
    @classmethod
    def _repository(cls, v: str) -> str:
        if v != "mqtt" and not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} must be 'mqtt' or an http(s):// base URL")
        return v


class ApiConfig(_Section):
    """The local inference API: ``host:port`` on loopback or ``unix:/path/to.sock``; empty disables it."""

    listen: str = Field(default="127.0.0.1:8765", description="127.0.0.1:PORT, [::1]:PORT, unix:/path, or '' to disable")
    shadow_sample_rate: float = Field(default=0.25, ge=0, le=1, description="share of live inputs also run on the previous model during probation")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v == "" or v.startswith("unix:"):
            if v.startswith("unix:") and len(v) <= 5:
                raise ValueError("unix: needs a socket path, e.g. unix:/run/edgeops/agent.sock")
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not (0 <= int(port) < 65536):
            raise ValueError(f"{v!r} must be HOST:PORT or unix:/path")
        if host.strip("[]") not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"{v!r}: the inference API listens on loopback only (127.0.0.1, ::1) or a unix socket")
        return v


class TelemetryConfig(_Section):
    """Telemetry batching and the on-disk spool."""

    interval_s: float = Field(default=10.0, gt=0, description="one TelemetryBatch per interval")
    spool_max_bytes: int = Field(default=16 << 20, ge=16 << 10, description="spool size bound; oldest batches are dropped first (and reported)")
    max_inflight: int = Field(default=50, ge=1, description="unacknowledged QoS 1 publishes at a time")
    resend_after_s: float = Field(default=30.0, gt=0, description="re-publish a spooled message not acknowledged after this long")


class SelfTestConfig(_Section):
    """Self-test before activation: golden vectors, load time, latency, memory."""

    latency_runs: int = Field(default=30, ge=1, description="timed inferences for the p95")
    latency_factor: float = Field(default=1.5, gt=0, description="fail when p95 > budget.latency_p95_ms x factor")
    max_load_s: float = Field(default=60.0, gt=0, description="fail when loading the model takes longer")
    max_memory_mb: float | None = Field(default=None, gt=0, description="fail when loading grows RSS by more (default: the manifest budget, if any)")


class ProbationConfig(_Section):
    """The probation window after activation and its gates."""

    window_count: int = Field(default=200, ge=1, description="inferences the window needs before it can pass")
    window_seconds: float = Field(default=60.0, ge=0, description="seconds the window lasts at least")
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_nan: int = Field(default=0, ge=0, description="outputs with NaN/Inf tolerated in the window")
    latency_factor: float = Field(default=1.5, gt=0, description="fail when p95 > budget x factor")
    previous_latency_factor: float = Field(default=2.0, gt=0, description="fail when p95 > previous model's p95 x factor")
    min_agreement: float = Field(default=0.95, ge=0, le=1, description="least share of shadowed inputs where new and previous model agree")
    min_shadow_samples: int = Field(default=10, ge=1, description="shadow samples needed for the agreement gate to count")
    synthetic_interval_s: float = Field(default=0.5, ge=0, description="run golden inputs this often while live traffic is short of the window (0 disables)")
    max_restarts: int = Field(default=1, ge=0, description="agent restarts during probation before it rolls back")


class AgentConfig(_Section):
    """The whole agent configuration file."""

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    data_dir: Path
    profile: str = Field(description="hardware profile name or path to a profile TOML")
    cohorts: list[str] = Field(default_factory=list, description="cohorts whose commands this device obeys")
    tags: dict[str, str] = Field(default_factory=dict)
    broker: BrokerConfig | None = None
    trust: TrustConfig
    api: ApiConfig = Field(default_factory=ApiConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    self_test: SelfTestConfig = Field(default_factory=SelfTestConfig)
    probation: ProbationConfig = Field(default_factory=ProbationConfig)
    store_quota_bytes: int | None = Field(default=None, ge=1, description="largest size of the model store; installs beyond it abort cleanly")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _needs_broker(self) -> "AgentConfig":
        if self.trust.repository == "mqtt" and self.broker is None:
            raise ValueError("trust.repository = 'mqtt' needs a [broker] section")
        return self


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
        cfg = AgentConfig.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        hint = " (unknown key: check the spelling against agent.example.toml)" if first["type"] == "extra_forbidden" else ""
        raise ConfigError(f"{source}: key '{key}': {first['msg']}{hint}") from e
    if base_dir is not None:
        cfg = _resolve_paths(cfg, Path(base_dir))
    return cfg


def _resolve_paths(cfg: AgentConfig, base: Path) -> AgentConfig:
    def fix(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else (base / p))

    cfg.data_dir = fix(cfg.data_dir)  # type: ignore[assignment]
    cfg.trust.root = fix(cfg.trust.root)  # type: ignore[assignment]
    cfg.trust.command_keys = [fix(k) for k in cfg.trust.command_keys]  # type: ignore[misc]
    if cfg.broker:
        for name in ("password_file", "ca_file", "client_cert", "client_key"):
            setattr(cfg.broker, name, fix(getattr(cfg.broker, name)))
    if cfg.profile.endswith(".toml"):
        cfg.profile = str(fix(Path(cfg.profile)))
    return cfg
