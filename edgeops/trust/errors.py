"""Errors of the trust layer: one family per trust boundary, all rooted at TrustError (exit 7).

Every class here is an :class:`edgeops.errors.TrustError`, so the CLI exits with code 7 on
any of them and the agent can catch the whole family with one ``except``. Third-party errors
(python-tuf, securesystemslib, cryptography, urllib) are wrapped at the boundary with
``raise ... from e``; nothing from those libraries escapes the public API::

    TrustError (7)                       edgeops.errors.TrustError
    ├── KeyFileError                     a key file is missing, unreadable, of the wrong type,
    │                                    or encrypted and no (or a wrong) passphrase was given
    ├── RepositoryError                  the repository side cannot do what was asked
    │   └── DowngradeRefusedError        publish of a lower release counter without --allow-downgrade
    ├── MetadataError                    signed TUF metadata that must not be trusted
    │   ├── SignatureError               no valid signature by a key the delegating role trusts
    │   │   └── ThresholdError           valid signatures, but fewer than the role's threshold
    │   ├── ExpiredError                 metadata past its expiry (root, targets, snapshot, timestamp)
    │   ├── RollbackError                a version (or release counter) lower than one already trusted
    │   ├── MixAndMatchError             metadata that disagrees with the version/length/hash its
    │   │                                parent role declares (files from different repository states)
    │   └── MalformedMetadataError       metadata that does not parse
    ├── TargetError                      a downloaded target that is not the signed one
    │   ├── LengthError                  more (endless data) or fewer bytes than the signed length
    │   ├── HashMismatchError            content whose sha256 differs from the signed one
    │   └── UnknownTargetError           the repository's signed targets do not list this name
    ├── RepositoryUnavailableError       transport failure: the repository could not be reached
    │   └── NotFoundError                the repository has no file at that path
    └── CommandError                     a console -> device command that must not be obeyed
        ├── MalformedCommandError        not a DSSE envelope / wrong payload type / bad Command JSON
        ├── CommandSignatureError        not signed by a trusted command key
        ├── WrongDeviceError             addressed to another device or a cohort we are not in
        ├── ReplayError                  sequence number not above the highest accepted one
        ├── CommandExpiredError          the command's expiry has passed
        └── AssignmentMismatchError      an assignment whose target name/sha256/length does not
                                         match the TUF-verified target exactly

:class:`RollbackError` also covers the device-side release-counter floor
(:class:`edgeops.trust.client.ReleaseFloor`): a bundle whose signed release counter is below
the highest one this device has committed.
"""

from __future__ import annotations

from edgeops.errors import TrustError

__all__ = [
    "TrustError",
    "KeyFileError",
    "RepositoryError",
    "DowngradeRefusedError",
    "MetadataError",
    "SignatureError",
    "ThresholdError",
    "ExpiredError",
    "RollbackError",
    "MixAndMatchError",
    "MalformedMetadataError",
    "TargetError",
    "LengthError",
    "HashMismatchError",
    "UnknownTargetError",
    "RepositoryUnavailableError",
    "NotFoundError",
    "CommandError",
    "MalformedCommandError",
    "CommandSignatureError",
    "WrongDeviceError",
    "ReplayError",
    "CommandExpiredError",
    "AssignmentMismatchError",
]


class KeyFileError(TrustError):
    """A key file is missing, unreadable, of the wrong type, or cannot be decrypted."""


class RepositoryError(TrustError):
    """The repository (publisher side) cannot do what was asked; the message says why."""


class DowngradeRefusedError(RepositoryError):
    """A bundle's release counter is not above the published one for the same name."""


class MetadataError(TrustError):
    """Signed TUF metadata failed verification and was not trusted (nothing was cached)."""


class SignatureError(MetadataError):
    """Metadata carries no valid signature by a key its delegating role trusts."""


class ThresholdError(SignatureError):
    """Metadata carries valid signatures, but fewer than the role's threshold."""


class ExpiredError(MetadataError):
    """Metadata is past its expiry date (checked against the client's reference time)."""


class RollbackError(MetadataError):
    """A metadata version, or a bundle release counter, lower than one already trusted."""


class MixAndMatchError(MetadataError):
    """Metadata that does not match the version, length or hash its parent role declares."""


class MalformedMetadataError(MetadataError):
    """Metadata that does not parse as TUF metadata of the expected role."""


class TargetError(TrustError):
    """A target (bundle) that is not, or cannot be shown to be, the one the metadata signs."""


class LengthError(TargetError):
    """More bytes than the signed length (endless data attack), or fewer."""


class HashMismatchError(TargetError):
    """Content whose hash differs from the one in signed metadata."""


class UnknownTargetError(TargetError):
    """The repository's signed targets metadata does not list the requested target."""


class RepositoryUnavailableError(TrustError):
    """The repository could not be reached or answered with an error (transport failure)."""


class NotFoundError(RepositoryUnavailableError):
    """The repository has no file at the requested path."""


class CommandError(TrustError):
    """A console -> device command must not be obeyed."""


class MalformedCommandError(CommandError):
    """Not a DSSE envelope, a wrong payload type, or a payload that is not a valid Command."""


class CommandSignatureError(CommandError):
    """The envelope is not signed by any trusted command key."""


class WrongDeviceError(CommandError):
    """The command is addressed to another device, or to a cohort this device is not in."""


class ReplayError(CommandError):
    """The command's sequence number is not above the highest one accepted for its audience."""


class CommandExpiredError(CommandError):
    """The command's expiry time has passed."""


class AssignmentMismatchError(CommandError):
    """An assignment names a target whose name, sha256 or length differ from the verified one."""
