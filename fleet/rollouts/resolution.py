"""Which signed target each device of a rollout gets: one version, a bundle per hardware profile.

A version may be published for several profiles (``edgeops publish`` of one bundle per
profile; :mod:`edgeops.trust.repository`): one TUF target each, told apart by the signed
``custom.profile``. A rollout of ``NAME@VERSION`` pins every such target when it is created
(:class:`RolloutTargets`, stored with the rollout), and when the version is published for more
than one profile each device gets the target built for the profile it reported (hello/state;
the ``devices.profile`` column):

- its profile has a target: that one;
- its profile has none: the device is **excluded** (never assigned a bundle it would refuse),
  and the rollout's status names it with the reason (:func:`exclusions`);
- it has not reported a profile yet: excluded until it reports (the next wave, or the last
  wave's top-up, takes it then).

A version published for one profile is delivered to every selected device, as before
per-profile targets: the console's profile column may hold an operator's enrolment label rather
than the profile name a bundle is built for, and the agent refuses a bundle built for another
profile itself (``bundle_rejected``).

A rollout whose selection has devices with known profiles and not one device that can get a
target is refused at creation (:func:`check_selection`), naming the profiles present and the
profiles published. An empty selection is allowed, as before (devices may enrol later).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from edgeops.errors import FleetError
from edgeops.trust.targets import TargetRecord

ANY_PROFILE = ""  # the key of a rollout stored before per-profile targets: its one target serves every device
NOT_REPORTED = "-"  # how status names devices that have not reported a profile


class NoMatchingTargetError(FleetError):
    """No device of a rollout's selection can get a target of the version (profiles differ)."""


@dataclass(frozen=True)
class ProfileTarget:
    """One pinned target of a rollout: what an assign command names (exactly as signed)."""

    profile: str
    name: str
    sha256: str
    length: int
    release: int

    @classmethod
    def from_record(cls, record: TargetRecord) -> "ProfileTarget":
        """From a signed target of the console's repository."""
        return cls(record.profile, record.name, record.sha256, record.length, record.release)


@dataclass(frozen=True)
class RolloutTargets:
    """The targets of one rollout's version by profile (see the module doc)."""

    bundle: str  # NAME@VERSION, for reasons
    by_profile: dict[str, ProfileTarget]

    @classmethod
    def from_records(cls, bundle: str, records: dict[str, TargetRecord]) -> "RolloutTargets":
        """From :func:`edgeops.fleet.targets.find_targets`' answer."""
        return cls(bundle, {p: ProfileTarget.from_record(r) for p, r in sorted(records.items())})

    @property
    def profiles(self) -> list[str]:
        """The profiles the version is published for (sorted)."""
        return sorted(p for p in self.by_profile if p != ANY_PROFILE)

    @property
    def serves_any(self) -> bool:
        """True when one target serves every device (a version published for one profile, or a
        rollout stored before per-profile targets): no device is excluded."""
        return len(self.by_profile) == 1 or ANY_PROFILE in self.by_profile

    def primary(self) -> ProfileTarget:
        """The target stored in the rollout row's own columns: the plain path's, else the first profile's."""
        plain = [t for t in self.by_profile.values() if t.name.count("/") == 2]
        return plain[0] if plain else self.by_profile[sorted(self.by_profile)[0]]

    def resolve(self, profile: str | None) -> ProfileTarget | None:
        """The target a device of ``profile`` gets, or None: excluded. A version with one target
        delivers it to every selected device, as before per-profile targets (the agent refuses
        a bundle built for another profile itself)."""
        if len(self.by_profile) == 1:
            return next(iter(self.by_profile.values()))
        if ANY_PROFILE in self.by_profile:
            return self.by_profile[ANY_PROFILE]
        return self.by_profile.get(profile) if profile else None

    def by_name(self, target_name: str | None) -> ProfileTarget:
        """The pinned target an assignment recorded (the primary for rows stored before per-profile targets)."""
        for t in self.by_profile.values():
            if t.name == target_name:
                return t
        return self.primary()

    def why_excluded(self, profile: str | None) -> str:
        """Why a device of ``profile`` gets no target (for status and the API)."""
        built = ", ".join(self.profiles) or "none"
        if not profile:
            return f"no profile reported yet; {self.bundle} is built per profile ({built}): the device joins a later wave once it reports"
        return f"no target of {self.bundle} built for profile {profile} (published for: {built}); publish a bundle of this version built for {profile} to include it"

    def to_json(self) -> str:
        """Stored form (the ``rollouts.targets`` column)."""
        return json.dumps({"bundle": self.bundle, "by_profile": {p: asdict(t) for p, t in self.by_profile.items()}}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RolloutTargets":
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        return cls(data["bundle"], {p: ProfileTarget(**t) for p, t in data["by_profile"].items()})

    @classmethod
    def single(cls, bundle: str, name: str, sha256: str, length: int, release: int) -> "RolloutTargets":
        """A rollout stored before per-profile targets: its one target for every device."""
        return cls(bundle, {ANY_PROFILE: ProfileTarget(ANY_PROFILE, name, sha256, length, release)})

    def to_dict(self) -> dict[str, Any]:
        """JSON form for status: profile -> target."""
        return {p or "*": {"name": t.name, "sha256": t.sha256, "length": t.length, "release": t.release} for p, t in sorted(self.by_profile.items())}


def check_selection(targets: RolloutTargets, profiles: Iterable[str | None]) -> None:
    """NoMatchingTargetError when the selection (the profiles of its devices) has devices with
    known profiles and none of its devices can get a target; names the profiles present and published."""
    present = Counter(p or NOT_REPORTED for p in profiles)
    if not present or not any(p != NOT_REPORTED for p in present):
        return
    if any(targets.resolve(None if p == NOT_REPORTED else p) is not None for p in present):
        return
    seen = ", ".join(f"{p} ({n} devices)" for p, n in sorted(present.items()))
    raise NoMatchingTargetError(
        f"{targets.bundle}: no selected device can run it: the selection's devices run profile(s) {seen}; "
        f"the version is published for profile(s) {', '.join(targets.profiles) or 'none'}; "
        "publish a bundle of this version built for one of the selection's profiles, or select devices of a published profile"
    )


def exclusions(targets: RolloutTargets, devices: Iterable[tuple[str, str | None]], sample: int = 10) -> dict[str, Any]:
    """The selected devices (id, profile) the rollout leaves out: ``{"devices": n, "by_profile":
    {profile: {"devices": n, "reason": ..., "sample": [ids]}}}`` (profile ``-``: not reported)."""
    by: dict[str, dict[str, Any]] = {}
    for device_id, profile in devices:
        if targets.resolve(profile) is not None:
            continue
        entry = by.setdefault(profile or NOT_REPORTED, {"devices": 0, "reason": targets.why_excluded(profile), "sample": []})
        entry["devices"] += 1
        if len(entry["sample"]) < sample:
            entry["sample"].append(device_id)
    for entry in by.values():
        entry["sample"].sort()
    return {"devices": sum(e["devices"] for e in by.values()), "by_profile": dict(sorted(by.items()))}
