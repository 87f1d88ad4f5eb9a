"""The browser console's routes on the API's own aiohttp app (``/ui/``).

Sign-in: ``/ui/login`` takes an API token and opens a session (fleet/access.py); the pages then
read the database through the same functions the REST API uses, and every action a page offers
calls the REST API itself with the session cookie and the page's CSRF token, so roles and checks
are the API's. The create-rollout form posts here (plain HTML form, CSRF field) and is checked by
the CLI's own ``parse_request``.

Live parts are htmx polls of fragments every 2 s, answered with an ETag: an unchanged fragment
is a 304 without a body (docs/console.md says why polling and not server-sent events).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import secrets
from pathlib import Path

from edgeops.fleet import access, action_log, registry
from edgeops.fleet.api_input import valid_device_id, valid_text
from edgeops.fleet.rollouts import service
from edgeops.fleet.rollouts.settings import RolloutSettingsError, parse_request
from edgeops.fleet.targets import UnknownBundleError
from edgeops.fleet.ui import bundles as bundles_mod
from edgeops.fleet.ui import gate_history, pages, queries
from edgeops.fleet.ui.html import e, page

STATIC = Path(__file__).resolve().parent / "static"
LOGIN_CSRF_COOKIE = "edgeops_login_csrf"
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
_FIELD_RE = re.compile(r"^(?:rollout settings refused: )?(?:body\.)?([a-z_]+)\b")
FORM_NAMES = {name for name, *_ in pages.FORM_FIELDS} | {"on_gate_failure"}


def field_of(message: str) -> str:
    """The form field a settings error names ('_form' when none): 'waves: ...' -> 'waves'."""
    m = _FIELD_RE.match(message)
    name = m.group(1) if m else ""
    if name == "selector":
        name = "select"
    if name == "bake_s":
        name = "bake"
    return name if name in FORM_NAMES else "_form"


def form_to_request(form) -> dict:
    """The create form as the CLI's request body (empty optional fields left out, numbers as numbers)."""
    body: dict = {}
    for name, *_ in pages.FORM_FIELDS:
        value = (form.get(name) or "").strip()
        if value == "":
            continue
        if name == "max_drift" and value in ("warn", "alert"):
            body[name] = value
        elif name.startswith(("max_", "min_")):
            try:
                body[name] = float(value)
            except ValueError:
                raise RolloutSettingsError(f"{name}: {value!r} is not a number") from None
        else:
            body[name] = value
    body["on_gate_failure"] = form.get("on_gate_failure") or "pause"
    body["approve_each_wave"] = bool(form.get("approve_each_wave"))
    return body


