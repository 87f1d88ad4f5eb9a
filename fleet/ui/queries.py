"""What the console's pages read that the REST API has no call for: a searchable device page,
fleet summaries, a device's telemetry series. Server-side paging keeps a 10,000-device fleet fast:
one COUNT and one LIMIT/OFFSET query per table screen.
"""

from __future__ import annotations

import json
from collections import Counter

import sqlalchemy as sa

from edgeops.fleet.db import Database
from edgeops.fleet.registry import _devices_select, device_row_to_dict

PAGE_SIZE = 50


def _search_filter(t: sa.Table, q: str):
    """Devices whose id, profile, active NAME@VERSION, state or tags contain ``q`` (case-insensitive)."""
    like = f"%{_like_escape(q.lower())}%"
    version = sa.func.coalesce(t.c.active_name, "") + "@" + sa.func.coalesce(t.c.active_version, "")
    cols = (t.c.id, sa.func.coalesce(t.c.profile, ""), version, t.c.state, t.c.tags)
    return sa.or_(*(sa.func.lower(c).like(like, escape="\\") for c in cols))


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def device_page(
    db: Database,
    q: str = "",
    online: bool | None = None,
    page: int = 1,
    page_size: int = PAGE_SIZE,
    version: str | None = None,
    profile: str | None = None,
    tag: str | None = None,
) -> dict:
    """One screen of the device table: ``{rows, total, page, pages}`` (rows as the API's device dicts).

    ``q`` searches id, profile, active version, state and tags; ``version`` (NAME@VERSION),
    ``profile`` and ``tag`` (KEY=VALUE) match exactly, ``none`` meaning no version / no profile,
    as the summary counts them.
    """
    t = db.t.devices
    where = []
    if q:
        where.append(_search_filter(t, q))
    if online is not None:
        where.append(t.c.online == online)
    if version == "none":
        where.append(t.c.active_name.is_(None))
    elif version:
        name, _, ver = version.partition("@")
        where += [t.c.active_name == name, t.c.active_version == ver]
    if profile == "none":
        where.append(t.c.profile.is_(None))
    elif profile:
        where.append(t.c.profile == profile)
    if tag:
        key, _, value = tag.partition("=")
        # tags are stored as compact sorted JSON (db.dumps), so one pair reads exactly "key":"value"
        where.append(t.c.tags.like(f"%{_like_escape(json.dumps(key) + ':' + json.dumps(value))}%", escape="\\"))
    with db.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(t).where(*where)).scalar() or 0
        pages = max(1, -(-total // page_size))
        page = min(max(1, page), pages)
        rows = conn.execute(_devices_select(db).where(*where).order_by(t.c.id).limit(page_size).offset((page - 1) * page_size)).all()
    return {"rows": [device_row_to_dict(r) for r in rows], "total": total, "page": page, "pages": pages}


def fleet_summary(db: Database) -> dict:
    """Counts: online/offline, by active version, by profile, by tag (KEY=VALUE)."""
    t = db.t.devices
    with db.connect() as conn:
        online = dict(conn.execute(sa.select(t.c.online, sa.func.count()).group_by(t.c.online)).all())
        by_version = conn.execute(sa.select(t.c.active_name, t.c.active_version, sa.func.count()).group_by(t.c.active_name, t.c.active_version)).all()
        by_profile = conn.execute(sa.select(t.c.profile, sa.func.count()).group_by(t.c.profile)).all()
        by_tags = conn.execute(sa.select(t.c.tags, sa.func.count()).group_by(t.c.tags)).all()  # few distinct tag sets even in a big fleet
    tags: Counter[str] = Counter()
    for text, n in by_tags:
        for k, v in json.loads(text or "{}").items():
            tags[f"{k}={v}"] += n
    return {
        "online": sum(n for flag, n in online.items() if flag),  # True and 1 are one key: sum, never add both lookups
        "offline": sum(n for flag, n in online.items() if not flag),
        "by_version": sorted(((f"{n}@{v}" if n else "none"), c) for n, v, c in by_version),
        "by_profile": sorted(((p or "none"), c) for p, c in by_profile),
        "by_tag": sorted(tags.items()),
    }


def telemetry_series(db: Database, device_id: str, limit: int = 500) -> list[dict]:
    """The device's telemetry batches, oldest first: time, version, p50 and p95 latency, error and NaN rates."""
    t = db.t.telemetry
    with db.connect() as conn:
        rows = conn.execute(sa.select(t).where(t.c.device_id == device_id).order_by(t.c.ts_end.desc()).limit(limit)).all()
    out = []
    for m in reversed([r._mapping for r in rows]):
        n = m["inference_count"] or 0
        out.append(
            {
                "ts": m["ts_end"],
                "version": f"{m['version_name']}@{m['version_version']}" if m["version_name"] else "",
                "p95_ms": m["p95_ms"],
                "p50_ms": m["p50_ms"],
                "error_rate": (m["error_count"] / n) if n else None,
                "nan_rate": (m["nan_count"] / n) if n else None,
                "agreement": m["agreement"],
            }
        )
    return out
