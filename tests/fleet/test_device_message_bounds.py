"""Property: any device message either parses into values the database and the gates accept, or
is malformed; and a batch holding it stores every other message in it (issue 13).

Messages are generated from the schemas themselves (msgspec's type information), so a field
added to a device message is fuzzed without touching this test: every integer, float and string
is drawn around and beyond its bounds (and as any other JSON value), lists and maps around their
length bounds, and any field may be replaced by arbitrary nested JSON. Each example is one ingest
batch (the fuzzed message beside good messages of two other devices) on a real SQLite or
PostgreSQL database, followed by the rollout gates and /metrics over what was stored.
"""

from __future__ import annotations

import json
import math
import time

import msgspec.inspect as mi
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings, strategies as st

from edgeops.fleet import metrics
from edgeops.fleet.config import IngestConfig, RolloutConfig
from edgeops.fleet.ingest import KINDS, Ingestor
from edgeops.fleet.registry import register_devices
from edgeops.fleet.rollouts import gates as gates_mod, queries, service
from edgeops.fleet.rollouts.reconciler import Reconciler
from edgeops.fleet.rollouts.settings import parse_request
from edgeops.protocol import DEVICE_ID_PATTERN, FetchRequest, VersionRef, events_topic, parse_message, state_topic, telemetry_topic, whole
from tests.fleet.helpers import event, state, telemetry

DEVICE = "fz"
TOPICS = {"state": state_topic(DEVICE), "events": events_topic(DEVICE), "telemetry": telemetry_topic(DEVICE)}
EXAMPLES = 40  # per dialect; each example is a database transaction plus the gates and a scrape

_INT_EDGES = [-1, 0, 1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]
_FLOAT_EDGES = [0.0, -0.0, 1e-300, 0.5, 1.0, 1.0000001, 86_400_000.0, 86_400_001.0, 1e10, 1e10 + 1, 1.7976931348623157e308, -1.7976931348623157e308, -1.0]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def _int(t: mi.IntType) -> st.SearchStrategy:
    edges = [v for b in (t.ge, t.le, t.gt, t.lt) if b is not None for v in (b - 1, b, b + 1)]
    at_edges = st.sampled_from(_INT_EDGES + edges)
    return st.one_of(at_edges, at_edges, at_edges, st.integers(-(2**65), 2**65), st.integers(0, 1000))


def _float(t: mi.FloatType) -> st.SearchStrategy:
    edges = [v for b in (t.ge, t.le, t.gt, t.lt) if b is not None for v in (b, b * 1.0000001 + 1e-9)]
    return st.sampled_from(_FLOAT_EDGES + edges) | st.floats(allow_nan=False, allow_infinity=False) | st.floats(0, 1e4)


def _str(t: mi.StrType) -> st.SearchStrategy:
    if t.pattern == whole(DEVICE_ID_PATTERN):
        return st.sampled_from([DEVICE, DEVICE, "someone-else", "bad id", ""])
    limit = t.max_length if t.max_length is not None else 256
    lengths = st.sampled_from(sorted({0, 1, max(limit - 1, 0), limit, limit + 1}))
    filled = st.tuples(lengths, st.sampled_from(["a", "é", "\U0001f600", "\x00"])).map(lambda p: p[1] * p[0])
    return st.text(max_size=12) | st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | filled


def _list(t: mi.ListType) -> st.SearchStrategy:
    item = shaped(t.item_type)
    small = st.lists(item, max_size=3)
    if t.max_length is None:
        return small
    return small | item.map(lambda v: [v] * (t.max_length + 1))  # one item past the length bound


def _dict(t: mi.DictType) -> st.SearchStrategy:
    value = shaped(t.value_type)
    small = st.lists(st.tuples(shaped(t.key_type), value), max_size=3).map(dict)
    if t.max_length is None:
        return small
    return small | value.map(lambda v: {f"k{i}": v for i in range(t.max_length + 1)})


def shaped(t) -> st.SearchStrategy:
    """Values shaped like the type ``t`` (mostly around its bounds), any of which may be invalid."""
    if isinstance(t, mi.IntType):
        return _int(t)
    if isinstance(t, mi.FloatType):
        return _float(t)
    if isinstance(t, mi.StrType):
        return _str(t)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.UnionType):
        return st.one_of([shaped(x) for x in t.types])
    if isinstance(t, mi.EnumType):
        return st.sampled_from([m.value for m in t.cls]) | st.text(max_size=5)
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(list(t.values))
    if isinstance(t, mi.ListType):
        return _list(t)
    if isinstance(t, mi.DictType):
        return _dict(t)
    if isinstance(t, mi.StructType):
        return struct_bodies(t)
    return json_values


def field_value(t) -> st.SearchStrategy:
    around = shaped(t)
    return st.one_of(around, around, around, json_values)  # mostly around the bounds; any JSON, nested to any shape, too


