"""The console's HTTP side (aiohttp): REST API, OpenAPI document, /metrics, the repository.

    GET  /openapi.json                         the OpenAPI 3.1 document (public)
    GET  /healthz                              health (public): 503 with a reason while the broker session is down
                                               or its subscriptions receive nothing (fleet/subscription_health.py)
    GET  /metrics                              Prometheus (token required unless api.metrics_public = true)
    GET  /repo/metadata/..., /repo/targets/... the TUF repository (public: devices verify it)
    GET  /api/v1/devices[?online=&version=&limit=&offset=]    devices
    GET  /api/v1/devices/{id}
    POST /api/v1/devices/{id}/self-test        order a self-test of a published bundle (body: {"bundle", "runs"})
    POST /api/v1/capture                       order a data capture policy on a device or cohort (admin; fleet/capture.py)
    GET  /api/v1/events[?device=&kind=&command_id=&since=&limit=]
    GET  /api/v1/rollouts[?status=]            rollouts
    POST /api/v1/rollouts                      create (body: RolloutRequest)
    GET  /api/v1/rollouts/{id}[?history=1]     status with waves and gates
    GET  /api/v1/rollouts/{id}/devices         assignments
    POST /api/v1/rollouts/{id}/{start|pause|resume|promote|abort}
    GET  /api/v1/audit[?limit=&offset=]        who did what when (API actions and rollout decisions)
    GET  /api/v1/drift[?by=&bundle=&device=&tag=&profile=&window_s=]  drift scores against each bundle's reference (fleet/drift.py)
    GET  /api/v1/access                        token names and roles (admin)
    GET  /ui/...                               the browser console (fleet/ui/)

``/api`` requires ``Authorization: Bearer <token>`` (api.tokens; the scheme in any case) or the
console's session cookie (signed in at /ui/login; state-changing requests then also need the
session's X-CSRF-Token). Each token has a role (fleet/access.py: viewer, operator, admin); a
request above the caller's role is a 403 naming the role it needs.
With ``api.cert_file``/``key_file`` the server speaks https only. Query parameters and bodies
are checked before any work (fleet/api_input.py: ranges, 64 KiB and 16 levels of JSON).
Errors are JSON ``{"error": message, "type": class, "request_id": id}``: 400 bad input,
401 no/wrong token, 404 unknown id (device, rollout, or a bundle a self-test names that is not
published), 409 action not allowed in the rollout's current state or a self-test the device
cannot take now (offline, other profile, a rollout command still queued), 413 body too large,
422 refused rollout settings, 503 no broker. A fault of the console is a 500 whose body says
only where to look: the details go to the log under the request id, which every response
carries in ``X-Request-Id`` (a sane id the client sent is kept, so logs can be joined).
Database work runs in a thread pool so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import ssl
import threading
import uuid

from edgeops import __version__
from edgeops.errors import ConfigError, FleetError, IllegalTransitionError
from edgeops.fleet import commands, drift, registry
from edgeops.fleet.api_input import MAX_BODY_BYTES, MAX_TEXT, OFFSET, TEXT_PATTERN, Param, RequestError, limit_param, parse_json_body, valid_device_id, valid_text
from edgeops.fleet.hosts import is_loopback
from edgeops.fleet.rollouts import service
from edgeops.fleet.rollouts.settings import BUNDLE_REF_PATTERN, RolloutRequest, RolloutSettingsError, parse_request
from edgeops.fleet.rollouts.status import ACTION_FROM, RolloutStatus
from edgeops.fleet.rollouts.resolution import NoMatchingTargetError
from edgeops.fleet.targets import UnknownBundleError
from edgeops.protocol import DEVICE_ID_PATTERN, MAX_SELF_TEST_RUNS, EventKind

log = logging.getLogger("edgeops.fleet.api")

_ACTION_DOC = {
    "start": "Start wave 1.",
    "pause": "Stop starting new waves; commands already decided still go out.",
    "resume": "Run again; a halted wave has its gates evaluated afresh.",
    "promote": "Start the next wave: approves a passed wave, or overrides the gates of the current wave when paused.",
    "abort": "Order every device of the rollout back to its previous version (signed rollback commands).",
}


def _allowed(action: str) -> str:
    return ", ".join(sorted(s.value for s in ACTION_FROM[action]))


# Query parameters, declared once: the handlers read them and the OpenAPI document shows them.
DEVICE_PARAMS = (
    Param("online", "bool", "only online (true) or offline (false) devices"),
    Param("version", "text", "NAME@VERSION of the active bundle (NAME alone: any version)"),
    limit_param(None),
    OFFSET,
)
EVENT_PARAMS = (
    Param("device", "device", "only this device's events"),
    Param("kind", "enum", values=tuple(k.value for k in EventKind)),
    Param("command_id", "text", "only events answering this command (e.g. a self-test's)"),
    Param("since", "number", "unix time: only events received since"),
    limit_param(200),
)
ROLLOUT_LIST_PARAMS = (Param("status", "enum", values=tuple(s.value for s in RolloutStatus)),)
HISTORY = Param("history", "bool", "include the status history")
AUDIT_PARAMS = (limit_param(100), OFFSET)
DRIFT_PARAMS = (
    Param("by", "enum", "group the scores per bundle version, device, device profile or device tag (key=value)", values=drift.GROUPINGS),
    Param("bundle", "text", "NAME@VERSION (NAME alone: every version)"),
    Param("device", "device", "only this device"),
    Param("tag", "text", "KEY=VALUE: only devices with this tag"),
    Param("profile", "text", "only devices of this profile"),
    Param("window_s", "int", "sketches received this many seconds back (default: drift.window_s of fleet.toml)", minimum=1, maximum=int(drift.MAX_WINDOW_S)),
)

REQUEST_ID_HEADER = "X-Request-Id"
try:  # typed request storage keys (aiohttp >= 3.12); made at import: RequestKey names itself after the importing module
    from aiohttp.web import RequestKey

    _REQUEST_ID_KEY = RequestKey("request_id", str)
    _CALLER_KEY = RequestKey("caller", tuple)
except ImportError:  # pragma: no cover
    _REQUEST_ID_KEY = "request_id"
    _CALLER_KEY = "caller"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _name_operations(paths: dict) -> None:
    """operationId of every operation: method + path words (``getApiV1RolloutsIdDevices``)."""
    for path, item in paths.items():
        words = [w.strip("{}") for w in re.split(r"[/._-]", path) if w]
        for method, op in item.items():
            op["operationId"] = method + "".join(w[:1].upper() + w[1:] for w in words)


def openapi_document() -> dict:
    """The OpenAPI 3.1 description of the REST API (validated by openapi-spec-validator in the tests)."""
    err = {
        "description": "error (JSON body; the X-Request-Id header names the request in the console's log)",
        "headers": {REQUEST_ID_HEADER: {"schema": {"type": "string"}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    obj = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
    arr = {"description": "ok", "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}}}
    device_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": DEVICE_ID_PATTERN}}
    rid = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": MAX_TEXT, "pattern": TEXT_PATTERN}}
    public = []  # no security requirement
    paths: dict = {
        "/openapi.json": {"get": {"summary": "This document", "security": public, "responses": {"200": obj}}},
        "/healthz": {
            "get": {
                "summary": "Health: 200 while the console serves and holds its broker session, 503 with a reason otherwise",
                "security": public,
                "responses": {"200": {"description": "healthy", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}}, "503": {"description": "unhealthy", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (bearer token required unless api.metrics_public = true)",
                "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}, "401": err},
            }
        },
        "/api/v1/devices": {"get": {"summary": "List devices", "parameters": [p.openapi() for p in DEVICE_PARAMS], "responses": {"200": arr, "400": err, "401": err}}},
        "/api/v1/devices/{id}": {"get": {"summary": "One device", "parameters": [device_id], "responses": {"200": obj, "401": err, "404": err}}},
        "/api/v1/devices/{id}/self-test": {
            "post": {
                "summary": "Self-test a published bundle on one device without activating it",
                "description": "Sends the device a DSSE-signed self_test command naming the bundle's TUF target (QoS 1). The agent fetches "
                "and verifies the bundle, runs its self-test (golden vectors, load time, memory, latency p50/p95/p99 over `runs` "
                "inferences) without touching the serving model, and answers with one event carrying the returned command_id "
                "(self_test_passed / self_test_failed with gates and a JSON detail of figures, or bundle_rejected / "
                "command_rejected / install_failed): poll GET /api/v1/events?device={id}&command_id=... "
                "404: device not enrolled, or bundle not published; 409: device offline, bundle built for another profile, or a "
                "rollout command for the device not yet published; 503: the console has no broker connection.",
                "parameters": [device_id],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SelfTestRequest"}}}},
                "responses": {
                    "202": {"description": "command published", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SelfTestOrder"}}}},
                    "400": err,
                    "401": err,
                    "404": err,
                    "409": err,
                    "413": err,
                    "503": err,
                },
            }
        },
        "/api/v1/capture": {
            "post": {
                "summary": "Turn data capture on (or off) for a device or a cohort (admin)",
                "description": "Signs a capture command with the policy (triggers, sample rate, daily byte budget, duration; samples sealed to "
                "the console's capture key) for `device`, or every enrolled device with `tags` and/or `profile`, and publishes it QoS 1. "
                "Devices answer with a command_accepted or command_rejected event. See docs/monitoring.md.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"202": obj, "400": err, "401": err, "403": err, "404": err, "413": err, "503": err},
            }
        },
        "/api/v1/events": {"get": {"summary": "Device events, newest first", "parameters": [p.openapi() for p in EVENT_PARAMS], "responses": {"200": arr, "400": err, "401": err}}},
        "/api/v1/rollouts": {
            "get": {"summary": "List rollouts", "parameters": [p.openapi() for p in ROLLOUT_LIST_PARAMS], "responses": {"200": arr, "400": err, "401": err}},
            "post": {
                "summary": "Create a rollout (status created)",
                "description": "Settings are validated here; malformed or contradictory ones are refused with 422 naming the field. "
                "The bundle must be a signed target of the console's repository (400 otherwise). A version published for several "
                "hardware profiles (one bundle each) is one rollout: each device gets the target built for the profile it reported; "
                "a selection whose devices run none of the published profiles is refused (400, naming both).",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RolloutRequest"}}}},
                "responses": {"201": obj, "400": err, "401": err, "413": err, "422": err},
            },
        },
        "/api/v1/rollouts/{id}": {
            "get": {
                "summary": "Rollout status with waves, device counts and gate verdicts",
                "description": "`targets` maps each hardware profile to the signed target its devices get; `excluded` counts the "
                "selected devices left out because no target of the version is built for their profile, per profile with the reason.",
                "parameters": [rid, HISTORY.openapi()],
                "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RolloutStatus"}}}}, "400": err, "401": err, "404": err},
            }
        },
        "/api/v1/rollouts/{id}/devices": {"get": {"summary": "Devices of a rollout with their assignment status", "parameters": [rid], "responses": {"200": arr, "401": err, "404": err}}},
        "/api/v1/audit": {"get": {"summary": "Who did what when: API actions (caller, method, path, status) and rollout decisions, newest first", "parameters": [p.openapi() for p in AUDIT_PARAMS], "responses": {"200": arr, "400": err, "401": err}}},
        "/api/v1/access": {"get": {"summary": "Configured token names and roles (admin role; tokens are never shown)", "responses": {"200": arr, "401": err, "403": err}}},
        "/api/v1/drift": {
            "get": {
                "summary": "Drift of served data against each bundle's reference, per version, device, profile or tag",
                "description": "The devices' drift sketches received in the window, merged per group and scored against the reference in the "
                "bundle's manifest: PSI, KS distance and p-value, the sample count (inferences), and a level (ok, warn, alert from the "
                "[drift] thresholds of fleet.toml; insufficient below min_samples; no_reference for a bundle built without one). "
                "See docs/monitoring.md.",
                "parameters": [p.openapi() for p in DRIFT_PARAMS],
                "responses": {"200": obj, "400": err, "401": err},
            }
        },
    }
    for action in ACTION_FROM:
        paths[f"/api/v1/rollouts/{{id}}/{action}"] = {
            "post": {
                "summary": f"{action.capitalize()} a rollout",
                "description": f"{_ACTION_DOC[action]} Allowed from: {_allowed(action)}; otherwise 409.",
                "x-allowed-from": sorted(s.value for s in ACTION_FROM[action]),
                "parameters": [rid],
                "responses": {"200": obj, "401": err, "404": err, "409": err},
            }
        }
    for path, item in paths.items():  # roles (fleet/access.py): a token or session below the role needed gets 403
        if path.startswith("/api/"):
            for op in item.values():
                op["responses"].setdefault("403", err)
    _name_operations(paths)
    paths["/api/v1/devices"]["get"]["responses"]["200"] = {
        **arr,
        "links": {
            op["operationId"]: {"operationId": op["operationId"], "parameters": {"id": "$response.body#/0/id"}}
            for path, item in paths.items()
            if path.startswith("/api/v1/devices/{id}")
            for op in item.values()
        },
    }
    # what a created rollout's id leads to (schemathesis' stateful phase follows these)
    paths["/api/v1/rollouts"]["post"]["responses"]["201"] = {
        **obj,
        "links": {
            op["operationId"]: {"operationId": op["operationId"], "parameters": {"id": "$response.body#/id"}}
            for path, item in paths.items()
            if path.startswith("/api/v1/rollouts/{id}")
            for op in item.values()
        },
    }
    schema = RolloutRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return {
        "openapi": "3.1.0",
        "info": {"title": "edgeops fleet console", "version": __version__},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "type", "request_id"],
                    "properties": {
                        "error": {"type": "string", "description": "what was wrong and what to do; internal errors say only where to look"},
                        "type": {"type": "string"},
                        "request_id": {"type": "string", "description": "the same as the X-Request-Id header; the console's log carries the details"},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["ok", "leader", "mqtt_connected"],
                    "properties": {"ok": {"type": "boolean"}, "leader": {"type": "boolean"}, "mqtt_connected": {"type": "boolean"}, "reason": {"type": "string"}},
                },
                "RolloutRequest": schema,
                "SelfTestRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["bundle"],
                    "properties": {
                        "bundle": {"type": "string", "pattern": BUNDLE_REF_PATTERN, "description": "NAME@VERSION as published to the console's repository", "examples": ["detector@1.4.0"]},
                        "runs": {"type": "integer", "minimum": 1, "maximum": MAX_SELF_TEST_RUNS, "description": "timed inferences for the latency figures (default: the agent's self_test.latency_runs)"},
                    },
                },
                "RolloutStatus": {
                    "type": "object",
                    "required": ["id", "bundle", "status", "targets", "excluded"],
                    "properties": {
                        "id": {"type": "string"},
                        "bundle": {"type": "string"},
                        "status": {"type": "string"},
                        "targets": {
                            "type": "object",
                            "description": "profile -> its signed target (`*`: one target for every device, a rollout created before per-profile targets)",
                            "additionalProperties": {"type": "object", "properties": {"name": {"type": "string"}, "sha256": {"type": "string"}, "length": {"type": "integer"}, "release": {"type": "integer"}}},
                        },
                        "excluded": {
                            "type": "object",
                            "properties": {
                                "devices": {"type": "integer"},
                                "by_profile": {
                                    "type": "object",
                                    "description": "profile (`-`: not reported yet) -> devices, reason, a sample of their ids",
                                    "additionalProperties": {"type": "object", "properties": {"devices": {"type": "integer"}, "reason": {"type": "string"}, "sample": {"type": "array", "items": {"type": "string"}}}},
                                },
                            },
                        },
                    },
                },
                "SelfTestOrder": {
                    "type": "object",
                    "required": ["command_id", "device", "bundle"],
                    "properties": {
                        "command_id": {"type": "string"},
                        "device": {"type": "string"},
                        "bundle": {"type": "string"},
                        "seq": {"type": "integer"},
                        "expires": {"type": "number"},
                        "runs": {"type": ["integer", "null"]},
                        "target": {"type": "object", "properties": {"name": {"type": "string"}, "sha256": {"type": "string"}, "length": {"type": "integer"}}},
                    },
                },
                **defs,
            },
        },
    }


# Errors whose message is written for the API's client (it names the field or id at fault and
# holds no path or internal detail), with their status. Any other exception is a fault of the
# console: the client gets a generic 500 naming the request id, the log gets the details.
_CLIENT_ERRORS: tuple[tuple[type, int], ...] = (
    (RequestError, 400),  # status taken from the error
    (IllegalTransitionError, 409),
    (commands.DeviceOfflineError, 409),
    (commands.CommandConflictError, 409),
    (service.UnknownRolloutError, 404),
    (registry.UnknownDeviceError, 404),
    (commands.UnpublishedBundleError, 404),
    (commands.BrokerUnavailableError, 503),
    (RolloutSettingsError, 422),
    (UnknownBundleError, 400),
    (NoMatchingTargetError, 400),
    (commands.InvalidOrderError, 400),
)


def client_error_status(e: BaseException) -> int | None:
    """The HTTP status of an error meant for the client; None for a console fault (500)."""
    for cls, status in _CLIENT_ERRORS:
        if isinstance(e, cls):
            return getattr(e, "status", status)
    return None


def bearer_token(header: str) -> str | None:
    """The credentials of an ``Authorization: Bearer <token>`` header (scheme case-insensitive, RFC 7235)."""
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


def make_app(console):
    """The aiohttp application for a :class:`~edgeops.fleet.console.FleetConsole`."""
    from aiohttp import web

    from edgeops.fleet import metrics
    from edgeops.fleet.repo_server import add_http_routes

    from edgeops.fleet import access, action_log

    db = console.db
    tokens = access.TokenTable(console.config.api.token_roles())
    sessions = access.SessionStore()
    metrics_public = console.config.api.metrics_public

    def _caller(request):
        """(principal, session): a bearer token first, else the browser's session cookie."""
        given = bearer_token(request.headers.get("Authorization", ""))
        if given is not None:
            return tokens.lookup(given), None
        session = sessions.get(request.cookies.get(access.SESSION_COOKIE))
        return (session.principal, session) if session else (None, None)

    def _error(request, status: int, message: str, kind: str, headers=None):
        rid = request[_REQUEST_ID_KEY]
        return web.json_response({"error": message, "type": kind, "request_id": rid}, status=status, headers=headers)

    @web.middleware
    async def guard(request, handler):
        rid = request.headers.get(REQUEST_ID_HEADER, "")
        request[_REQUEST_ID_KEY] = rid if _REQUEST_ID_RE.fullmatch(rid) else uuid.uuid4().hex
        request[_CALLER_KEY] = _caller(request)
        response = await _answer(request, handler)
        principal = request[_CALLER_KEY][0]
        if principal is not None and request.path.startswith("/api/") and request.method not in ("GET", "HEAD", "OPTIONS"):
            # who did what when (the Audit page); a refusal is recorded too
            try:
                await run(action_log.record, db, principal.name, principal.role, request.method, request.path, response.status, request[_REQUEST_ID_KEY], action_log.outcome_text(response.status, getattr(response, "body", None), response.reason))
            except Exception:  # noqa: BLE001 (the answer is decided: a failed audit write is logged, not turned into an error)
                log.exception("request %s: audit record failed", request[_REQUEST_ID_KEY])
        response.headers[REQUEST_ID_HEADER] = request[_REQUEST_ID_KEY]
        return response

    async def _answer(request, handler):
        path = request.path
        needs_auth = path.startswith("/api/") or (path == "/metrics" and not metrics_public)
        principal, session = request[_CALLER_KEY]
        if needs_auth and principal is None:
            return _error(request, 401, "missing or wrong bearer token (Authorization: Bearer <token>; see api.tokens in fleet.toml)", "Unauthorized", {"WWW-Authenticate": "Bearer"})
        if needs_auth:
            needed = access.role_needed(request.method, path)
            if not access.allows(principal.role, needed):
                return _error(request, 403, f"{request.method} {path} needs the {needed} role; token {principal.name!r} has the {principal.role} role (roles per token: [[api.access]] in fleet.toml)", "Forbidden")
            if session is not None and request.method not in ("GET", "HEAD", "OPTIONS") and not access.csrf_ok(session, request.headers.get(access.CSRF_HEADER)):
                return _error(request, 403, f"missing or wrong CSRF token: a request made with the session cookie must send the page's token in {access.CSRF_HEADER}", "Forbidden")
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            # aiohttp's own refusals (no route 404, 405, 413 over client_max_size) answer in JSON like the rest
            headers = {k: v for k, v in e.headers.items() if k.lower() not in ("content-type", "content-length")}
            return _error(request, e.status, e.reason if e.status != 413 else f"body larger than {MAX_BODY_BYTES} bytes", type(e).__name__.removeprefix("HTTP"), headers)
        except Exception as e:  # noqa: BLE001 (every exception must answer, and only client errors show their text)
            status = client_error_status(e)
            if status is not None:
                log.info("request %s: %s %s -> %d %s", request[_REQUEST_ID_KEY], request.method, path, status, e)
                return _error(request, status, str(e), type(e).__name__)
            log.error("request %s: %s %s failed", request[_REQUEST_ID_KEY], request.method, path, exc_info=True)
            return _error(request, 500, f"internal error; the console's log has the details under request id {request[_REQUEST_ID_KEY]}", "InternalError")

    async def run(fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))

    def _query(request, params) -> dict:
        return {p.name: p.read(request.query) for p in params}

    async def _body(request, example: str) -> dict:
        return parse_json_body(await request.read(), example)

    def _device_id(request) -> str:
        device_id = request.match_info["id"]
        if not valid_device_id(device_id):
            raise registry.UnknownDeviceError(f"device {device_id[:70]!r}: not a valid device id, so not enrolled")
        return device_id

    def _rollout_id(request) -> str:
        rollout_id = request.match_info["id"]
        if not valid_text(rollout_id):
            raise service.UnknownRolloutError(f"rollout {rollout_id[:70]!r}: no such rollout (see `edgeops rollout list`)")
        return rollout_id

    async def openapi(request):
        return web.json_response(openapi_document())

    async def healthz(request):
        body = {"ok": True, "leader": console.is_leader, "mqtt_connected": console.mqtt_connected}
        if console.mqtt is not None and not console.mqtt_connected:  # a console without MQTT (tests, tools) needs no session
            body.update(ok=False, reason="no broker session: the console is not connected to the MQTT broker (it keeps reconnecting; see its log)")
            return web.json_response(body, status=503)
        problem = getattr(console, "subscription_problem", None)  # a probe published to itself did not come back
        if problem:
            body.update(ok=False, reason=problem)
            return web.json_response(body, status=503)
        return web.json_response(body)

    async def drift_handler(request):
        q = _query(request, DRIFT_PARAMS)
        bundle = None
        if q["bundle"]:
            name, _, version = q["bundle"].partition("@")
            if not name or "/" in q["bundle"]:
                raise RequestError(f"query parameter bundle: {q['bundle'][:70]!r} is not NAME@VERSION or NAME")
            bundle = (name, version or None)
        tag = None
        if q["tag"]:
            key, sep, value = q["tag"].partition("=")
            if not sep or not key:
                raise RequestError(f"query parameter tag: {q['tag'][:70]!r} is not KEY=VALUE")
            tag = (key, value)
        refs = drift.reference_store(console.repo_dir)
        report = await run(drift.drift_report, db, refs, console.config.drift, q["by"] or "version", window_s=q["window_s"], bundle=bundle,
                           device=q["device"], tag=tag, profile=q["profile"])
        return web.json_response(report)

    async def metrics_handler(request):
        body, ctype = await run(metrics.render, db, console)
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def devices(request):
        q = _query(request, DEVICE_PARAMS)
        return web.json_response(await run(registry.list_devices, db, **q))

    async def device(request):
        return web.json_response(await run(registry.get_device, db, _device_id(request)))

    async def events(request):
        q = _query(request, EVENT_PARAMS)
        return web.json_response(await run(registry.list_events, db, device_id=q["device"], since=q["since"], kind=q["kind"], command_id=q["command_id"], limit=q["limit"]))

    async def self_test(request):
        example = '{"bundle": "NAME@VERSION", "runs": N}'
        device_id = _device_id(request)
        body = await _body(request, example)
        extra = sorted(set(body) - {"bundle", "runs"})
        if extra:
            raise RequestError(f"unknown field(s) {', '.join(repr(k[:40]) for k in extra[:5])}; the body takes bundle and runs")
        if "bundle" not in body:
            raise RequestError("bundle: required (NAME@VERSION as published)")
        sender = console.reconciler.sender if console.reconciler is not None else None
        out = await run(
            commands.order_self_test,
            db,
            console.repo_dir,
            sender,
            device_id,
            body["bundle"],
            body.get("runs"),
            ttl_s=console.config.rollouts.command_ttl_s,
            actor=request[_CALLER_KEY][0].name,  # the token's name: the audit says who
            connected=console.mqtt_connected,  # 503 at once rather than wait for an acknowledgement that cannot come
        )
        return web.json_response(out, status=202)

    async def capture(request):
        from edgeops.fleet.capture import order_capture_request
        from edgeops.fleet.capture_store import default_capture_dir

        body = await _body(request, '{"device": "ID" | "tags": {...}, "random_share": 0.01, ...}')
        sender = console.reconciler.sender if console.reconciler is not None else None
        out = await run(order_capture_request, db, sender, default_capture_dir(console.config), body, console.config.drift,
                        ttl_s=console.config.rollouts.command_ttl_s, actor=request[_CALLER_KEY][0].name, connected=console.mqtt_connected)
        return web.json_response(out, status=202)

    async def audit(request):
        q = _query(request, AUDIT_PARAMS)
        return web.json_response(await run(action_log.audit_entries, db, **q))

    async def access_list(request):
        return web.json_response(tokens.names())

    async def rollouts(request):
        return web.json_response(await run(service.list_rollouts, db, **_query(request, ROLLOUT_LIST_PARAMS)))

    async def create(request):
        settings = parse_request(await _body(request, "a RolloutRequest object (see /openapi.json)"), console.config.drift)
        out = await run(service.create_rollout, db, settings, console.repo_dir)
        return web.json_response(out, status=201)

    async def rollout(request):
        rollout_id = _rollout_id(request)
        history = bool(HISTORY.read(request.query))
        return web.json_response(await run(service.rollout_status, db, rollout_id, history=history))

    async def rollout_devices(request):
        return web.json_response(await run(service.rollout_assignments, db, _rollout_id(request)))

    async def action(request):
        name = request.match_info["action"]
        out = await run(service.ACTIONS[name], db, _rollout_id(request), actor=request[_CALLER_KEY][0].name)
        console.wake()
        return web.json_response(out)

    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/api/v1/devices", devices)
    app.router.add_get("/api/v1/devices/{id}", device)
    app.router.add_post("/api/v1/devices/{id}/self-test", self_test)
    app.router.add_post("/api/v1/capture", capture)
    app.router.add_get("/api/v1/events", events)
    app.router.add_get("/api/v1/rollouts", rollouts)
    app.router.add_post("/api/v1/rollouts", create)
    app.router.add_get("/api/v1/rollouts/{id}", rollout)
    app.router.add_get("/api/v1/rollouts/{id}/devices", rollout_devices)
    app.router.add_post("/api/v1/rollouts/{id}/{action:" + "|".join(service.ACTIONS) + "}", action)  # only actions: /devices answers GET alone
    app.router.add_get("/api/v1/audit", audit)
    app.router.add_get("/api/v1/drift", drift_handler)
    app.router.add_get("/api/v1/access", access_list)
    add_http_routes(app, console.repo_dir, console.config.repository.http_prefix)
    from edgeops.fleet.ui.routes import add_ui_routes

    add_ui_routes(app, console, tokens, sessions, lambda request: request[_CALLER_KEY])
    return app


