"""Every gate's value over time, for the rollout page's charts.

The waves table keeps only each gate's latest verdict. While a rollout is running or paused the
console samples its waves' gates every few seconds (:class:`GateSampler`, on the API's event
loop, leader only so replicas do not write twice) and stores a row when a value or verdict
changed, in a table of its own (created on first use, no migration).

A gate verdict is read in either form the gates module writes: ``passed`` (bool) and/or
``outcome`` (pass / fail / inconclusive).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import sqlalchemy as sa

from edgeops.fleet.db import Database

log = logging.getLogger("edgeops.fleet.ui")

SAMPLE_EVERY_S = 2.0
LIVE_STATUSES = ("running", "paused", "aborting")


def outcome(gate: dict) -> str:
    """pass / fail / inconclusive of one gate verdict dict."""
    if gate.get("outcome") in ("pass", "fail", "inconclusive"):
        return gate["outcome"]
    passed = gate.get("passed")
    return "inconclusive" if passed is None else ("pass" if passed else "fail")


def samples_table(db: Database) -> sa.Table:
    """The ``gate_samples`` table of a database (created when missing)."""
    t = getattr(db, "_gate_samples_table", None)
    if t is None:
        md = sa.MetaData(schema=db.schema)
        p = db.t.devices.name[: -len("devices")]
        t = sa.Table(
            f"{p}gate_samples",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("rollout_id", sa.String(64), nullable=False),
            sa.Column("wave_idx", sa.Integer, nullable=False),
            sa.Column("gate", sa.String(64), nullable=False),
            sa.Column("ts", sa.Float, nullable=False),
            sa.Column("measured", sa.Float),
            sa.Column("threshold", sa.Float),
            sa.Column("outcome", sa.String(16), nullable=False),
            sa.Index(f"{p}ix_gate_samples_rollout", "rollout_id", "wave_idx", "gate", "ts"),
        )
        with db.begin() as conn:
            md.create_all(conn, checkfirst=True)
        db._gate_samples_table = t
    return t


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def sample(db: Database, now: float | None = None) -> int:
    """Store the gate values of live rollouts that changed since the last sample; returns rows written."""
    now = time.time() if now is None else now
    s, w, r = samples_table(db), db.t.waves, db.t.rollouts
    with db.connect() as conn:
        waves = conn.execute(sa.select(w.c.rollout_id, w.c.idx, w.c.gates).join(r, r.c.id == w.c.rollout_id).where(r.c.status.in_(LIVE_STATUSES), w.c.gates != "[]")).all()
        last = {}
        if waves:
            ids = sorted({x.rollout_id for x in waves})
            newest = sa.select(sa.func.max(s.c.id)).where(s.c.rollout_id.in_(ids)).group_by(s.c.rollout_id, s.c.wave_idx, s.c.gate)
            for m in conn.execute(sa.select(s).where(s.c.id.in_(newest))).all():
                last[(m.rollout_id, m.wave_idx, m.gate)] = (m.measured, m.threshold, m.outcome)
    rows = []
    for rollout_id, idx, text in waves:
        for g in json.loads(text or "[]"):
            if not isinstance(g, dict) or not g.get("gate"):
                continue
            value = (_num(g.get("measured")), _num(g.get("threshold")), outcome(g))
            if last.get((rollout_id, idx, g["gate"])) != value:
                rows.append({"rollout_id": rollout_id, "wave_idx": idx, "gate": str(g["gate"])[:64], "ts": now, "measured": value[0], "threshold": value[1], "outcome": value[2]})
    if rows:
        with db.begin() as conn:
            conn.execute(s.insert(), rows)
    return len(rows)


def history(db: Database, rollout_id: str) -> dict[str, dict]:
    """``{"wave N / gate": {"ts": [...], "measured": [...], "threshold": [...], "outcome": last}}`` for charts."""
    s = samples_table(db)
    with db.connect() as conn:
        rows = conn.execute(sa.select(s).where(s.c.rollout_id == rollout_id).order_by(s.c.wave_idx, s.c.gate, s.c.ts)).all()
    out: dict[str, dict] = {}
    for m in rows:
        series = out.setdefault(f"wave {m.wave_idx + 1} / {m.gate}", {"wave": m.wave_idx, "gate": m.gate, "ts": [], "measured": [], "threshold": []})
        series["ts"].append(m.ts)
        series["measured"].append(m.measured)
        series["threshold"].append(m.threshold)
        series["outcome"] = m.outcome
    return out


class GateSampler:
    """Runs :func:`sample` on the API's event loop while this replica leads (aiohttp startup/cleanup hooks)."""

    def __init__(self, console, every_s: float = SAMPLE_EVERY_S):
        self.console = console
        self.every_s = every_s
        self._task: asyncio.Task | None = None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.console.is_leader:  # the replica whose reconciler writes the gates
                try:
                    await loop.run_in_executor(None, sample, self.console.db)
                except Exception:  # noqa: BLE001 (a failed sample must not end the sampling)
                    log.exception("gate sample failed")
            await asyncio.sleep(self.every_s)

    async def start(self, app) -> None:
        """aiohttp on_startup hook."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self, app) -> None:
        """aiohttp on_cleanup hook."""
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