def struct_bodies(t: mi.StructType) -> st.SearchStrategy:
    required = {f.encode_name: field_value(f.type) for f in t.fields if f.required}
    optional = {f.encode_name: field_value(f.type) for f in t.fields if not f.required}
    extra = st.dictionaries(st.sampled_from(["extra", "x"]), json_values, max_size=1)
    return st.tuples(st.fixed_dictionaries(required, optional=optional), extra | st.just({}) | st.just({})).map(lambda p: {**p[0], **p[1]})


_TEXT_PATTERN = mi.type_info(KINDS["state"]).fields[2].type.pattern  # the free-text rule (no NUL, no lone surrogates)


def _bounds(t, default_lo, default_hi, step):
    lo = t.ge if t.ge is not None else (t.gt + step if t.gt is not None else default_lo)
    hi = t.le if t.le is not None else (t.lt - step if t.lt is not None else default_hi)
    return lo, hi


def valid(t) -> st.SearchStrategy:
    """Values inside the type's bounds, its edges included (where the database is most likely to object)."""
    if isinstance(t, mi.IntType):
        lo, hi = _bounds(t, -(2**63), 2**63 - 1, 1)
        return st.sampled_from([lo, hi]) | st.integers(lo, hi)
    if isinstance(t, mi.FloatType):
        lo, hi = _bounds(t, -1.7976931348623157e308, 1.7976931348623157e308, 0.0)
        return st.sampled_from([lo, hi]) | st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    if isinstance(t, mi.StrType):
        if t.pattern == whole(DEVICE_ID_PATTERN):
            return st.just(DEVICE)
        if t.pattern is not None and t.pattern != _TEXT_PATTERN:
            return st.from_regex(t.pattern, fullmatch=True)
        n = t.max_length if t.max_length is not None else 64
        chars = st.characters(codec="utf-8", exclude_characters="\x00")
        return st.text(alphabet=chars, max_size=min(n, 16)) | st.sampled_from(["é" * n, "\U0001f600" * n, "a" * n])
    if isinstance(t, mi.UnionType):
        return st.one_of([valid(x) for x in t.types])
    if isinstance(t, mi.ListType):
        small = st.lists(valid(t.item_type), max_size=min(3, t.max_length or 3))
        return small if t.max_length is None else small | valid(t.item_type).map(lambda v: [v] * t.max_length)
    if isinstance(t, mi.DictType):
        small = st.lists(st.tuples(valid(t.key_type), valid(t.value_type)), max_size=3).map(dict)
        return small if t.max_length is None else small | valid(t.value_type).map(lambda v: {f"k{i}": v for i in range(t.max_length)})
    if isinstance(t, mi.StructType):
        body = st.fixed_dictionaries({f.encode_name: valid(f.type) for f in t.fields if f.required}, optional={f.encode_name: valid(f.type) for f in t.fields if not f.required})
        if t.cls is VersionRef:  # mostly the rollout's versions, so what is stored reaches the gates' sums
            return st.sampled_from([{"name": "digits", "version": v} for v in ("1.0.0", "2.0.0", "2.0.0")]) | body
        return body
    return shaped(t)  # bool, None, enum, literal: shaped() draws only valid values for these, plus junk text for enums


def fuzzed(t: mi.StructType) -> st.SearchStrategy:
    """A body inside the bounds with up to three fields replaced by anything (shaped around the bounds, or any JSON)."""
    fields = {f.encode_name: f.type for f in t.fields}

    def mutate(body: dict) -> st.SearchStrategy:
        names = st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True)
        return names.flatmap(lambda ns: st.fixed_dictionaries({n: field_value(fields[n]) for n in ns}).map(lambda repl: {**body, **repl}))

    mutated = valid(t).flatmap(mutate)
    return st.one_of(mutated, mutated, mutated, struct_bodies(t))


def messages() -> st.SearchStrategy:
    """(kind, JSON payload) of one fuzzed device message."""
    per_kind = [st.tuples(st.just(kind), fuzzed(mi.type_info(schema))) for kind, schema in KINDS.items()]
    return st.one_of(per_kind).map(lambda kb: (kb[0], _dumps(kb[1])))


def _telemetry_body(seq: int) -> dict:
    now = time.time()
    return {"device_id": DEVICE, "seq": seq, "ts_start": now - 10, "ts_end": now, "active": {"name": "digits", "version": "2.0.0"}, "inference_count": 10, "latency_p95_ms": 5.0}


def _dumps(body) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


