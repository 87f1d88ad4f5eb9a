"""The console's HTTP side (aiohttp): REST API, OpenAPI document, /metrics, the repository.

    GET  /openapi.json                         the OpenAPI 3 document (public)
    GET  /healthz                              liveness (public)
    GET  /metrics                              Prometheus (public unless api.metrics_public = false)
    GET  /repo/metadata/..., /repo/targets/... the TUF repository (public: devices verify it)
    GET  /api/v1/devices[?online=&version=]    devices
    GET  /api/v1/devices/{id}
    POST /api/v1/devices/{id}/self-test        order a self-test of a published bundle (body: {"bundle", "runs"})
    GET  /api/v1/events[?device=&kind=&command_id=&since=&limit=]
    GET  /api/v1/rollouts[?status=]            rollouts
    POST /api/v1/rollouts                      create (body: RolloutRequest)
    GET  /api/v1/rollouts/{id}[?history=1]     status with waves and gates
    GET  /api/v1/rollouts/{id}/devices         assignments
    POST /api/v1/rollouts/{id}/{start|pause|resume|promote|abort}

``/api`` requires ``Authorization: Bearer <token>`` (api.tokens). Errors are JSON
``{"error": message, "type": class}``: 400 bad input, 401 no/wrong token, 404 unknown id
(device, rollout, or a bundle a self-test names that is not published), 409 action not allowed
in the rollout's current state or a self-test the device cannot take now (offline, other
profile, a rollout command still queued), 422 refused rollout settings, 503 no broker.
Database work runs in a thread pool so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import threading

from edgeops import __version__
from edgeops.errors import ConfigError, EdgeopsError, FleetError, IllegalTransitionError
from edgeops.fleet import commands, registry
from edgeops.fleet.rollouts import service
from edgeops.fleet.rollouts.settings import RolloutRequest, RolloutSettingsError, parse_request
from edgeops.fleet.rollouts.status import ACTION_FROM
from edgeops.fleet.targets import UnknownBundleError
from edgeops.protocol import MAX_SELF_TEST_RUNS

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


def openapi_document() -> dict:
    """The OpenAPI 3.0 description of the REST API."""
    err = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    obj = {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}
    arr = {"description": "ok", "content": {"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}}}
    rid = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    paths: dict = {
        "/api/v1/devices": {
            "get": {
                "summary": "List devices",
                "parameters": [
                    {"name": "online", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "version", "in": "query", "schema": {"type": "string"}, "description": "NAME@VERSION of the active bundle"},
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                    {"name": "offset", "in": "query", "schema": {"type": "integer"}},
                ],
                "responses": {"200": arr, "401": err},
            }
        },
        "/api/v1/devices/{id}": {"get": {"summary": "One device", "parameters": [rid], "responses": {"200": obj, "401": err, "404": err}}},
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
                "parameters": [rid],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SelfTestRequest"}}}},
                "responses": {
                    "202": {"description": "command published", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SelfTestOrder"}}}},
                    "400": err,
                    "401": err,
                    "404": err,
                    "409": err,
                    "503": err,
                },
            }
        },
        "/api/v1/events": {
            "get": {
                "summary": "Device events, newest first",
                "parameters": [
                    {"name": "device", "in": "query", "schema": {"type": "string"}},
                    {"name": "kind", "in": "query", "schema": {"type": "string"}},
                    {"name": "command_id", "in": "query", "schema": {"type": "string"}, "description": "only events answering this command (e.g. a self-test's)"},
                    {"name": "since", "in": "query", "schema": {"type": "number"}, "description": "unix time"},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 200}},
                ],
                "responses": {"200": arr, "401": err},
            }
        },
        "/api/v1/rollouts": {
            "get": {"summary": "List rollouts", "parameters": [{"name": "status", "in": "query", "schema": {"type": "string"}}], "responses": {"200": arr, "401": err}},
            "post": {
                "summary": "Create a rollout (status created)",
                "description": "Settings are validated here; malformed or contradictory ones are refused with 422 naming the field. "
                "The bundle must be a signed target of the console's repository.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RolloutRequest"}}}},
                "responses": {"201": obj, "400": err, "401": err, "422": err},
            },
        },
        "/api/v1/rollouts/{id}": {
            "get": {
                "summary": "Rollout status with waves, device counts and gate verdicts",
                "parameters": [rid, {"name": "history", "in": "query", "schema": {"type": "boolean"}}],
                "responses": {"200": obj, "401": err, "404": err},
            }
        },
        "/api/v1/rollouts/{id}/devices": {"get": {"summary": "Devices of a rollout with their assignment status", "parameters": [rid], "responses": {"200": arr, "401": err, "404": err}}},
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
    schema = RolloutRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return {
        "openapi": "3.0.3",
        "info": {"title": "edgeops fleet console", "version": __version__},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}, "type": {"type": "string"}}, "required": ["error"]},
                "RolloutRequest": schema,
                "SelfTestRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["bundle"],
                    "properties": {
                        "bundle": {"type": "string", "description": "NAME@VERSION as published to the console's repository", "example": "detector@1.4.0"},
                        "runs": {"type": "integer", "minimum": 1, "maximum": MAX_SELF_TEST_RUNS, "description": "timed inferences for the latency figures (default: the agent's self_test.latency_runs)"},
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
                        "runs": {"type": "integer", "nullable": True},
                        "target": {"type": "object", "properties": {"name": {"type": "string"}, "sha256": {"type": "string"}, "length": {"type": "integer"}}},
                    },
                },
                **defs,
            },
        },
    }


def _status_for(e: Exception) -> int:
    if isinstance(e, (IllegalTransitionError, commands.DeviceOfflineError, commands.CommandConflictError)):
        return 409
    if isinstance(e, (service.UnknownRolloutError, registry.UnknownDeviceError, commands.UnpublishedBundleError)):
        return 404
    if isinstance(e, commands.BrokerUnavailableError):
        return 503
    if isinstance(e, RolloutSettingsError):
        return 422
    if isinstance(e, (UnknownBundleError, ConfigError)):
        return 400
    if isinstance(e, FleetError):
        return 400
    return 500


def make_app(console):
    """The aiohttp application for a :class:`~edgeops.fleet.console.FleetConsole`."""
    from aiohttp import web

    from edgeops.fleet import metrics
    from edgeops.fleet.repo_server import add_http_routes

    db = console.db
    tokens = [t.encode() for t in console.config.api.all_tokens()]
    metrics_public = console.config.api.metrics_public

    def _authorized(request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        given = header[7:].strip().encode()
        return any(hmac.compare_digest(given, t) for t in tokens)

    @web.middleware
    async def guard(request, handler):
        path = request.path
        needs_auth = path.startswith("/api/") or (path == "/metrics" and not metrics_public)
        if needs_auth and not _authorized(request):
            return web.json_response({"error": "missing or wrong bearer token (Authorization: Bearer <token>; see api.tokens in fleet.toml)", "type": "Unauthorized"}, status=401, headers={"WWW-Authenticate": "Bearer"})
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except EdgeopsError as e:
            return web.json_response({"error": str(e), "type": type(e).__name__}, status=_status_for(e))
        except Exception as e:  # a bug must answer 500, not kill the server
            log.exception("%s %s failed", request.method, path)
            return web.json_response({"error": f"internal error: {e}", "type": type(e).__name__}, status=500)

    async def run(fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))

    def _bool(v: str | None) -> bool | None:
        if v is None or v == "":
            return None
        return v.lower() in ("1", "true", "yes", "on")

    def _int(request, name: str, default=None):
        v = request.query.get(name)
        if v is None:
            return default
        try:
            return int(v)
        except ValueError:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"query parameter {name}: {v!r} is not an integer"}), content_type="application/json") from None

    async def openapi(request):
        return web.json_response(openapi_document())

    async def healthz(request):
        return web.json_response({"ok": True, "leader": console.is_leader, "mqtt_connected": console.mqtt_connected})

    async def metrics_handler(request):
        body, ctype = await run(metrics.render, db, console)
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def devices(request):
        return web.json_response(await run(registry.list_devices, db, online=_bool(request.query.get("online")), version=request.query.get("version"), limit=_int(request, "limit"), offset=_int(request, "offset", 0)))

    async def device(request):
        return web.json_response(await run(registry.get_device, db, request.match_info["id"]))

    async def events(request):
        since = request.query.get("since")
        try:
            since_f = float(since) if since else None
        except ValueError:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"query parameter since: {since!r} is not a unix time"}), content_type="application/json") from None
        return web.json_response(
            await run(registry.list_events, db, device_id=request.query.get("device"), since=since_f, kind=request.query.get("kind"), command_id=request.query.get("command_id"), limit=_int(request, "limit", 200))
        )

    async def self_test(request):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": "body is not JSON; send {\"bundle\": \"NAME@VERSION\", \"runs\": N}", "type": "BadRequest"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be a JSON object {\"bundle\": \"NAME@VERSION\", \"runs\": N}", "type": "BadRequest"}, status=400)
        extra = sorted(set(body) - {"bundle", "runs"})
        if extra:
            return web.json_response({"error": f"unknown field(s) {', '.join(extra)}; the body takes bundle and runs", "type": "BadRequest"}, status=400)
        if "bundle" not in body:
            return web.json_response({"error": "bundle: required (NAME@VERSION as published)", "type": "BadRequest"}, status=400)
        sender = console.reconciler.sender if console.reconciler is not None else None
        out = await run(
            commands.order_self_test,
            db,
            console.repo_dir,
            sender,
            request.match_info["id"],
            body["bundle"],
            body.get("runs"),
            ttl_s=console.config.rollouts.command_ttl_s,
            actor="api",
            connected=console.mqtt_connected,  # 503 at once rather than wait for an acknowledgement that cannot come
        )
        return web.json_response(out, status=202)

    async def rollouts(request):
        return web.json_response(await run(service.list_rollouts, db, status=request.query.get("status")))

    async def create(request):
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": "body is not JSON", "type": "BadRequest"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be a JSON object", "type": "BadRequest"}, status=400)
        settings = parse_request(body)
        out = await run(service.create_rollout, db, settings, console.repo_dir)
        return web.json_response(out, status=201)

    async def rollout(request):
        return web.json_response(await run(service.rollout_status, db, request.match_info["id"], history=bool(_bool(request.query.get("history")))))

    async def rollout_devices(request):
        return web.json_response(await run(service.rollout_assignments, db, request.match_info["id"]))

    async def action(request):
        name = request.match_info["action"]
        if name not in service.ACTIONS:
            raise web.HTTPNotFound()
        out = await run(service.ACTIONS[name], db, request.match_info["id"], actor="api")
        console.wake()
        return web.json_response(out)

    app = web.Application(middlewares=[guard])
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/api/v1/devices", devices)
    app.router.add_get("/api/v1/devices/{id}", device)
    app.router.add_post("/api/v1/devices/{id}/self-test", self_test)
    app.router.add_get("/api/v1/events", events)
    app.router.add_get("/api/v1/rollouts", rollouts)
    app.router.add_post("/api/v1/rollouts", create)
    app.router.add_get("/api/v1/rollouts/{id}", rollout)
    app.router.add_get("/api/v1/rollouts/{id}/devices", rollout_devices)
    app.router.add_post("/api/v1/rollouts/{id}/{action}", action)
    add_http_routes(app, console.repo_dir, console.config.repository.http_prefix)
    return app


class ApiServer:
    """Runs the aiohttp app on its own thread and event loop."""

    def __init__(self, console, host: str, port: int):
        self.console = console
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """http://host:port of the running server."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> "ApiServer":
        """Start serving; returns once the socket listens."""
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
            site = web.TCPSite(self._runner, self.host, self.port)
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
