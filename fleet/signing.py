"""Command signing: the one place the console turns a Command into a signed DSSE envelope.

The console signs with the ``command`` role's key from the keyring (``repository.keys_dir``),
through :func:`edgeops.trust.commands.sign_command`. Everything else in the fleet only sees
the :class:`CommandSigner` protocol, so tests and the simulator can pass their own signer
(still real signatures) and the trust layer can change key handling without touching the fleet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from edgeops.protocol import Command


class CommandSigner(Protocol):
    """Turns a Command into the bytes published on ``edgeops/v1/{device}/cmd``."""

    def sign(self, command: Command) -> bytes:
        """A DSSE envelope (JSON bytes) whose payload is the command."""
        ...


class KeyringCommandSigner:
    """Signs with the first available private key of the keyring's ``command`` role."""

    def __init__(self, keys_dir: str | Path, passphrase: bytes | str | None = None):
        from edgeops.trust.keys import Keyring, passphrase_from_env

        ring = Keyring.load(keys_dir, passphrase if passphrase is not None else passphrase_from_env())
        self.keys_dir = Path(keys_dir)
        self._signer = ring.signers("command", minimum=1)[0]

    def sign(self, command: Command) -> bytes:
        """DSSE envelope of ``command`` signed with the command key."""
        from edgeops.trust.commands import sign_command

        return sign_command(command, self._signer)