@pytest.fixture
def fuzz_env(db, fleet_repo):
    """Devices fz (the fuzzed one), g1, g2 (good) in a running 100% rollout of digits@2.0.0 with every telemetry gate."""
    register_devices(db, [{"id": d, "tags": {"site": "x"}, "profile": "x86"} for d in (DEVICE, "g1", "g2")])
    rollout = service.create_rollout(
        db, parse_request({"bundle": "digits@2.0.0", "waves": "100%", "max_error_rate": 0.5, "max_latency_regression": 2.0, "min_agreement": 0.5}), fleet_repo["repo"]
    )
    service.start_rollout(db, rollout["id"])
    rec = Reconciler(db, RolloutConfig(), None, fleet_repo["repo"])
    rec.tick()
    ingest = Ingestor(db, IngestConfig())  # process() is called directly: one batch per example
    return {"db": db, "rollout_id": rollout["id"], "rec": rec, "ingest": ingest, "repo": fleet_repo["repo"]}


def _stored(db, table, device: str) -> int:
    with db.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(table).where(table.c.device_id == device)).scalar()


def test_any_device_message_is_stored_whole_or_malformed_and_never_costs_the_batch(fuzz_env):
    db, ing, rec = fuzz_env["db"], fuzz_env["ingest"], fuzz_env["rec"]
    seq = {"g1": 0, "g2": 0}
    seen = {"parsed": 0, "malformed": 0}  # the property means something only if examples land on both sides

    def good() -> list[tuple[str, bytes]]:
        out = []
        for d in ("g1", "g2"):
            seq[d] += 1
            out.append(telemetry(d, seq[d], "digits@2.0.0" if seq[d] % 2 else "digits@1.0.0", p95=4.0 + seq[d] % 3, agreement=1.0))
            out.append(event(d, seq[d], "agent_started"))
        out.append(state("g1", active="digits@2.0.0"))
        return out

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
    @given(msg=messages(), position=st.integers(0, 5))
    # the values issue 13 found, always tried first (random examples may not land on them)
    @example(msg=("telemetry", _dumps({**_telemetry_body(1), "seq": 2**63})), position=0)
    @example(msg=("telemetry", _dumps({**_telemetry_body(2), "inference_count": 2**62})), position=1)
    @example(msg=("telemetry", _dumps({**_telemetry_body(3), "inference_count": 2**62})), position=5)
    @example(msg=("state", _dumps({"device_id": DEVICE, "online": True, "active": {"name": "digits", "version": "9" * 65}})), position=2)
    @example(msg=("events", _dumps({"device_id": DEVICE, "seq": 1, "kind": "installed", "detail": "a\x00b"})), position=3)
    def one_batch(msg, position):
        kind, payload = msg
        others = good()
        items = [(t.split("/")[2], t.split("/")[3], p, time.time()) for t, p in others]
        items.insert(position, (DEVICE, kind, payload, time.time()))
        before = {t: sum(_stored(db, getattr(db.t, t), d) for d in ("g1", "g2")) for t in ("telemetry", "events")}
        snap = ing.stats.snapshot()
        parsed = parse_message(KINDS[kind], payload)
        parsed = parsed if parsed is not None and parsed.device_id == DEVICE else None
        seen["parsed" if parsed else "malformed"] += 1

        ing.process(items)  # the whole batch in one transaction: the database must accept it as is

        after = ing.stats.snapshot()
        assert after["malformed"].get(kind, 0) - snap["malformed"].get(kind, 0) == (0 if parsed else 1)
        assert after.get("db_rejected", {}) == {} and after["db_errors"] == 0
        for t in ("telemetry", "events"):  # every other message of the batch stored
            assert sum(_stored(db, getattr(db.t, t), d) for d in ("g1", "g2")) == before[t] + 2
        if parsed is not None and kind == "telemetry":
            with db.connect() as c:
                row = c.execute(sa.select(db.t.telemetry).where(db.t.telemetry.c.device_id == DEVICE, db.t.telemetry.c.seq == parsed.seq)).first()
            assert row is not None  # stored now or by an earlier example with the same seq

        # the gates and /metrics over whatever was stored
        rec._memo.clear()
        with db.connect() as conn:
            r = queries.load_rollout(db, conn, fuzz_env["rollout_id"])
            stats = rec.wave_stats(r, queries.load_wave(db, conn, r.id, 0))
        for d in stats.new_devices + stats.control_devices:  # per-device values the judge reads
            for value in (d.p95_ms, d.agreement, d.inferences, d.errors, d.nans):
                assert value is None or math.isfinite(value)
        gates_mod.evaluate(stats, r.settings)
        body = metrics.render(db, repo_dir=fuzz_env["repo"])[0].decode()
        assert "edgeops_telemetry_inferences{" in body

    one_batch()
    assert seen["parsed"] >= 10 and seen["malformed"] >= 10, seen


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(body=fuzzed(mi.type_info(FetchRequest)))
def test_any_fetch_request_parses_into_bounded_values_or_is_malformed(body):
    req = parse_message(FetchRequest, _dumps(body))
    if req is not None:
        assert 0 <= req.offset < 2**63 and 1 <= req.length <= 4 * 256 * 1024 and len(req.request_id) <= 128
