"""The console's pages and live fragments, rendered from the same dicts the REST API returns.

A fragment (``*_live``) is what htmx polls: it is rendered alone, and whole pages embed it once
so the first screen needs no extra request.
"""

from __future__ import annotations

import json
import time

from edgeops.fleet.rollouts.status import ACTION_FROM
from edgeops.fleet.ui.gate_history import outcome
from edgeops.fleet.ui.html import ago, badge, e, json_data, qs, table, when

POLL = "every 2s"
FORM_FIELDS = (
    ("bundle", "Bundle", "NAME@VERSION, published", "digits@2.0.0"),
    ("select", "Devices", "profile=NAME, tag=KEY=VALUE, device=ID+ID, all; comma = and", "all"),
    ("waves", "Waves", "cumulative percentages", "1%,10%,50%,100%"),
    ("bake", "Bake", "time each wave runs before it can pass (90s, 10m)", "0"),
    ("max_failure_rate", "Max failure rate", "0..1", "0.05"),
    ("max_rollback_rate", "Max rollback rate", "0..1, optional", ""),
    ("max_error_rate", "Max error rate", "(errors + NaN) / inferences, optional", ""),
    ("max_latency_regression", "Max latency regression", "largest typical per-device p95 ratio vs the control cohort, judged (1.2: 20% slower), optional", ""),
    ("min_agreement", "Min agreement", "0..1, optional", ""),
    ("min_reporting", "Min reporting", "0..1", "0.9"),
    # the judged gates and the judge (issue 18): blank takes the default
    ("max_latency_p50_regression", "Max latency p50 regression", "typical per-device p50 ratio vs the control, judged, optional", ""),
    ("max_confidence_drop", "Max confidence drop", "mean top-1 confidence drop vs the control, 0..1, optional", ""),
    ("max_class_mix_shift", "Max class mix shift", "output class mix distance vs the control, 0..1, optional", ""),
    ("max_drift", "Max drift", "PSI, or warn / alert (the console's [drift] thresholds), optional", ""),
    ("strata_tag", "Strata tag", "a tag key that splits strata further than the profile (e.g. site), optional", ""),
    ("control_share", "Control share", "share of the selection held back as the control, 0..1 (default 0.1)", ""),
    ("judge_alpha", "Judge alpha", "false-alarm rate over all looks (default 0.05)", ""),
    ("judge_max_looks", "Judge looks", "looks per judged gate (default 5)", ""),
    ("judge_min_devices", "Judge min devices", "devices per cohort and stratum to judge (default 5)", ""),
    ("inconclusive_timeout", "Inconclusive timeout", "pause when a gate cannot decide this long (30m)", ""),
    ("watch", "Watch", "keep judging after the last wave (30m), optional", ""),
    ("channel", "Channel", "release channel (dev, staging, prod), optional", ""),
    ("requires_channel", "Requires channel", "earlier channel the version must have finished in, optional", ""),
)


def _status_badge(status: str) -> str:
    kind = {"running": "ok", "finished": "ok", "passed": "ok", "succeeded": "ok", "committed": "ok", "paused": "warn", "halted": "bad", "failed": "bad", "aborted": "bad", "aborting": "bad", "rolled_back": "bad"}.get(status, "muted")
    return badge(status, kind)


def _num(v) -> str:
    """A gate figure to 4 significant digits ('-' for none)."""
    return "-" if v is None else f"{v:.4g}" if isinstance(v, (int, float)) else str(v)


def _gate_text(g: dict) -> str:
    o = outcome(g)
    value = f"{_num(g.get('measured'))} vs {_num(g.get('threshold'))}" if g.get("measured") is not None or g.get("threshold") is not None else ""
    return f'<span class="gate gate-{e(o)}" data-gate="{e(g.get("gate"))}">{e(g.get("gate"))} {e(value)} {e(o)}</span>'


# --- fleet ----------------------------------------------------------------------------------------
FILTERS = ("q", "online", "version", "profile", "tag")  # the fleet page's query parameters (ui/queries.device_page)


