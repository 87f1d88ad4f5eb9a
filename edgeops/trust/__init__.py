"""Trust: TUF-signed bundle repository, verifying client, keys and DSSE-signed commands.

Modules (each has one job):

- :mod:`edgeops.trust.errors`      the exception tree (all ``TrustError``, exit code 7)
- :mod:`edgeops.trust.keys`        Ed25519 key files: generate, encrypt, load signers / public keys
- :mod:`edgeops.trust.transport`   ``RepositoryTransport`` protocol + directory and HTTP transports
- :mod:`edgeops.trust.client`      ``TrustClient`` (python-tuf ngclient) and the ``ReleaseFloor``
- :mod:`edgeops.trust.verify`      one-pass verification of a bundle file against a signed target
- :mod:`edgeops.trust.commands`    DSSE command envelopes: sign, verify, check an assignment
- :mod:`edgeops.trust.repository`  the publisher side: init, publish, refresh, rotate
- :mod:`edgeops.trust.cli`         ``edgeops keys|publish|verify|repo``

Target path convention: a bundle named ``N`` at version ``V`` is the TUF target
``N/V/N-V.bundle``; with consistent snapshots its file in the repository is
``targets/N/V/<sha256>.N-V.bundle``.

This package imports no wing (agent, fleet, converters) and no heavy ML dependency.
"""

from edgeops.trust.errors import TrustError

__all__ = ["TrustError"]
