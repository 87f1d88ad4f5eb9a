"""The device's release-counter floor (anti-rollback memory); no TUF code here."""

from __future__ import annotations

import json
from pathlib import Path

from edgeops.trust import errors
from edgeops.trust.fsutil import atomic_write


class ReleaseFloor:
    """Persisted per-bundle-name release-counter floor (device-side anti-rollback).

    The file is JSON ``{"format": 1, "floors": {"<bundle name>": <release>}}``, replaced
    atomically on every raise. A missing file means no floor yet.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def floors(self) -> dict[str, int]:
        """All floors; TrustError when the file exists but is corrupt (fail closed)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise errors.TrustError(f"{self.path}: cannot read the release floor ({e.strerror or e})") from e
        try:
            data = json.loads(raw)
            floors = data["floors"]
            if not isinstance(floors, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in floors.items()):
                raise ValueError("floors must map names to integers")
        except (ValueError, KeyError, TypeError) as e:
            raise errors.TrustError(f"{self.path}: release floor file is corrupt ({e}); refusing to guess a floor") from e
        return dict(floors)

    def get(self, name: str) -> int:
        """The floor of one bundle name (0 when none)."""
        return self.floors().get(name, 0)

    def check(self, name: str, release: int) -> None:
        """Raise RollbackError when ``release`` is below the committed floor of ``name``."""
        floor = self.get(name)
        if release < floor:
            raise errors.RollbackError(
                f"bundle {name!r} release {release} is below this device's floor {floor}: refusing a rollback "
                f"(publish the old version again with `edgeops publish --allow-downgrade` to issue a higher counter)"
            )

    def raise_to(self, name: str, release: int) -> None:
        """Raise the floor of ``name`` to ``release`` (never lowers it); atomic write."""
        floors = self.floors()
        if release <= floors.get(name, 0) and name in floors:
            return
        floors[name] = max(release, floors.get(name, 0))
        atomic_write(self.path, json.dumps({"format": 1, "floors": floors}, sort_keys=True, indent=2).encode() + b"\n")