def fleet_body(summary: dict, devices: dict, f: dict[str, str]) -> str:
    """Fleet page: counts by state/version/profile/tag (each a filter link), search form, the paged device table."""

    def counts(title: str, key: str, pairs) -> str:
        items = "".join(f'<li><a href="/ui/fleet{qs(**{key: k})}" data-filter="{e(key)}">{e(k)}</a><b>{n}</b></li>' for k, n in pairs) or "<li>none</li>"
        return f'<section class="card"><h2>{e(title)}</h2><ul class="counts">{items}</ul></section>'

    cards = (
        '<div class="cards" id="fleet-summary">'
        + counts("Devices", "online", [("true", summary["online"]), ("false", summary["offline"])]).replace(">true</a>", ">online</a>").replace(">false</a>", ">offline</a>")
        + counts("By version", "version", summary["by_version"][:20])
        + counts("By profile", "profile", summary["by_profile"][:20])
        + counts("By tag", "tag", summary["by_tag"][:20])
        + "</div>"
    )
    active = [(k, f[k]) for k in ("version", "profile", "tag") if f.get(k)]
    chips = ""
    if active:
        chips = '<p class="filters" id="filters">Only ' + ", ".join(f"{e(k)} <b>{e(v)}</b>" for k, v in active) + f' · <a href="/ui/fleet{qs(q=f.get("q"), online=f.get("online"))}">all devices</a></p>'
    opts = "".join(f'<option value="{v}"{" selected" if f.get("online") == v else ""}>{label}</option>' for v, label in (("", "all"), ("true", "online"), ("false", "offline")))
    hidden = "".join(f'<input type="hidden" name="{k}" value="{e(v)}">' for k, v in active)  # a search keeps the filters
    search = (
        '<form id="device-search" class="search" method="get" action="/ui/fleet" hx-get="/ui/fleet/table" hx-target="#device-table" hx-trigger="input changed delay:300ms from:#q, change, submit" hx-push-url="false">'
        f'{hidden}<input id="q" name="q" type="search" placeholder="search id, tag, profile, version, state" value="{e(f.get("q"))}"><select name="online">{opts}</select><button type="submit">Search</button></form>'
    )
    return cards + chips + search + f'<div id="device-table">{device_table(devices, f)}</div>'


def device_table(devices: dict, f: dict[str, str]) -> str:
    """The device table fragment with its pager; it polls its own query (a search or page swaps in a fragment polling the new one)."""
    now = time.time()
    rows = [
        [
            f'<a href="/ui/devices/{e(d["id"])}">{e(d["id"])}</a>',
            badge("online", "ok") if d["online"] else badge("offline", "muted"),
            e(d["state"]),
            e(f"{d['active']['name']}@{d['active']['version']}" if d["active"] else "-"),
            e(d["profile"] or "-"),
            e(", ".join(f"{k}={v}" for k, v in d["tags"].items())),
            e(ago(d["last_seen"], now)),
        ]
        for d in devices["rows"]
    ]
    p, pages = devices["page"], devices["pages"]

    def at(page: int) -> str:
        return qs(**{k: f.get(k) for k in FILTERS}, page=page)

    pager = f'<div class="pager" id="pager">{devices["total"]} devices · page {p} of {pages} '
    if p > 1:
        pager += f'<a hx-get="/ui/fleet/table{at(p - 1)}" hx-target="#device-table" href="/ui/fleet{at(p - 1)}">previous</a> '
    if p < pages:
        pager += f'<a hx-get="/ui/fleet/table{at(p + 1)}" hx-target="#device-table" href="/ui/fleet{at(p + 1)}" id="next-page">next</a>'
    pager += "</div>"
    live = f'<div id="device-table-live" hx-get="/ui/fleet/table{at(p)}" hx-trigger="{POLL}" hx-swap="outerHTML">'
    return live + table(["Device", "", "State", "Active", "Profile", "Tags", "Last seen"], rows, "devices", "no devices match") + pager + "</div>"


# --- device ---------------------------------------------------------------------------------------
def device_body(d: dict, bundles: list[str], can_act: bool, live: str) -> str:
    """Device page: state, versions, self-test form, the live part (events, latency chart)."""

    def ref(r) -> str:
        return f"{r['name']}@{r['version']}" if r else "-"

    facts = [("State", e(d["state"])), ("Online", "yes" if d["online"] else "no"), ("Health", e(d["health"])), ("Active", e(ref(d["active"]))), ("Previous", e(ref(d["previous"]))), ("Pending", e(ref(d["pending"]))), ("Profile", e(d["profile"] or "-")), ("Tags", e(", ".join(f"{k}={v}" for k, v in d["tags"].items()) or "-")), ("Last seen", e(when(d["last_seen"]))), ("Agent", e(d["agent_version"] or "-"))]
    dl = '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"
    self_test = ""
    if can_act:
        opts = "".join(f'<option value="{e(b)}">{e(b)}</option>' for b in bundles)
        self_test = (
            f'<form class="api-action" id="self-test" data-method="POST" data-url="/api/v1/devices/{e(d["id"])}/self-test" data-confirm="Run a self-test of the chosen bundle on {e(d["id"])}?">'
            f'<select name="bundle">{opts}</select> <button type="submit">Self-test</button> <span class="result"></span></form>'
        )
    return dl + self_test + f'<div id="device-live" hx-get="/ui/devices/{e(d["id"])}/live" hx-trigger="{POLL}">' + live + "</div>"


