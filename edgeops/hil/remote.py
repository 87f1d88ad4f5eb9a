"""`edgeops hil run --device ID --fleet URL`: ask a device's agent, through the console, to
self-test and benchmark a bundle without activating it, and wait for its report.

The console's REST API (``POST /api/v1/devices/{id}/self-test``) sends the device a signed
``self_test`` command for the bundle's TUF target; the agent fetches and verifies the bundle,
runs the same self-test as before an activation (``runs`` timed inferences), and answers with
one event carrying the command's id: every gate, and a JSON ``detail`` of figures (load time,
latency p50/p95/p99, memory, CPU frequency, temperature). This module polls
``GET /api/v1/events?device=ID&command_id=CID`` for that event and turns it into checks.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from edgeops.errors import FleetError
from edgeops.hil.report import Check, HilReport

# the events that answer a self_test command (exactly one of them per command)
FINAL_EVENTS = ("self_test_passed", "self_test_failed", "bundle_rejected", "command_rejected", "install_failed")
# a refusal before the self-test ran: which check it fails
_REFUSALS = {"command_rejected": "device_accepted", "bundle_rejected": "bundle_integrity", "install_failed": "bundle_install"}


class ConsoleHttpError(FleetError):
    """The console answered with an HTTP error (the message carries its JSON error text)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class ConsoleUnreachableError(FleetError):
    """The console could not be reached at all."""


def _call(method: str, url: str, token: str | None, body: dict | None = None, timeout: float = 60.0, ca_file: str | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    context = ssl.create_default_context(cafile=ca_file) if url.startswith("https://") else None  # ca_file None: the system CAs
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        raw = e.read()[:1000].decode(errors="replace")
        try:
            text = json.loads(raw).get("error", raw)
        except (ValueError, AttributeError):
            text = raw
        hint = " (check --token / EDGEOPS_FLEET_TOKEN)" if e.code == 401 else ""
        raise ConsoleHttpError(f"{method} {url}: HTTP {e.code}: {text}{hint}", e.code) from e
    except (urllib.error.URLError, OSError) as e:
        if isinstance(getattr(e, "reason", None), ssl.SSLCertVerificationError):
            raise ConsoleUnreachableError(f"{method} {url}: the console's certificate is not trusted ({e.reason.verify_message}); pass --ca with the fleet CA (enroll/api/ca.crt) or set EDGEOPS_FLEET_CA") from e
        raise ConsoleUnreachableError(f"{method} {url}: console unreachable ({e}); check --fleet and that `edgeops fleet serve` runs") from e


def order_self_test(fleet_url: str, token: str | None, device_id: str, bundle_ref: str, runs: int | None, ca_file: str | None = None) -> dict:
    """POST the self-test order; the console's answer (``command_id``, ``device``, ``bundle``, ...)."""
    base = fleet_url.rstrip("/")
    body: dict = {"bundle": bundle_ref}
    if runs is not None:
        body["runs"] = runs
    return _call("POST", f"{base}/api/v1/devices/{urllib.parse.quote(device_id, safe='')}/self-test", token, body, ca_file=ca_file)


def wait_for_answer(fleet_url: str, token: str | None, device_id: str, command_id: str, wait_s: float, poll_s: float = 0.5, ca_file: str | None = None) -> dict | None:
    """The device's final event for ``command_id``, or None when none came within ``wait_s``.

    A console that is briefly unreachable while polling (a restart) is polled again until the
    deadline; HTTP errors are raised.
    """
    base = fleet_url.rstrip("/")
    query = urllib.parse.urlencode({"device": device_id, "command_id": command_id})
    deadline = time.monotonic() + wait_s
    while True:
        try:
            events = _call("GET", f"{base}/api/v1/events?{query}", token, ca_file=ca_file)
        except ConsoleUnreachableError:
            if time.monotonic() >= deadline:
                raise
            events = []
        final = [e for e in (events if isinstance(events, list) else events.get("events", [])) if e.get("kind") in FINAL_EVENTS]
        if final:
            return final[0]  # newest first; a command has one answer
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_s)


