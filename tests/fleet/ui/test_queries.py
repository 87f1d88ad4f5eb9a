"""The fleet page's server-side search, paging and summaries, on SQLite and PostgreSQL."""

from __future__ import annotations

from edgeops.fleet.registry import register_devices
from edgeops.fleet.ui import queries


def _fleet(db):
    register_devices(db, [{"id": f"cam-{i:03d}", "tags": {"site": f"s{i % 3}"}, "profile": ("x86", "arm64")[i % 2]} for i in range(120)])
    register_devices(db, [{"id": "odd_one", "tags": {"site": "100%"}}])
    with db.begin() as conn:
        t = db.t.devices
        conn.execute(t.update().where(t.c.id.in_(["cam-001", "cam-002"])).values(online=True, active_name="digits", active_version="2.0.0"))


def test_search_and_paging(db):
    _fleet(db)
    first = queries.device_page(db)
    assert first["total"] == 121 and first["pages"] == 3 and len(first["rows"]) == 50 and first["rows"][0]["id"] == "cam-000"
    last = queries.device_page(db, page=99)  # past the end: the last page
    assert last["page"] == 3 and len(last["rows"]) == 21
    assert [d["id"] for d in queries.device_page(db, q="CAM-00")["rows"]][:3] == ["cam-000", "cam-001", "cam-002"]
    assert queries.device_page(db, q="s2")["total"] == 40  # a tag value
    assert [d["id"] for d in queries.device_page(db, q="digits@2.0")["rows"]] == ["cam-001", "cam-002"]  # the active version
    assert [d["id"] for d in queries.device_page(db, online=True)["rows"]] == ["cam-001", "cam-002"]
    assert queries.device_page(db, q="arm64", online=False)["total"] == 59
    # LIKE's wildcards in a search are literal characters
    assert [d["id"] for d in queries.device_page(db, q="%")["rows"]] == ["odd_one"]  # its tag holds the only %
    assert [d["id"] for d in queries.device_page(db, q="d_o")["rows"]] == ["odd_one"]
    assert queries.device_page(db, q="m_0")["total"] == 0  # _ is not "any character" (as a wildcard it would match cam-0..)


def test_filters_match_the_summary_counts(db):
    _fleet(db)
    s = queries.fleet_summary(db)
    for key, pairs in (("version", s["by_version"]), ("profile", s["by_profile"]), ("tag", s["by_tag"])):
        for value, n in pairs:
            assert queries.device_page(db, **{key: value})["total"] == n, (key, value)
    assert queries.device_page(db, tag="site=s")["total"] == 0  # whole values, not prefixes
    assert queries.device_page(db, tag="site=s1", profile="x86", q="cam-0")["total"] == 16  # i % 6 == 4, i < 100


def test_summary(db):
    _fleet(db)
    s = queries.fleet_summary(db)
    assert (s["online"], s["offline"]) == (2, 119)
    assert dict(s["by_version"]) == {"digits@2.0.0": 2, "none": 119}
    assert dict(s["by_profile"]) == {"arm64": 60, "x86": 60, "none": 1}
    assert dict(s["by_tag"]) == {"site=s0": 40, "site=s1": 40, "site=s2": 40, "site=100%": 1}