def drift_section(report: dict | None) -> str:
    """The device's drift scores per version it ran (fleet/drift.py), where it sent sketches."""
    if report is None:
        return ""
    rows = [
        [e(f"{g['bundle']}@{g['version']}"), badge(g["level"], {"ok": "ok", "warn": "warn", "alert": "bad"}.get(g["level"], "muted")), e(_num(g.get("psi"))), e(_num(g.get("ks"))), e(_num(g.get("p_value"))), str(g.get("samples") or 0)]
        for g in report.get("groups", [])
    ]
    window = report.get("window_s") or 0
    return f"<h2>Drift (last {window / 3600:.3g} h)</h2>" + table(["Version", "Level", "PSI", "KS", "p", "Samples"], rows, "drift", "no drift sketches from this device in the window")


def device_live(events: list[dict], series: list[dict], drift: dict | None = None) -> str:
    """Events (rollbacks with their gates), the latency/error chart data, drift scores."""
    rows = []
    for ev in events:
        gates = " ".join(_gate_text(g) for g in ev["gates"])
        kind = ev["kind"]
        rows.append([e(when(ev["received_at"])), f'<span class="event event-{e(kind)}">{e(kind)}</span>', e(f"{ev['target']['name']}@{ev['target']['version']}" if ev["target"] else ""), gates, e(ev["detail"])])
    chart = {
        "title": "p50 and p95 latency (ms) and error + NaN rate",
        "ts": [s["ts"] for s in series],
        "series": [
            {"label": "p95 ms", "values": [s["p95_ms"] for s in series]},
            {"label": "p50 ms", "values": [s.get("p50_ms") for s in series], "dash": True},
            {"label": "error+NaN rate", "values": [None if s["error_rate"] is None else s["error_rate"] + (s["nan_rate"] or 0) for s in series], "scale": "rate"},
        ],
    }
    return '<h2>Latency (p50, p95) and error + NaN rate over time</h2><div class="chart" data-chart="device-latency"></div>' + json_data("device-latency", chart, "chart-data") + drift_section(drift) + "<h2>Events</h2>" + table(["Received", "Event", "Version", "Gates", "Detail"], rows, "events", "no events yet")


# --- rollouts -------------------------------------------------------------------------------------
def rollouts_body(rows: list[dict], form: str) -> str:
    """Rollouts list (live) and the create form."""
    return f'<div id="rollout-list" hx-get="/ui/rollouts/list" hx-trigger="{POLL}">{rollout_list(rows)}</div><h2>New rollout</h2>{form}'


def rollout_list(rows: list[dict]) -> str:
    """The rollouts table fragment."""
    return table(
        ["Rollout", "Bundle", "Status", "Wave", "Devices", "Succeeded", "Failed", "Created"],
        [[f'<a href="/ui/rollouts/{e(r["id"])}">{e(r["id"])}</a>', e(r["bundle"]), _status_badge(r["status"]), e(f"{r['current_wave'] + 1}/{r['waves']}" if r["current_wave"] >= 0 else f"-/{r['waves']}"), str(r["devices"]), str(r["succeeded"]), str(r["failed"]), e(when(r["created_at"]))] for r in rows],
        "rollouts",
        "no rollouts yet",
    )


