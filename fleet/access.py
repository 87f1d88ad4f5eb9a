"""Who may call what: API tokens with roles, browser sessions and their CSRF tokens.

Roles are ordered ``viewer`` < ``operator`` < ``admin``:

- ``viewer``: every GET (devices, events, rollouts, bundles, audit, the console's pages);
- ``operator``: rollout actions (create, start, pause, resume, promote, abort) and self-tests;
- ``admin``: everything, including the token list (``GET /api/v1/access``) and any state-changing
  route not named here (a new POST route is admin-only until it is given a role).

Tokens come from ``[[api.access]]`` in fleet.toml (name, token or token_env, role); the older
``api.tokens``/``tokens_env`` keep working as admin tokens, so existing clients see no change.

A browser signs in at /ui/login with a token: the console keeps the session in memory (a
restart signs everyone out) and sets an HttpOnly, SameSite=Strict cookie holding only a random
session id. Every state-changing request made with the cookie must carry the session's CSRF
token (``X-CSRF-Token`` header, or a ``csrf`` form field), compared in constant time; a bearer
token request needs none (a browser never adds an Authorization header by itself).
"""

from __future__ import annotations

import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass

ROLES = ("viewer", "operator", "admin")
SESSION_COOKIE = "edgeops_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 12 * 3600

# (method, path pattern) -> role needed; GETs not listed need viewer, other methods not listed admin
_RULES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("POST", re.compile(r"^/api/v1/rollouts$"), "operator"),
    ("POST", re.compile(r"^/api/v1/rollouts/[^/]+/(start|pause|resume|promote|abort)$"), "operator"),
    ("POST", re.compile(r"^/api/v1/devices/[^/]+/self-test$"), "operator"),
    ("GET", re.compile(r"^/api/v1/access$"), "admin"),
)


def role_needed(method: str, path: str) -> str:
    """The least role that may make this request."""
    for m, pattern, role in _RULES:
        if m == method and pattern.fullmatch(path):
            return role
    return "viewer" if method in ("GET", "HEAD", "OPTIONS") else "admin"


def allows(role: str, needed: str) -> bool:
    """True when ``role`` is at least ``needed``."""
    return ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class Principal:
    """The caller: the token's name (shown in the audit log, never the token) and its role."""

    name: str
    role: str


class TokenTable:
    """Bearer tokens to principals, compared in constant time."""

    def __init__(self, entries: list[tuple[str, str, str]]):
        """``entries``: (name, token, role)."""
        self._entries = [(name, token.encode("utf-8", "surrogateescape"), role) for name, token, role in entries if token]

    def lookup(self, token: str | None) -> Principal | None:
        """The principal of a token, or None when it is not configured."""
        if not token:
            return None
        raw = token.encode("utf-8", "surrogateescape")
        found = None
        for name, t, role in self._entries:  # no early exit: every comparison runs
            if hmac.compare_digest(raw, t) and found is None:
                found = Principal(name, role)
        return found

    def names(self) -> list[dict]:
        """Names and roles (no tokens): what ``GET /api/v1/access`` shows an admin."""
        return [{"name": name, "role": role} for name, _, role in self._entries]


@dataclass
class Session:
    """One signed-in browser."""

    principal: Principal
    csrf: str
    expires: float


class SessionStore:
    """Browser sessions in memory, by random id."""

    def __init__(self, ttl_s: float = SESSION_TTL_S):
        self.ttl_s = ttl_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, principal: Principal) -> tuple[str, Session]:
        """A new session id (the cookie's value) and its session with a fresh CSRF token."""
        sid = secrets.token_urlsafe(32)
        session = Session(principal, secrets.token_urlsafe(32), time.time() + self.ttl_s)
        with self._lock:
            now = time.time()
            for k in [k for k, s in self._sessions.items() if s.expires < now]:
                del self._sessions[k]
            self._sessions[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        """The live session of a cookie value, or None."""
        if not sid:
            return None
        with self._lock:
            s = self._sessions.get(sid)
        return s if s is not None and s.expires >= time.time() else None

    def drop(self, sid: str | None) -> None:
        """Sign out."""
        with self._lock:
            self._sessions.pop(sid or "", None)


def csrf_ok(session: Session, given: str | None) -> bool:
    """True when the request carries the session's CSRF token."""
    return bool(given) and hmac.compare_digest(session.csrf.encode(), given.encode("utf-8", "surrogateescape"))
