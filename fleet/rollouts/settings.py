"""Rollout settings: what `edgeops rollout create` and ``POST /api/v1/rollouts`` accept.

Malformed or contradictory settings are refused here, at creation, with the field named
(:class:`RolloutSettingsError`, exit code 3); a gate is never evaluated against a setting that
does not make sense. Parsers for the CLI's text forms (``10m``, ``1%,10%,50%,100%``,
``tag=site=berlin,profile=x86-avx2``) live here too so the API and the CLI agree.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeops.errors import ConfigError, first_problem
from edgeops.protocol import valid_device_id


class RolloutSettingsError(ConfigError):
    """A rollout setting is malformed or contradicts another; the message names the field."""


_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(text: str | float | int, field: str = "bake") -> float:
    """Seconds from ``90``, ``90s``, ``10m``, ``1h30m``; RolloutSettingsError naming ``field`` otherwise."""
    if isinstance(text, bool):
        raise RolloutSettingsError(f"{field}: {text!r} is not a duration")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip().lower()
        try:
            value = float(s)
        except ValueError:
            m = _DURATION_RE.match(s)
            if not s or not m or not any(m.groups()):
                raise RolloutSettingsError(f"{field}: {text!r} is not a duration (examples: 90s, 10m, 1h30m, 0)") from None
            h, mi, se = (float(g) if g else 0.0 for g in m.groups())
            value = h * 3600 + mi * 60 + se
    if value < 0 or value != value:
        raise RolloutSettingsError(f"{field}: {text!r} must not be negative")
    return value


def parse_waves(text: str | list) -> list[float]:
    """Percentages from ``1%,10%,50%,100%`` (the % is optional); order is checked by the model."""
    items = text if isinstance(text, list) else [p for p in str(text).split(",")]
    out: list[float] = []
    for item in items:
        s = str(item).strip().rstrip("%").strip()
        try:
            out.append(float(s))
        except ValueError:
            raise RolloutSettingsError(f"waves: {item!r} is not a percentage (example: 1%,10%,50%,100%)") from None
    return out


class Selector(BaseModel):
    """Which devices a rollout targets: all conditions must hold (an empty selector is all devices)."""

    model_config = ConfigDict(extra="forbid")

    profile: str | None = None
    tags: dict[str, str] = Field(default_factory=dict, description="tag key -> value ('*': any value)")
    devices: list[str] | None = Field(default=None, description="explicit device ids")

    @field_validator("devices")
    @classmethod
    def _ids(cls, v):
        if v is not None:
            bad = [d for d in v if not valid_device_id(d)]
            if bad:
                raise ValueError(f"not valid device ids: {', '.join(bad[:5])}")
        return v

    def matches(self, device_id: str, profile: str | None, tags: dict[str, str]) -> bool:
        """True when a device with this id, profile and tags is selected."""
        if self.profile is not None and profile != self.profile:
            return False
        if self.devices is not None and device_id not in self.devices:
            return False
        for k, v in self.tags.items():
            if k not in tags or (v != "*" and tags[k] != v):
                return False
        return True

    def describe(self) -> str:
        """Short text form, as the CLI accepts it."""
        parts = []
        if self.profile:
            parts.append(f"profile={self.profile}")
        parts += [f"tag={k}={v}" for k, v in sorted(self.tags.items())]
        if self.devices is not None:
            parts.append("device=" + "+".join(self.devices))
        return ",".join(parts) or "all"


def parse_selector(text: str) -> Selector:
    """``profile=NAME``, ``tag=KEY=VALUE`` (or ``tag=KEY:VALUE``, ``tag=KEY``), ``device=ID``, ``all``; comma = and."""
    profile = None
    tags: dict[str, str] = {}
    devices: list[str] | None = None
    for term in [t.strip() for t in str(text).split(",") if t.strip()]:
        if term == "all":
            continue
        key, sep, value = term.partition("=")
        if not sep or not value:
            raise RolloutSettingsError(f"select: {term!r} should be profile=NAME, tag=KEY=VALUE, device=ID or all")
        if key == "profile":
            profile = value
        elif key == "tag":
            k, s2, v = value.partition("=")
            if not s2:
                k, s2, v = value.partition(":")
            tags[k] = v if s2 else "*"
        elif key == "device":
            devices = (devices or []) + [d for d in value.split("+") if d]
        else:
            raise RolloutSettingsError(f"select: unknown key {key!r} in {term!r} (profile, tag, device)")
    try:
        return Selector(profile=profile, tags=tags, devices=devices)
    except ValidationError as e:
        raise RolloutSettingsError(f"select: {first_problem(e).msg}") from e


def parse_bundle(text: str) -> tuple[str, str]:
    """``NAME@VERSION`` -> (name, version)."""
    name, sep, version = str(text).partition("@")
    if not sep or not name or not version or "/" in name or "/" in version:
        raise RolloutSettingsError(f"bundle: {text!r} should be NAME@VERSION (e.g. detector@1.4.0)")
    return name, version


MAX_WINDOW_S = 7 * 86400.0  # a maintenance window longer than a week is not a window


class MaintenanceWindow(BaseModel):
    """Devices ``select`` may get their command from each ``cron`` start for ``duration_s``, in
    ``timezone`` (see :mod:`edgeops.fleet.rollouts.windows`)."""

    model_config = ConfigDict(extra="forbid")

    select: Selector = Field(default_factory=Selector)
    cron: str = Field(min_length=9, max_length=200, description="minute hour day-of-month month day-of-week, e.g. '0 2 * * *'")
    duration_s: float = Field(gt=0, le=MAX_WINDOW_S)
    timezone: str = Field(default="UTC", max_length=64)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from edgeops.fleet.rollouts.windows import Cron

        Cron.parse(v)
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from edgeops.fleet.rollouts.windows import check_timezone

        return check_timezone(v)

    def describe(self) -> str:
        """Short text form, as the CLI accepts it."""
        return f"{self.select.describe()};{self.cron};{self.duration_s:g}s;{self.timezone}"


def parse_window(text: "str | dict | MaintenanceWindow") -> MaintenanceWindow:
    """``SELECT;CRON;DURATION[;TIMEZONE]`` (``tag=site=berlin;0 2 * * *;2h;Europe/Berlin``) or a
    dict with ``select``, ``cron``, ``duration`` and ``timezone``; RolloutSettingsError otherwise."""
    if isinstance(text, MaintenanceWindow):
        return text
    if isinstance(text, dict):
        body = dict(text)
        select, cron, duration, tz = body.pop("select", "all"), body.pop("cron", ""), body.pop("duration", None), body.pop("timezone", "UTC")
        if body:
            raise RolloutSettingsError(f"maintenance: unknown field(s) {', '.join(sorted(map(str, body)))} (select, cron, duration, timezone)")
    else:
        parts = [p.strip() for p in str(text).split(";")]
        if len(parts) not in (3, 4):
            raise RolloutSettingsError(f"maintenance: {text!r} should be SELECT;CRON;DURATION[;TIMEZONE] (e.g. 'tag=site=berlin;0 2 * * *;2h;Europe/Berlin')")
        select, cron, duration = parts[:3]
        tz = parts[3] if len(parts) == 4 else "UTC"
    if duration is None:
        raise RolloutSettingsError("maintenance: a window needs a duration (e.g. 2h)")
    sel = select if isinstance(select, Selector) else parse_selector(str(select))
    try:
        return MaintenanceWindow(select=sel, cron=str(cron), duration_s=parse_duration(duration, "maintenance.duration"), timezone=str(tz))
    except ValidationError as e:
        problem = first_problem(e, default_loc="maintenance")
        raise RolloutSettingsError(f"maintenance: {problem.loc}: {problem.msg}") from e


CHANNEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"
BUNDLE_REF_PATTERN = r"^[^@/]{1,128}@[^@/]{1,64}$"  # NAME@VERSION within RolloutSettings' lengths


class RolloutSettings(BaseModel):
    """Validated settings of one rollout (stored as JSON in the rollouts table)."""

    model_config = ConfigDict(extra="forbid")

    bundle_name: str = Field(min_length=1, max_length=128)
    bundle_version: str = Field(min_length=1, max_length=64)
    selector: Selector = Field(default_factory=Selector)
    waves: list[float] = Field(default_factory=lambda: [1.0, 10.0, 50.0, 100.0], description="cumulative percentages of the selected devices")
    bake_s: float = Field(default=0.0, ge=0, description="time a wave must run before it can pass")
    min_reporting: float = Field(default=0.9, gt=0, le=1, description="fraction of a wave's devices that must report a final status")
    max_failure_rate: float = Field(default=0.05, ge=0, le=1, description="failed + rolled back + timed out, over the wave's devices")
    max_rollback_rate: float | None = Field(default=None, ge=0, le=1, description="rolled back over the wave's devices")
    max_error_rate: float | None = Field(default=None, ge=0, le=1, description="largest allowed excess of the error rate, and of the NaN rate, per inference on the new version over the control cohort")
    max_latency_regression: float | None = Field(default=None, description="largest allowed ratio of per-device p95 latency, new version / control cohort (1.1: 10% slower)")
    max_latency_p50_regression: float | None = Field(default=None, description="largest allowed ratio of per-device p50 latency, new version / control cohort (judged like max_latency_regression)")
    max_confidence_drop: float | None = Field(default=None, gt=0, lt=1, description="largest allowed drop of the per-device mean top-1 confidence, new version / control cohort (0.05: 5% lower), from the classifier outputs' drift sketches")
    max_class_mix_shift: float | None = Field(default=None, gt=0, le=1, description="largest allowed total variation distance between the output class mix of the new version and the control cohort's, from the classifier outputs' drift sketches")
    min_agreement: float | None = Field(default=None, ge=0, le=1, description="shadow agreement of the new model with the old one: fails when significantly below (one-sample proportion test)")
    max_drift: float | None = Field(default=None, gt=0, le=100, description="PSI of the wave's data on the new version against the bundle's drift reference (fails only when the KS test finds it significant; docs/monitoring.md)")
    drift_alpha: float = Field(default=0.01, gt=0, lt=1, description="max_drift: largest KS p-value read as significant")
    drift_min_samples: int = Field(default=200, ge=1, le=10**9, description="max_drift: inferences sketched on the new version before the gate decides")
    on_gate_failure: Literal["pause", "abort"] = "pause"
    approve_each_wave: bool = False
    name: str = Field(default="", max_length=200, description="free text label")
    # The judge (edgeops.fleet.rollouts.judge; docs/fleet.md "How the judge decides")
    judge_alpha: float = Field(default=0.05, gt=0, le=0.5, description="false-alarm rate per judged gate over all looks of a wave")
    judge_max_looks: int = Field(default=5, ge=1, le=100, description="looks per wave sharing judge_alpha (Bonferroni: alpha / looks each)")
    judge_look_interval_s: float = Field(default=60.0, ge=0, description="least time between two looks of a judged gate")
    judge_min_devices: int = Field(default=5, ge=1, le=100_000, description="devices each cohort (wave, control) needs before a judged gate can decide")
    control_share: float = Field(default=0.1, ge=0, lt=1, description="share of the selection held back on the old version as the control when a wave would leave none")
    inconclusive_timeout_s: float = Field(default=1800.0, ge=0, description="a gate inconclusive this long pauses the rollout")
    strata_tag: str | None = Field(default=None, min_length=1, max_length=64, description="a tag key that splits strata further than the profile (e.g. site)")
    maintenance: list[MaintenanceWindow] = Field(default_factory=list, max_length=50, description="devices a window selects get their command only while one of their windows is open")
    watch_s: float = Field(default=0.0, ge=0, le=30 * 86400, description="after the last wave passes, keep judging the whole rollout this long; a late failure rolls back the devices that reported it and pauses")
    channel: str | None = Field(default=None, pattern=CHANNEL_PATTERN, description="the release channel this rollout delivers to (dev, staging, prod, ...)")
    requires_channel: str | None = Field(default=None, pattern=CHANNEL_PATTERN, description="refuse the rollout unless this version finished a rollout in this channel (promotion)")

    @field_validator("waves")
    @classmethod
    def _waves(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("at least one wave is needed (e.g. 1%,10%,50%,100%)")
        if len(v) > 100:
            raise ValueError(f"{len(v)} waves; at most 100")
        prev = 0.0
        for i, p in enumerate(v):
            if not p > 0:
                raise ValueError(f"wave {i + 1} is {p}%; percentages must be above 0")
            if p > 100:
                raise ValueError(f"wave {i + 1} is {p}%; percentages cannot exceed 100")
            if p <= prev:
                raise ValueError(f"wave {i + 1} ({p}%) is not above wave {i} ({prev}%); waves are cumulative and must increase")
            prev = p
        return v

    @field_validator("max_latency_regression", "max_latency_p50_regression")
    @classmethod
    def _latency(cls, v: float | None, info: Any) -> float | None:
        if v is not None and not v >= 1.0:
            which = "p50" if "p50" in info.field_name else "p95"
            raise ValueError(f"{v} is a ratio of {which} latencies (new / control) and must be at least 1.0 (1.2 allows 20% slower)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "RolloutSettings":
        if self.max_rollback_rate is not None and self.max_rollback_rate > self.max_failure_rate:
            raise ValueError(
                f"max_rollback_rate {self.max_rollback_rate} is above max_failure_rate {self.max_failure_rate}; "
                "rollbacks count as failures, so it could never trigger"
            )
        if self.requires_channel is not None and self.requires_channel == self.channel:
            raise ValueError(f"requires_channel {self.requires_channel!r} is the rollout's own channel; promotion needs an earlier one")
        if self.selector.devices is not None and not self.selector.devices:
            raise ValueError("selector.devices is an empty list; no device could be selected")
        return self


def build_settings(**fields) -> RolloutSettings:
    """Validate settings; RolloutSettingsError names the first field at fault."""
    try:
        return RolloutSettings(**fields)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "settings"
            msg = err["msg"].removeprefix("Value error, ")
            msgs.append(f"{loc}: {msg}")
        raise RolloutSettingsError("rollout settings refused: " + "; ".join(msgs)) from e


class RolloutRequest(BaseModel):
    """The body of ``POST /api/v1/rollouts`` (the CLI sends its options as they were typed).

    Text forms are accepted where the CLI has them: ``bundle`` ``NAME@VERSION``, ``select``
    ``tag=K=V,profile=P``, ``waves`` ``"1%,10%,50%,100%"`` or a list, ``bake`` ``"10m"`` or seconds.
    """

    model_config = ConfigDict(extra="forbid")

    # The ranges repeat RolloutSettings' so the OpenAPI document (made from this model) states them.
    bundle: str = Field(pattern=BUNDLE_REF_PATTERN, description="NAME@VERSION, a signed target of the console's repository")
    select: str | Selector = "all"
    waves: str | list[float] = "1%,10%,50%,100%"
    bake: str | float = 0
    min_reporting: float = Field(default=0.9, gt=0, le=1)
    max_failure_rate: float = Field(default=0.05, ge=0, le=1)
    max_rollback_rate: float | None = Field(default=None, ge=0, le=1)
    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    max_latency_regression: float | None = None
    max_latency_p50_regression: float | None = None
    max_confidence_drop: float | None = Field(default=None, gt=0, lt=1)
    max_class_mix_shift: float | None = Field(default=None, gt=0, le=1)
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    # a PSI, or a level name that takes the [drift] threshold of fleet.toml (resolved at creation:
    # a running rollout keeps its number); alpha and min_samples default to fleet.toml's too
    max_drift: Annotated[float, Field(gt=0, le=100)] | Literal["warn", "alert"] | None = Field(default=None, description="PSI, or warn / alert: the [drift] threshold of fleet.toml")
    drift_alpha: float | None = Field(default=None, gt=0, lt=1, description="default: drift.alpha of fleet.toml")
    drift_min_samples: int | None = Field(default=None, ge=1, le=10**9, description="default: drift.min_samples of fleet.toml")

    @field_validator("max_drift", mode="before")
    @classmethod
    def _max_drift(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in ("warn", "alert"):
            try:
                return float(v)
            except ValueError:
                raise ValueError(f"{v!r} is neither a PSI (e.g. 0.25) nor warn / alert (the [drift] thresholds of fleet.toml)") from None
        return v
    on_gate_failure: Literal["pause", "abort"] = "pause"
    approve_each_wave: bool = False
    name: str = Field(default="", max_length=200)
    judge_alpha: float = Field(default=0.05, gt=0, le=0.5)
    judge_max_looks: int = Field(default=5, ge=1, le=100)
    judge_look_interval: str | float = Field(default=60.0, description="least time between two looks of a judged gate (60, 1m)")
    judge_min_devices: int = Field(default=5, ge=1, le=100_000)
    control_share: float = Field(default=0.1, ge=0, lt=1)
    inconclusive_timeout: str | float = Field(default=1800.0, description="a gate inconclusive this long pauses the rollout (1800, 30m)")
    strata_tag: str | None = Field(default=None, min_length=1, max_length=64, description="a tag key that splits strata further than the profile (e.g. site)")
    channel: str | None = Field(default=None, pattern=CHANNEL_PATTERN)
    requires_channel: str | None = Field(default=None, pattern=CHANNEL_PATTERN)
    watch: str | float = Field(default=0, description="after the last wave passes, keep judging this long (30m); a late failure rolls back the devices that reported it and pauses")
    maintenance: list[str | MaintenanceWindow] = Field(default_factory=list, max_length=50, description="maintenance windows: 'SELECT;CRON;DURATION[;TIMEZONE]' (e.g. 'tag=site=berlin;0 2 * * *;2h;Europe/Berlin')")

    def to_settings(self, drift: Any = None) -> RolloutSettings:
        """Parse the text forms and validate everything (RolloutSettingsError names the field).

        ``drift``: the console's [drift] settings (edgeops.fleet.config.DriftConfig; their
        defaults without one) that ``max_drift = "warn" | "alert"``, ``drift_alpha`` and
        ``drift_min_samples`` take when the request leaves them to fleet.toml."""
        from edgeops.fleet.config import DriftConfig

        drift = drift or DriftConfig()
        max_drift = {"warn": drift.warn_psi, "alert": drift.alert_psi}.get(self.max_drift, self.max_drift) if isinstance(self.max_drift, str) else self.max_drift
        name, version = parse_bundle(self.bundle)
        selector = self.select if isinstance(self.select, Selector) else parse_selector(self.select)
        return build_settings(
            bundle_name=name,
            bundle_version=version,
            selector=selector,
            waves=parse_waves(self.waves),
            bake_s=parse_duration(self.bake, "bake"),
            min_reporting=self.min_reporting,
            max_failure_rate=self.max_failure_rate,
            max_rollback_rate=self.max_rollback_rate,
            max_error_rate=self.max_error_rate,
            max_latency_regression=self.max_latency_regression,
            max_latency_p50_regression=self.max_latency_p50_regression,
            max_confidence_drop=self.max_confidence_drop,
            max_class_mix_shift=self.max_class_mix_shift,
            min_agreement=self.min_agreement,
            max_drift=max_drift,
            drift_alpha=drift.alpha if self.drift_alpha is None else self.drift_alpha,
            drift_min_samples=drift.min_samples if self.drift_min_samples is None else self.drift_min_samples,
            on_gate_failure=self.on_gate_failure,
            approve_each_wave=self.approve_each_wave,
            name=self.name,
            judge_alpha=self.judge_alpha,
            judge_max_looks=self.judge_max_looks,
            judge_look_interval_s=parse_duration(self.judge_look_interval, "judge_look_interval"),
            judge_min_devices=self.judge_min_devices,
            control_share=self.control_share,
            inconclusive_timeout_s=parse_duration(self.inconclusive_timeout, "inconclusive_timeout"),
            strata_tag=self.strata_tag,
            maintenance=[parse_window(w) for w in self.maintenance],
            watch_s=parse_duration(self.watch, "watch"),
            channel=self.channel,
            requires_channel=self.requires_channel,
        )


def parse_request(body: dict, drift: Any = None) -> RolloutSettings:
    """Validate a create-rollout body; RolloutSettingsError names the field at fault (``drift``: the
    console's [drift] settings, see :meth:`RolloutRequest.to_settings`)."""
    try:
        req = RolloutRequest.model_validate(body)
    except ValidationError as e:
        problem = first_problem(e, default_loc="body")
        raise RolloutSettingsError(f"rollout settings refused: {problem.loc}: {problem.msg}") from e
    return req.to_settings(drift)