def create_form(values: dict, errors: dict[str, str], csrf: str, bundles: list[str], can_act: bool) -> str:
    """The create-rollout form with per-field errors (the same checks as the CLI: parse_request)."""
    if not can_act:
        return '<p class="empty">Creating rollouts needs the operator role.</p>'
    out = ['<form method="post" action="/ui/rollouts/new" id="create-rollout" class="grid">', f'<input type="hidden" name="csrf" value="{e(csrf)}">']
    if errors.get("_form"):
        out.append(f'<p class="error" id="error-form">{e(errors["_form"])}</p>')
    for name, label, hint, default in FORM_FIELDS:
        value = values.get(name, default)
        extra = ' list="bundles"' if name == "bundle" else ""
        err = f'<span class="error field-error" id="error-{name}">{e(errors[name])}</span>' if name in errors else ""
        out.append(f'<label for="f-{name}">{e(label)}</label><div><input id="f-{name}" name="{name}" value="{e(value)}"{extra} class="{"invalid" if err else ""}"><small>{e(hint)}</small>{err}</div>')
    out.append('<datalist id="bundles">' + "".join(f'<option value="{e(b)}">' for b in bundles) + "</datalist>")
    gate = values.get("on_gate_failure", "pause")
    out.append('<label for="f-on_gate_failure">On gate failure</label><div><select id="f-on_gate_failure" name="on_gate_failure">' + "".join(f'<option{" selected" if gate == v else ""}>{v}</option>' for v in ("pause", "abort")) + "</select></div>")
    checked = " checked" if values.get("approve_each_wave") else ""
    start = " checked" if values.get("start") else ""
    out.append(f'<label for="f-approve">Approve each wave</label><div><input type="checkbox" id="f-approve" name="approve_each_wave" value="1"{checked}></div>')
    out.append(f'<label for="f-start">Start now</label><div><input type="checkbox" id="f-start" name="start" value="1"{start}></div>')
    out.append('<div></div><div><button type="submit" id="create-submit">Create rollout</button></div></form>')
    return "".join(out)


def _selector_text(sel: dict) -> str:
    """A rollout's device selector as people write it (the CLI's --select)."""
    parts = [f"profile={sel['profile']}"] if sel.get("profile") else []
    parts += [f"tag={k}={v}" for k, v in (sel.get("tags") or {}).items()]
    if sel.get("devices"):
        parts.append("device=" + "+".join(sel["devices"]))
    return ", ".join(parts) or "all"


def rollout_body(r: dict, live: str) -> str:
    """One rollout: header facts; the live part is embedded by the route."""
    s = r["settings"]
    facts = [("Bundle", e(r["bundle"])), ("Devices", e(_selector_text(s.get("selector") or {}))), ("Waves", e(", ".join(f"{w:g}%" for w in s.get("waves", [])))), ("On gate failure", e(s.get("on_gate_failure"))), ("Created", e(when(r["created_at"])))]
    # each profile's target, and the selected devices left out for want of one (with the reason)
    facts += [(f"Target {'(any profile)' if p == '*' else 'for ' + e(p)}", e(t["name"])) for p, t in sorted((r.get("targets") or {}).items())]
    facts += [(f"Excluded ({e(p)})", e(f"{x['devices']} devices: {x['reason']}")) for p, x in sorted(((r.get("excluded") or {}).get("by_profile") or {}).items())]
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>" + f'<div id="rollout-live" hx-get="/ui/rollouts/{e(r["id"])}/live" hx-trigger="{POLL}">' + live + "</div>"


def rollout_live(r: dict, gate_series: dict[str, dict], can_act: bool) -> str:
    """Status, action buttons allowed now, waves with counts, gates vs thresholds with charts, decisions."""
    status = r["status"]
    head = f'<p class="status">Status {_status_badge(status)} <span id="rollout-status" data-status="{e(status)}">{e(r["reason"])}</span></p>'
    buttons = ""
    if can_act:
        allowed = [a for a, sources in ACTION_FROM.items() if status in {x.value for x in sources}]
        buttons = '<div class="actions" id="actions">' + "".join(
            f'<button type="button" class="api-action action-{a}" data-action="{a}" data-method="POST" data-url="/api/v1/rollouts/{e(r["id"])}/{a}" data-confirm="{e(a.capitalize())} rollout {e(r["id"])}?">{e(a.capitalize())}</button>'
            for a in allowed
        ) + "</div>"
    wave_rows = []
    for w in r["waves"]:
        counts = ", ".join(f"{k} {v}" for k, v in w["by_status"].items()) or "-"
        gates = " ".join(_gate_text(g) for g in w["gates"]) or "-"
        span = f"{when(w['started_at'])[11:]} – {when(w['finished_at'])[11:] if w.get('finished_at') else '…'}" if w.get("started_at") else "-"
        wave_rows.append([str(w["number"]), e(f"{w['percent']:g}%"), _status_badge(w["status"]), str(w["devices"]), e(counts), gates, e(w["reason"]), e(span)])
    waves = table(["Wave", "Up to", "Status", "Devices", "By status", "Gates (value vs threshold)", "Reason", "Ran (UTC)"], wave_rows, "waves")
    charts = ""
    for i, (key, series) in enumerate(gate_series.items()):
        o = series.get("outcome", "inconclusive")
        charts += f'<div class="gate-chart gate-chart-{e(o)}"><h3>{e(key)} {badge(o, {"pass": "ok", "fail": "bad"}.get(o, "warn"))}</h3><div class="chart" data-chart="gate-{i}"></div>{json_data(f"gate-{i}", {"title": key, "ts": series["ts"], "series": [{"label": "value", "values": series["measured"]}, {"label": "threshold", "values": series["threshold"], "dash": True}]}, "chart-data")}</div>'
    history = table(["When", "Decision", "Detail"], [[e(when(h["ts"])), e(h["action"]), e(h["detail"])] for h in reversed(r.get("history", []))], "history")
    return head + buttons + "<h2>Waves</h2>" + waves + "<h2>Gates over time</h2>" + (charts or '<p class="empty">no gate values yet</p>') + "<h2>Decision history</h2>" + history


