"""Per-process memos of pure verification results (a simulation shortcut, on by default).

Thousands of simulated devices in one process verify the very same bytes: the same TUF
metadata signed by the same keys, the same bundle file. The checks involved are pure
functions of their inputs, so a simulator process remembers each *successful* result, keyed
by the exact inputs, and answers a repeat from memory:

- :func:`memo_verify_signature` wraps ``SSlibKey.verify_signature`` (used by python-tuf and by
  ``edgeops.trust.client.check_no_bad_signatures``): key = the key's id, type, scheme and
  public value, the signature's key id and value, and the sha256 and length of the signed
  bytes. ``signed_bytes`` is still computed by every device; only the Ed25519 arithmetic on
  identical inputs is skipped.
- :func:`memo_check_canonical` wraps ``edgeops.trust.client.check_canonical_encoding``: key =
  the sha256 and length of the metadata file.
- :func:`memo_check_no_bad_signatures` wraps ``edgeops.trust.client.check_no_bad_signatures``
  (every signature on a downloaded metadata file must be a good one by a key of its role):
  key = the sha256 and length of the file and the device's trusted root's keys (id, type,
  scheme, public value) of every top-level role. python-tuf's own signature checks of the
  same file still run on every device (their Ed25519 arithmetic through the first memo).

Bundles are not memoized: the agent's verifying phase is one pass that writes each member into
the device's own store while it checks it (:meth:`edgeops.agent.store.ModelStore.stage`), so
every simulated device reads and hashes its own download once.

What is never remembered: failures. A bad signature or a non-canonical file
raises every time, computed afresh. A memo
entry can only answer the exact input that produced it (sha256 over the bytes; a collision
would be needed to reach a wrong answer).

:func:`install` puts the wrappers in place for the whole process. The controller does it in
simulator processes it spawned (``processes >= 1``), never in a caller's own process
(``processes = 0``: tests and the demo may run other agents or a console beside the devices).
``SimSettings.verify_memo = False`` (``edgeops fleet simulate --no-verify-memo``) turns it off.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from typing import Any, Callable

MAX_ENTRIES = 4096


class Memo:
    """A bounded, thread-safe set of input keys whose check passed (LRU)."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._d: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Any) -> Any:
        """The remembered value for ``key`` (None when absent)."""
        with self._lock:
            value = self._d.get(key)
            if value is None:
                self.misses += 1
                return None
            self._d.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Any, value: Any = True) -> None:
        """Remember that ``key`` passed (with ``value``)."""
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.max_entries:
                self._d.popitem(last=False)

    def stats(self) -> dict:
        """Entries, hits and misses."""
        with self._lock:
            return {"entries": len(self._d), "hits": self.hits, "misses": self.misses}


def _digest(data: bytes) -> tuple[str, int]:
    return hashlib.sha256(data).hexdigest(), len(data)


def memo_verify_signature(orig: Callable, memo: Memo) -> Callable:
    """Wrap ``SSlibKey.verify_signature(self, signature, data)``: successes remembered per exact input."""

    @functools.wraps(orig)
    def verify_signature(self, signature, data: bytes) -> None:
        try:
            key = ("sig", self.keyid, self.keytype, self.scheme, str(self.keyval.get("public")), signature.keyid, signature.signature, *_digest(bytes(data)))
        except Exception:  # an odd key or signature object: no memo, the real check decides
            return orig(self, signature, data)
        if memo.get(key) is not None:
            return None
        result = orig(self, signature, data)  # raises on a bad signature: never remembered
        memo.put(key)
        return result

    verify_signature.__edgeops_memo__ = memo  # type: ignore[attr-defined]
    return verify_signature


def memo_check_canonical(orig: Callable, memo: Memo) -> Callable:
    """Wrap ``check_canonical_encoding(data, source)``: successes remembered by sha256 and length."""

    @functools.wraps(orig)
    def check_canonical_encoding(data: bytes, source: str) -> None:
        key = ("canonical", *_digest(bytes(data)))
        if memo.get(key) is not None:
            return None
        orig(data, source)
        memo.put(key)

    check_canonical_encoding.__edgeops_memo__ = memo  # type: ignore[attr-defined]
    return check_canonical_encoding


def root_fingerprint(root) -> tuple:
    """The keys a trusted root assigns to each top-level role (what ``check_no_bad_signatures`` depends on)."""
    out = []
    for role in ("root", "timestamp", "snapshot", "targets"):
        r = root.roles[role]
        keys = []
        for kid in sorted(r.keyids):
            k = root.keys.get(kid)
            keys.append((kid, None) if k is None else (kid, k.keytype, k.scheme, str(k.keyval.get("public"))))
        out.append((role, r.threshold, tuple(keys)))
    return tuple(out)


def memo_check_no_bad_signatures(orig: Callable, memo: Memo) -> Callable:
    """Wrap ``check_no_bad_signatures(data, source, trusted_root)``: successes remembered per file and root keys."""

    @functools.wraps(orig)
    def check_no_bad_signatures(data: bytes, source: str, trusted_root) -> None:
        try:
            key = ("no-bad-signatures", *_digest(bytes(data)), root_fingerprint(trusted_root))
        except Exception:  # an odd root object: no memo, the real check decides
            return orig(data, source, trusted_root)
        if memo.get(key) is not None:
            return None
        orig(data, source, trusted_root)
        memo.put(key)

    check_no_bad_signatures.__edgeops_memo__ = memo  # type: ignore[attr-defined]
    return check_no_bad_signatures


_installed: dict[str, Memo] = {}
_install_lock = threading.Lock()


def install() -> dict[str, Memo]:
    """Put the memo wrappers in place in this process (idempotent); returns the memos by name."""
    with _install_lock:
        if _installed:
            return _installed
        from securesystemslib.signer import SSlibKey

        import edgeops.trust.client as client

        memos = {"signatures": Memo(), "canonical": Memo(), "no_bad_signatures": Memo()}
        SSlibKey.verify_signature = memo_verify_signature(SSlibKey.verify_signature, memos["signatures"])
        client.check_canonical_encoding = memo_check_canonical(client.check_canonical_encoding, memos["canonical"])
        client.check_no_bad_signatures = memo_check_no_bad_signatures(client.check_no_bad_signatures, memos["no_bad_signatures"])
        _installed.update(memos)
        return _installed


def stats() -> dict:
    """Hits and misses of each installed memo ({} when not installed)."""
    return {name: m.stats() for name, m in _installed.items()}
