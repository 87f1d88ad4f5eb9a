"""Fault specs: which simulated devices misbehave, how, and on which bundle version.

Grammar (comma-separated rules)::

    KIND[(OPTIONS)]:FRACTION[@BUNDLE=VERSION][#profile=PROFILE]

    nan:0.3@digits=2.0.0          30% of devices give NaN outputs on digits 2.0.0
    slow(x8):0.1@*=2.*            10% run 8x the latency budget on any bundle's 2.x versions
    crash:0.05@digits=2.0.0       5% raise in inference on digits 2.0.0
    offline:0.02@digits=2.0.0     2% drop their session (no DISCONNECT) and stay away
    nan(all):25%                  25%, every version, golden inputs included
    slow(x0.65):1@*=2.0.0#profile=x86_64-avx2,slow(x0.5):1
                                  every device takes half its budget on every version, but
                                  the x86_64-avx2 devices take 0.65 of it on 2.0.0: 30% slower
                                  there only (the first rule of a kind that covers a version wins)

- KIND: ``nan`` | ``slow`` | ``crash`` | ``offline``.
- FRACTION: ``0..1`` or a percentage (``30%``).
- ``@BUNDLE=VERSION``: shell-style globs (``*``, ``?``); ``@*`` or no ``@`` means every version.
- ``#profile=PROFILE``: only devices running this hardware profile (a shell-style glob, e.g.
  ``#profile=x86_64-*``); without it every profile. FRACTION is then the share of that
  profile's devices (the draw below is the same; devices of other profiles are never hit).
- OPTIONS (comma-free, ``+``-separated): ``all`` (also on golden inputs, so the on-device
  self-test catches it; the default for ``nan``/``crash`` is live inputs only, so the device
  activates the version and its probation window must catch it), ``xF`` (``slow`` only: the
  inference takes F times the manifest's latency budget; default 5).

Which devices: a device is hit by a rule when ``sha256("KIND|DEVICE_ID")`` mapped to [0, 1)
is below FRACTION. The draw is deterministic (the same devices every run) and independent of
the version selector, so ``nan:0.3@digits=2.0.0`` and ``nan:0.3@digits=3.0.0`` hit the same 30%.

Errors name the rule and the part at fault (:class:`FaultSpecError`, exit code 3).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import dataclass, field

from edgeops.errors import ConfigError

KINDS = ("nan", "slow", "crash", "offline")
DEFAULT_SLOW_FACTOR = 5.0

_RULE_RE = re.compile(r"^(?P<kind>[a-z]+)(?:\((?P<opts>[^()]*)\))?:(?P<fraction>[^@#]+)(?:@(?P<sel>[^#]+))?(?:#(?P<where>[^#]*))?$")


class FaultSpecError(ConfigError):
    """A fault spec that does not parse; the message names the rule and the bad part."""


@dataclass(frozen=True)
class FaultRule:
    """One rule: ``kind`` on ``fraction`` of devices, for bundles matching ``bundle``/``version``."""

    kind: str
    fraction: float
    bundle: str = "*"
    version: str = "*"
    golden: bool = False  # also on golden inputs (self-test catches it)
    factor: float = DEFAULT_SLOW_FACTOR  # slow: times the latency budget
    text: str = ""
    profile: str = "*"  # hardware profiles (glob) whose devices the rule may hit

    def draw(self, device_id: str) -> float:
        """The device's deterministic draw in [0, 1) for this rule's kind."""
        digest = hashlib.sha256(f"{self.kind}|{device_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def hits(self, device_id: str, profile: str | None = None) -> bool:
        """True when this rule selects the device (running ``profile``; None: unknown, which
        only a rule for every profile selects)."""
        if self.profile != "*" and (profile is None or not fnmatch.fnmatchcase(profile, self.profile)):
            return False
        return self.draw(device_id) < self.fraction

    def applies_to(self, name: str | None, version: str | None) -> bool:
        """True when the rule covers bundle ``name`` at ``version``."""
        return fnmatch.fnmatchcase(name or "", self.bundle) and fnmatch.fnmatchcase(version or "", self.version)


@dataclass(frozen=True)
class DeviceFaults:
    """The rules that hit one device (empty: a well-behaved device)."""

    device_id: str
    rules: tuple[FaultRule, ...] = ()

    def active(self, kind: str, name: str | None, version: str | None) -> FaultRule | None:
        """The first rule of ``kind`` that covers this bundle version, or None."""
        for r in self.rules:
            if r.kind == kind and r.applies_to(name, version):
                return r
        return None

    def __bool__(self) -> bool:
        return bool(self.rules)


@dataclass(frozen=True)
class FaultPlan:
    """All rules of a spec; :meth:`for_device` picks the ones that hit a device."""

    rules: tuple[FaultRule, ...] = field(default_factory=tuple)

    def for_device(self, device_id: str, profile: str | None = None) -> DeviceFaults:
        """The faults of a device running ``profile`` (deterministic by id and profile)."""
        return DeviceFaults(device_id, tuple(r for r in self.rules if r.hits(device_id, profile)))

    def describe(self) -> str:
        """The spec in its canonical text form."""
        return ",".join(r.text for r in self.rules) or "none"

    def __bool__(self) -> bool:
        return bool(self.rules)


def _fraction(text: str, rule: str) -> float:
    s = text.strip()
    try:
        value = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        raise FaultSpecError(f"fault rule {rule!r}: fraction {text!r} is not a number (0..1 or a percentage such as 30%)") from None
    if not 0.0 <= value <= 1.0 or value != value:
        raise FaultSpecError(f"fault rule {rule!r}: fraction {text!r} must be between 0 and 1 (or 0% and 100%)")
    return value


def parse_rule(text: str) -> FaultRule:
    """Parse one rule (see module doc); FaultSpecError names the bad part."""
    rule = text.strip()
    m = _RULE_RE.match(rule)
    if not m:
        raise FaultSpecError(f"fault rule {rule!r}: expected KIND[(OPTIONS)]:FRACTION[@BUNDLE=VERSION][#profile=PROFILE], e.g. nan:0.3@digits=2.0.0#profile=x86_64-avx2")
    kind = m["kind"]
    if kind not in KINDS:
        raise FaultSpecError(f"fault rule {rule!r}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    fraction = _fraction(m["fraction"], rule)
    if kind == "offline" and (m["opts"] or "").strip():
        raise FaultSpecError(f"fault rule {rule!r}: offline takes no options")
    golden, factor = kind == "slow", DEFAULT_SLOW_FACTOR
    for opt in filter(None, (o.strip() for o in (m["opts"] or "").split("+"))):
        if opt == "all":
            golden = True
        elif opt.startswith("x") and kind == "slow":
            try:
                factor = float(opt[1:])
            except ValueError:
                raise FaultSpecError(f"fault rule {rule!r}: option {opt!r} must be x<number>, e.g. x8") from None
            if not factor > 0:
                raise FaultSpecError(f"fault rule {rule!r}: option {opt!r} must be a positive factor")
        else:
            allowed = "all, xF (e.g. x8)" if kind == "slow" else "all"
            raise FaultSpecError(f"fault rule {rule!r}: unknown option {opt!r} for {kind}; allowed: {allowed}")
    bundle, version = "*", "*"
    sel = (m["sel"] or "*").strip()
    if sel != "*":
        name, eq, ver = sel.partition("=")
        if not eq or not name.strip() or not ver.strip():
            raise FaultSpecError(f"fault rule {rule!r}: selector {sel!r} must be BUNDLE=VERSION (globs allowed, e.g. digits=2.0.0 or *=2.*) or *")
        bundle, version = name.strip(), ver.strip()
    return FaultRule(kind=kind, fraction=fraction, bundle=bundle, version=version, golden=golden, factor=factor, text=rule, profile=_profile(m["where"], rule))


def _profile(where: str | None, rule: str) -> str:
    """The ``#profile=PROFILE`` part (None: every profile)."""
    if where is None:
        return "*"
    key, eq, value = where.partition("=")
    if key.strip() != "profile" or not eq:
        raise FaultSpecError(f"fault rule {rule!r}: {'#' + where!r} must be #profile=PROFILE (a hardware profile name or glob, e.g. #profile=x86_64-avx2)")
    if not value.strip():
        raise FaultSpecError(f"fault rule {rule!r}: #profile= names no profile (e.g. #profile=x86_64-avx2)")
    if "@" in value:
        raise FaultSpecError(f"fault rule {rule!r}: #profile=PROFILE comes last, after @BUNDLE=VERSION (e.g. slow:1@digits=2.0.0#profile=x86_64-avx2)")
    return value.strip()


def parse_faults(spec: str | None) -> FaultPlan:
    """Parse a comma-separated fault spec ('' or None: no faults)."""
    if spec is None or not spec.strip():
        return FaultPlan()
    # Options use '+' inside parentheses, so a plain split on ',' is safe.
    parts = spec.split(",")
    rules = []
    for i, part in enumerate(parts):
        if not part.strip():
            raise FaultSpecError(f"fault spec {spec!r}: rule {i + 1} is empty (stray comma?)")
        rules.append(parse_rule(part))
    return FaultPlan(tuple(rules))
