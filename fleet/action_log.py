"""Who did what when through the API: one row per state-changing request (the audit page).

The rollout table ``audit`` already records every rollout decision (the operator's and the
reconciler's automatic ones) without saying who asked; this table adds the caller (token name and
role), method, path, answer status and request id of every POST/PUT/PATCH/DELETE the API
answered, refusals included. A table of its own, created on first use (no migration), in the
database's schema and with its table prefix.

:func:`audit_entries` merges both, newest first, for ``GET /api/v1/audit`` and the Audit page.
"""

from __future__ import annotations

import json
import time

import sqlalchemy as sa

from edgeops.fleet.db import Database

def _prefix(db: Database) -> str:
    return db.t.devices.name[: -len("devices")]


def actions_table(db: Database) -> sa.Table:
    """The ``api_actions`` table of a database (created when missing)."""
    t = getattr(db, "_api_actions_table", None)  # built and created once per Database
    if t is None:
        md = sa.MetaData(schema=db.schema)
        p = _prefix(db)
        t = sa.Table(
            f"{p}api_actions",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("ts", sa.Float, nullable=False),
            sa.Column("actor", sa.String(64), nullable=False),
            sa.Column("role", sa.String(16), nullable=False),
            sa.Column("method", sa.String(8), nullable=False),
            sa.Column("path", sa.String(512), nullable=False),
            sa.Column("status", sa.Integer, nullable=False),
            sa.Column("request_id", sa.String(64), nullable=False),
            sa.Column("detail", sa.Text, nullable=False, default=""),
            sa.Index(f"{p}ix_api_actions_ts", "ts"),
        )
        with db.begin() as conn:
            md.create_all(conn, checkfirst=True)
        db._api_actions_table = t
    return t


def outcome_text(status: int, body, reason: str | None) -> str:
    """What the audit shows of an answer: a refusal's error message, else the rollout/command it
    concerned and its status (from the JSON body), else the HTTP reason."""
    try:
        data = json.loads(body) if isinstance(body, (bytes, bytearray)) and body[:1] in (b"{", b"[") else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        if status >= 400 and isinstance(data.get("error"), str):
            return data["error"]
        parts = [f"{k} {data[k]}" for k in ("id", "bundle", "status", "command_id") if isinstance(data.get(k), str)]
        if parts:
            return ", ".join(parts)
    return reason or ""


def record(db: Database, actor: str, role: str, method: str, path: str, status: int, request_id: str, detail: str = "") -> None:
    """Store one API action."""
    t = actions_table(db)
    with db.begin() as conn:
        conn.execute(t.insert().values(ts=time.time(), actor=actor[:64], role=role[:16], method=method[:8], path=path[:512], status=status, request_id=request_id[:64], detail=detail[:2000]))


def audit_entries(db: Database, limit: int = 100, offset: int = 0) -> list[dict]:
    """API actions and rollout decisions, newest first: ``{ts, who, what, detail, source}``."""
    t, a = actions_table(db), db.t.audit
    with db.connect() as conn:
        api_rows = conn.execute(sa.select(t).order_by(t.c.ts.desc()).limit(limit + offset)).all()
        decision_rows = conn.execute(sa.select(a).order_by(a.c.ts.desc(), a.c.id.desc()).limit(limit + offset)).all()
    out = [
        {"ts": m["ts"], "who": f"{m['actor']} ({m['role']})", "what": f"{m['method']} {m['path']} -> {m['status']}", "detail": m["detail"], "source": "api", "request_id": m["request_id"]}
        for m in (r._mapping for r in api_rows)
    ]
    out += [
        {"ts": m["ts"], "who": "console", "what": f"rollout {m['rollout_id']}: {m['action']}", "detail": m["detail"], "source": "rollout", "request_id": None}
        for m in (r._mapping for r in decision_rows)
    ]
    out.sort(key=lambda e: e["ts"], reverse=True)
    return out[offset : offset + limit]