def server_ssl_context(config) -> "ssl.SSLContext | None":
    """The TLS context of ``[api] cert_file``/``key_file`` (None: plain http); FleetError naming the file."""
    api = config.api
    if not api.tls:
        return None
    cert, key = config.path(api.cert_file), config.path(api.key_file)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"api.cert_file {cert} / api.key_file {key}: cannot load the API's TLS certificate and key ({e}); issue them with `edgeops fleet api-cert`") from e
    return ctx


class ApiServer:
    """Runs the aiohttp app on its own thread and event loop."""

    def __init__(self, console, host: str, port: int):
        self.console = console
        self.host = host
        self.port = port
        self.ssl_context = server_ssl_context(console.config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """http(s)://host:port of the running server."""
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> "ApiServer":
        """Start serving; returns once the socket listens."""
        if self.ssl_context is None and not is_loopback(self.host):
            log.warning("api.bind %s:%s serves plain http beyond this host: bearer tokens cross the network in clear; set api.cert_file/key_file (edgeops fleet api-cert)", self.host, self.port)
        self._thread = threading.Thread(target=self._run, name="edgeops-api", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error:
            raise FleetError(f"HTTP API could not listen on {self.host}:{self.port}: {self._error}")
        return self

    def _run(self) -> None:
        from aiohttp import web

        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)

        async def boot():
            self._runner = web.AppRunner(make_app(self.console), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
            await site.start()
            self.port = self._runner.addresses[0][1]

        try:
            self._loop.run_until_complete(boot())
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)
            self._thread = None
