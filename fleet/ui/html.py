"""Small HTML building blocks for the console's server-rendered pages (plain Python, no template
engine: Jinja2 is not a dependency of the fleet extra). Every value that came from a device, a
token or a request goes through :func:`e` (HTML-escaped); markup is built only from literals.
No inline script or style: the pages run under a Content-Security-Policy of 'self' only.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from urllib.parse import urlencode

NAV = (("fleet", "Fleet", "/ui/fleet"), ("rollouts", "Rollouts", "/ui/rollouts"), ("bundles", "Bundles", "/ui/bundles"), ("audit", "Audit", "/ui/audit"))


def e(value) -> str:
    """HTML-escaped text of any value ('' for None)."""
    return "" if value is None else html.escape(str(value), quote=True)


def when(ts) -> str:
    """A unix time as UTC text ('-' for none)."""
    if not ts:
        return "-"
    return _dt.datetime.fromtimestamp(float(ts), _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def ago(ts, now: float) -> str:
    """'12 s ago' style age of a unix time."""
    if not ts:
        return "never"
    d = max(0, int(now - float(ts)))
    return f"{d} s ago" if d < 120 else f"{d // 60} min ago" if d < 7200 else f"{d // 3600} h ago"


def qs(**params) -> str:
    """A query string of the non-empty parameters (with its '?')."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return ("?" + urlencode(kept)) if kept else ""


def json_data(element_id: str, data, cls: str = "") -> str:
    """Data for console.js in a non-executed JSON script element (allowed by the CSP)."""
    text = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    return f'<script type="application/json" id="{e(element_id)}" class="{e(cls)}">{text}</script>'


def table(headers: list[str], rows: list[list[str]], cls: str = "", empty: str = "nothing yet") -> str:
    """A table of already-escaped cell HTML."""
    if not rows:
        return f'<p class="empty">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def badge(text: str, kind: str) -> str:
    """A coloured label (kind: ok, bad, warn, muted)."""
    return f'<span class="badge {e(kind)}">{e(text)}</span>'


def page(title: str, body: str, active: str = "", principal=None, csrf: str = "") -> str:
    """A whole page: head with the vendored libraries, navigation, signed-in user, body."""
    nav = "".join(f'<a href="{href}" class="{"active" if key == active else ""}">{label}</a>' for key, label, href in NAV) if principal else ""
    user = ""
    if principal is not None:
        user = (
            f'<span class="user" id="whoami" data-role="{e(principal.role)}">{e(principal.name)} ({e(principal.role)})</span>'
            f'<form method="post" action="/ui/logout" class="inline"><input type="hidden" name="csrf" value="{e(csrf)}"><button type="submit">Sign out</button></form>'
        )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · edgeops console</title>"
        f'<meta name="csrf-token" content="{e(csrf)}">'
        # htmx would otherwise add a <style> element, which the CSP refuses
        '<meta name="htmx-config" content=\'{"includeIndicatorStyles":false}\'>'
        '<link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/ui/static/vendor/uPlot.min.css"><link rel="stylesheet" href="/ui/static/console.css">'
        '<script src="/ui/static/vendor/htmx.min.js"></script><script src="/ui/static/vendor/uPlot.iife.min.js"></script>'
        '<script src="/ui/static/console.js" defer></script>'
        f'</head><body><header><strong class="brand">edgeops</strong><nav>{nav}</nav>{user}</header>'
        f"<main><h1>{e(title)}</h1>{body}</main></body></html>"
    )