def report_from_event(report: HilReport, event: dict, latency_factor: float = 1.0, sha256: str | None = None) -> HilReport:
    """Checks and figures of one answer event (see module doc), added to ``report``.

    ``sha256`` is the signed target's hash the console ordered (named in the integrity check).
    """
    kind = event.get("kind")
    detail = event.get("detail") or ""
    if kind in _REFUSALS:
        report.checks.append(Check(_REFUSALS[kind], False, detail=f"{kind}: {detail}"))
        return report
    try:
        figures = json.loads(detail) if detail.startswith("{") else {}
    except ValueError:
        figures = {}
    gates = event.get("gates") or []
    if not gates:
        # the self-test could not run at all (e.g. the stored version did not verify)
        report.checks.append(Check("self_test", False, detail=f"{kind}: {detail}"))
        report.figures.update({k: v for k, v in figures.items() if k != "command"})
        return report
    target = event.get("target") or {}
    what = f"{target.get('name')}@{target.get('version')}" if target.get("name") else "the bundle"
    signed = f" matches the signed target sha256 {sha256[:16]}..." if sha256 else " matches its signed target"
    report.checks.append(Check("bundle_integrity", True, detail=f"{what} downloaded by the device, TUF-verified, and{signed}"))
    per_gate = float(figures.get("self_test_s") or 0.0) / len(gates)
    for g in gates:
        report.checks.append(Check(f"self_test.{g['gate']}", bool(g["passed"]), g.get("measured"), g.get("threshold"), g.get("detail", ""), seconds=per_gate))
    p50, p95, p99, budget = (figures.get(k) for k in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "latency_budget_p95_ms"))
    if p95 is not None and budget is not None:
        limit = budget * latency_factor
        runs = figures.get("timed_runs", figures.get("runs"))
        report.checks.append(Check("latency_p95_budget", p95 <= limit, round(p95, 3), round(limit, 3), f"p50 {p50} ms, p99 {p99} ms over {runs} runs on the device"))
    report.figures.update({k: v for k, v in figures.items() if k not in ("command", "passed")})
    return report


def run_remote(
    bundle_ref: str,
    device_id: str,
    fleet_url: str,
    token: str | None,
    runs: int | None,
    wait_s: float = 300.0,
    latency_factor: float = 1.0,
    progress: Callable[[str], None] | None = None,
    ca_file: str | None = None,
) -> HilReport:
    """Order a self-test of ``bundle_ref`` (NAME@VERSION) on ``device_id`` and collect the result.

    Raises FleetError when the console refuses the order (unknown device or bundle, device
    offline: the console's message says which) or cannot be reached; a device that does not
    answer within ``wait_s`` is a failed ``device_answered`` check.
    """
    t0 = time.monotonic()
    order = order_self_test(fleet_url, token, device_id, bundle_ref, runs, ca_file=ca_file)
    command_id = order["command_id"]
    if progress:
        progress(f"self-test of {order.get('bundle', bundle_ref)} ordered on {device_id} (command {command_id}); waiting up to {wait_s:.0f}s for the device")
    report = HilReport(bundle=order.get("bundle", bundle_ref), target=f"device:{device_id}")
    sha256 = (order.get("target") or {}).get("sha256")
    report.figures.update({"device": device_id, "command_id": command_id, "target_sha256": sha256})
    event = wait_for_answer(fleet_url, token, device_id, command_id, wait_s, ca_file=ca_file)
    if event is None:
        report.checks.append(Check("device_answered", False, detail=f"no self-test result from {device_id} within {wait_s:.0f}s (command {command_id}); is the agent running and connected?"))
        return report
    report_from_event(report, event, latency_factor, sha256)
    report.figures["wall_s"] = round(time.monotonic() - t0, 3)
    return report
