"""The steps the install machine and the ``self_test`` command share: fetch a signed target, and
check that a bundle fits this device (RAUC's ``verify_compatible``).

Both paths run :func:`fetch_verified` and then the store's one verifying pass
(:meth:`edgeops.agent.store.ModelStore.stage`) with :func:`check_compatible` as its manifest
check, so what a device accepts for a test is exactly what it accepts for an install.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from edgeops.bundle import Manifest
from edgeops.errors import BundleError
from edgeops.profiles import HardwareProfile
from edgeops.trust.commands import check_assignment
from edgeops.trust.floor import ReleaseFloor
from edgeops.trust.targets import TargetRecord


class TargetSource(Protocol):
    """What the agent's TUF client (in-process or its worker) offers the update path."""

    def refresh(self) -> None:
        """Update the signed metadata from the repository."""

    def get_target(self, name: str) -> TargetRecord:
        """The verified target record of ``name``."""

    def download_target(self, record: TargetRecord, dest: Path) -> Path:
        """Download the target's file, checked against its signed length and hashes."""


@dataclass(frozen=True)
class Assignment:
    """What a command names: the target it expects the repository to have signed."""

    command_id: str
    target_name: str
    target_sha256: str
    target_length: int


def check_compatible(profile: HardwareProfile, bundle: TargetRecord | Manifest) -> None:
    """BundleError unless ``bundle`` was built for this device's profile (and, for a manifest,
    its runtime). A signed target is checked by its signed ``profile`` custom field (before the
    download); a manifest by its ``profile`` and ``runtime`` (during the verifying pass, before
    any member is written)."""
    if isinstance(bundle, TargetRecord):
        if bundle.profile and bundle.profile != profile.name:
            raise BundleError(f"{bundle.name} was built for profile {bundle.profile!r}; this device runs {profile.name!r}")
        return
    if bundle.profile != profile.name:
        raise BundleError(f"bundle {bundle.name} {bundle.version} is for profile {bundle.profile!r}; this device runs {profile.name!r}")
    if bundle.runtime != profile.runtime.name:
        raise BundleError(f"bundle {bundle.name} {bundle.version} needs runtime {bundle.runtime!r}; profile {profile.name} uses {profile.runtime.name!r}")
    from edgeops.agent.runtimes import check_runtime_installed

    check_runtime_installed(bundle)  # an optional runtime (OpenVINO) this device does not have


def compatibility_check(profile: HardwareProfile) -> Callable[[Manifest], None]:
    """:func:`check_compatible` for manifests of this profile (the store's ``check``)."""
    return lambda manifest: check_compatible(profile, manifest)


def fetch_verified(
    trust: TargetSource,
    assignment: Assignment,
    profile: HardwareProfile,
    dest: Path,
    floor: ReleaseFloor | None = None,
    checkpoint: Callable[[str], None] | None = None,
) -> TargetRecord:
    """Refresh TUF metadata, require the assignment to name the signed target exactly, check
    the release floor (when given: installs; a self-test activates nothing) and the profile,
    then download to ``dest`` (kept when already there: it is checked again by the verifying
    pass). Returns the signed record. Raises TrustError (RepositoryUnavailableError when the
    repository cannot be reached) or BundleError.
    """
    trust.refresh()
    record = trust.get_target(assignment.target_name)
    check_assignment(assignment, record)  # type: ignore[arg-type]  # reads the same four fields as a Command
    if floor is not None:
        floor.check(record.bundle_name, record.release)
    check_compatible(profile, record)
    if checkpoint is not None:
        checkpoint("verified-target")
    if not dest.exists():
        trust.download_target(record, dest)
    return record