def add_ui_routes(app, console, tokens: access.TokenTable, sessions: access.SessionStore, caller) -> None:
    """Add /ui/ to the API's app; ``caller(request)`` gives (principal, session) as the API's guard found them."""
    from aiohttp import web

    db = console.db
    sampler = gate_history.GateSampler(console)
    app.on_startup.append(sampler.start)
    app.on_cleanup.append(sampler.stop)

    async def run(fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))

    def html_response(body: str, status: int = 200, headers=None) -> web.Response:
        h = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin", "Cache-Control": "no-cache, private", "X-Content-Type-Options": "nosniff"}
        h.update(headers or {})
        return web.Response(text=body, status=status, content_type="text/html", headers=h)

    def fragment(request, body: str) -> web.Response:
        """A polled fragment with an ETag; 304 when the client has this version already."""
        tag = '"' + hashlib.sha256(body.encode()).hexdigest()[:32] + '"'
        if tag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
            return web.Response(status=304, headers={"ETag": tag, "Cache-Control": "no-cache, private"})
        return html_response(body, headers={"ETag": tag})

    def signed_in(request):
        """(principal, session) of a cookie session; raises a redirect to the sign-in page otherwise."""
        principal, session = caller(request)
        if session is None:
            if request.headers.get("HX-Request"):
                raise web.HTTPUnauthorized(text="signed out", headers={"HX-Redirect": "/ui/login"})
            raise web.HTTPFound("/ui/login")
        return principal, session

    def whole(request, title: str, body: str, active: str, status: int = 200) -> web.Response:
        principal, session = caller(request)
        return html_response(page(title, body, active, principal, session.csrf if session else ""), status)

    def can_act(principal) -> bool:
        return access.allows(principal.role, "operator")

    # --- sign-in ------------------------------------------------------------------------------
    async def login_form(request, error: str = "", status: int = 200):
        token = secrets.token_urlsafe(24)  # login CSRF: double-submit, this cookie and the form field
        resp = html_response(page("Sign in", pages.login_body(error, token)), status)
        resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="Strict", path="/ui/login", secure=request.secure)
        return resp

    async def login(request):
        form = await request.post()
        given, expected = form.get("csrf", ""), request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not expected or not secrets.compare_digest(str(given), expected):
            return await login_form(request, "the sign-in form expired; try again", 403)
        principal = tokens.lookup(str(form.get("token", "")).strip())
        if principal is None:
            return await login_form(request, "unknown token (see [[api.access]] or api.tokens in fleet.toml)", 401)
        sid, _ = sessions.create(principal)
        resp = web.HTTPFound("/ui/fleet")
        resp.set_cookie(access.SESSION_COOKIE, sid, httponly=True, samesite="Strict", path="/", secure=request.secure, max_age=int(sessions.ttl_s))
        resp.del_cookie(LOGIN_CSRF_COOKIE, path="/ui/login")
        raise resp

    async def logout(request):
        principal, session = signed_in(request)
        form = await request.post()
        if not access.csrf_ok(session, str(form.get("csrf", ""))):
            return html_response(page("Sign out", '<p class="error">missing or wrong CSRF token</p>'), 403)
        sessions.drop(request.cookies.get(access.SESSION_COOKIE))
        resp = web.HTTPFound("/ui/login")
        resp.del_cookie(access.SESSION_COOKIE, path="/")
        raise resp

    async def index(request):
        raise web.HTTPFound("/ui/fleet")

    # --- fleet --------------------------------------------------------------------------------
    def _fleet_args(request) -> tuple[dict[str, str], int]:
        """The fleet page's filters (unprintable or overlong values are dropped) and page number."""
        f = {k: request.query.get(k, "")[:200] for k in pages.FILTERS}
        f = {k: (v if valid_text(v) else "") for k, v in f.items()}
        f["online"] = f["online"] if f["online"] in ("true", "false") else ""
        try:
            pg = max(1, min(int(request.query.get("page", "1")), 10**6))
        except ValueError:
            pg = 1
        return f, pg

    def _devices(f: dict[str, str], pg: int) -> dict:
        return queries.device_page(db, f["q"], {"true": True, "false": False}.get(f["online"]), pg, version=f["version"] or None, profile=f["profile"] or None, tag=f["tag"] or None)

    async def fleet_page(request):
        signed_in(request)
        f, pg = _fleet_args(request)
        summary = await run(queries.fleet_summary, db)
        devices = await run(_devices, f, pg)
        return whole(request, "Fleet", pages.fleet_body(summary, devices, f), "fleet")

    async def fleet_table(request):
        signed_in(request)
        f, pg = _fleet_args(request)
        return fragment(request, pages.device_table(await run(_devices, f, pg), f))

    # --- device -------------------------------------------------------------------------------
    def _device_id(request) -> str:
        device_id = request.match_info["id"]
        if not valid_device_id(device_id):
            raise registry.UnknownDeviceError(f"device {device_id[:70]!r}: not a valid device id")
        return device_id

    def _drift(device_id: str) -> dict | None:
        """The device's drift per version (None where the console has no drift scoring)."""
        try:
            from edgeops.fleet import drift
        except ImportError:  # pragma: no cover (a console without the drift module)
            return None
        settings = getattr(console.config, "drift", None)
        if settings is None:
            return None
        return drift.drift_report(db, drift.reference_store(console.repo_dir), settings, "device", device=device_id)

    async def _device_live(device_id: str) -> str:
        events = await run(registry.list_events, db, device_id=device_id, limit=100)
        series = await run(queries.telemetry_series, db, device_id)
        return pages.device_live(events, series, await run(_drift, device_id))

    async def device_page(request):
        principal, _ = signed_in(request)
        device_id = _device_id(request)
        try:
            d = await run(registry.get_device, db, device_id)
        except registry.UnknownDeviceError as err:
            return whole(request, "Device", f'<p class="error">{e(err)}</p>', "fleet", 404)
        refs = await run(bundles_mod.bundle_refs, console.repo_dir)
        return whole(request, f"Device {device_id}", pages.device_body(d, refs, can_act(principal), await _device_live(device_id)), "fleet")

    async def device_live(request):
        signed_in(request)
        return fragment(request, await _device_live(_device_id(request)))

    # --- rollouts -----------------------------------------------------------------------------
    async def rollouts_page(request, values=None, errors=None, status=200):
        principal, session = signed_in(request)
        rows = await run(service.list_rollouts, db)
        refs = await run(bundles_mod.bundle_refs, console.repo_dir)
        form = pages.create_form(values or {}, errors or {}, session.csrf, refs, can_act(principal))
        return whole(request, "Rollouts", pages.rollouts_body(rows, form), "rollouts", status)

    async def rollouts_list(request):
        signed_in(request)
        return fragment(request, pages.rollout_list(await run(service.list_rollouts, db)))

    async def create(request):
        principal, session = signed_in(request)
        form = await request.post()
        values = {k: str(v) for k, v in form.items() if k != "csrf"}
        if not access.csrf_ok(session, str(form.get("csrf", ""))):
            return await rollouts_page(request, values, {"_form": "missing or wrong CSRF token; reload the page"}, 403)
        path = "/ui/rollouts/new"
        if not access.allows(principal.role, "operator"):
            await run(action_log.record, db, principal.name, principal.role, "POST", path, 403, "-", "create rollout refused: needs operator")
            return await rollouts_page(request, values, {"_form": f"creating a rollout needs the operator role; {principal.name!r} has {principal.role}"}, 403)
        try:
            settings = parse_request(form_to_request(form))  # the CLI's check, same messages
            created = await run(service.create_rollout, db, settings, console.repo_dir)
            if form.get("start"):
                await run(service.ACTIONS["start"], db, created["id"], actor=principal.name)
                console.wake()
        except (RolloutSettingsError, UnknownBundleError) as err:
            field = "bundle" if isinstance(err, UnknownBundleError) else field_of(str(err))
            await run(action_log.record, db, principal.name, principal.role, "POST", path, 422, "-", str(err))
            return await rollouts_page(request, values, {field: str(err)}, 422)
        await run(action_log.record, db, principal.name, principal.role, "POST", path, 201, "-", f"created rollout {created['id']} ({created['bundle']})")
        raise web.HTTPSeeOther(f"/ui/rollouts/{created['id']}")

    def _rollout_id(request) -> str:
        rid = request.match_info["id"]
        if not valid_text(rid) or len(rid) > 64:
            raise service.UnknownRolloutError(f"rollout {rid[:70]!r}: no such rollout")
        return rid

    async def _rollout_live(principal, rid: str) -> str:
        r = await run(service.rollout_status, db, rid, history=True)
        series = await run(gate_history.history, db, rid)
        return pages.rollout_live(r, series, can_act(principal))

    async def rollout_page(request):
        principal, _ = signed_in(request)
        rid = _rollout_id(request)
        try:
            r = await run(service.rollout_status, db, rid)
        except service.UnknownRolloutError as err:
            return whole(request, "Rollout", f'<p class="error">{e(err)}</p>', "rollouts", 404)
        return whole(request, f"Rollout {rid}", pages.rollout_body(r, await _rollout_live(principal, rid)), "rollouts")

    async def rollout_live(request):
        principal, _ = signed_in(request)
        return fragment(request, await _rollout_live(principal, _rollout_id(request)))

    # --- bundles, audit -----------------------------------------------------------------------
    async def bundles_page(request):
        signed_in(request)
        return whole(request, "Bundles", pages.bundles_body(await run(bundles_mod.published_bundles, console.repo_dir)), "bundles")

    AUDIT_PAGE = 100

    async def _audit(request) -> str:
        try:
            pg = max(1, min(int(request.query.get("page", "1")), 10_000))
        except ValueError:
            pg = 1
        entries = await run(action_log.audit_entries, db, AUDIT_PAGE + 1, (pg - 1) * AUDIT_PAGE)
        return pages.audit_body(entries[:AUDIT_PAGE], pg, len(entries) > AUDIT_PAGE)

    async def audit_page(request):
        signed_in(request)
        return whole(request, "Audit", await _audit(request), "audit")

    async def audit_live(request):
        signed_in(request)
        return fragment(request, await _audit(request))

    app.router.add_get("/ui", index)
    app.router.add_get("/ui/", index)
    app.router.add_get("/ui/login", login_form)
    app.router.add_post("/ui/login", login)
    app.router.add_post("/ui/logout", logout)
    app.router.add_get("/ui/fleet", fleet_page)
    app.router.add_get("/ui/fleet/table", fleet_table)
    app.router.add_get("/ui/devices/{id}", device_page)
    app.router.add_get("/ui/devices/{id}/live", device_live)
    app.router.add_get("/ui/rollouts", rollouts_page)
    app.router.add_get("/ui/rollouts/list", rollouts_list)
    app.router.add_post("/ui/rollouts/new", create)
    app.router.add_get("/ui/rollouts/{id}", rollout_page)
    app.router.add_get("/ui/rollouts/{id}/live", rollout_live)
    app.router.add_get("/ui/bundles", bundles_page)
    app.router.add_get("/ui/audit", audit_page)
    app.router.add_get("/ui/audit/live", audit_live)
    app.router.add_static("/ui/static", STATIC, append_version=False)