# --- bundles and audit ----------------------------------------------------------------------------
def bundles_body(bundles: list[dict]) -> str:
    """Published bundles: target facts, manifest, build report and provenance where the bundle carries them."""
    if not bundles:
        return '<p class="empty">no bundles published (edgeops publish)</p>'
    out = []
    for b in bundles:
        m, r = b.get("manifest") or {}, b.get("build_report") or {}
        facts = [("Target", e(b["target"])), ("Size", f"{b['length']} bytes"), ("sha256", f"<code>{e(b['sha256'])}</code>")]
        facts += [(label, e(v)) for label, v in (("Profile", m.get("profile")), ("Runtime", m.get("runtime")), ("Release", m.get("release")), ("Quantization", m.get("quantization")), ("Latency budget p95", f"{(m.get('budgets') or {}).get('latency_p95_ms')} ms" if (m.get("budgets") or {}).get("latency_p95_ms") is not None else None), ("Build", r.get("status")), ("Model size", f"{(r.get('size') or {}).get('built_bytes')} bytes (original {(r.get('size') or {}).get('original_bytes')})" if r.get("size") else None)) if v is not None]
        parts = [f'<section class="card bundle" id="bundle-{e(b["ref"])}"><h2>{e(b["ref"])}</h2><dl class="facts">' + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"]
        gates = [g for g in (r.get("gates") or []) if isinstance(g, dict)]
        if gates:
            parts.append(table(["Build gate", "Value", "Limit", ""], [[e(g.get("gate")), e(f"{_num(g.get('value'))} {g.get('unit') or ''}"), e(_num(g.get("limit"))), badge("pass", "ok") if g.get("passed") else badge("fail", "bad")] for g in gates], "build-gates"))
        for title in ("manifest", "build_report", "provenance"):
            if b.get(title) is not None:
                parts.append(f"<details><summary>{e(title.replace('_', ' '))}</summary><pre>{e(json.dumps(b[title], indent=2, sort_keys=True))}</pre></details>")
        if b.get("error"):
            parts.append(f'<p class="error">{e(b["error"])}</p>')
        out.append("".join(parts) + "</section>")
    return "".join(out)


def audit_body(entries: list[dict], page: int, more: bool) -> str:
    """Who did what when."""
    rows = [[e(when(x["ts"])), e(x["who"]), e(x["what"]), e(x["detail"]), e(x["request_id"] or "")] for x in entries]
    pager = '<div class="pager">' + (f'<a href="/ui/audit?page={page - 1}">newer</a> ' if page > 1 else "") + (f'<a href="/ui/audit?page={page + 1}">older</a>' if more else "") + "</div>"
    return f'<div id="audit-live" hx-get="/ui/audit/live?page={page}" hx-trigger="every 5s">' + table(["When", "Who", "What", "Detail", "Request"], rows, "audit", "nothing recorded yet") + pager + "</div>"


def login_body(error: str, csrf: str) -> str:
    """The sign-in form (a token from fleet.toml)."""
    err = f'<p class="error" id="login-error">{e(error)}</p>' if error else ""
    return f'{err}<form method="post" action="/ui/login" id="login" class="grid"><input type="hidden" name="csrf" value="{e(csrf)}"><label for="token">API token</label><input id="token" name="token" type="password" autocomplete="current-password" autofocus><div></div><button type="submit">Sign in</button></form>'
