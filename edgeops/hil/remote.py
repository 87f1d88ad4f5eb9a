"""`edgeops hil run --device ID --fleet URL`: ask a device's agent, through the console, to
self-test and benchmark a bundle without activating it, and wait for its report.

The console's REST API sends the device a signed ``self_test`` command for the bundle's TUF
target; the agent fetches and verifies the bundle, runs the same self-test as before an
activation, and answers with an event carrying every gate and its figures.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from edgeops.errors import FleetError
from edgeops.hil.report import Check, HilReport


def _call(method: str, url: str, token: str | None, body: dict | None = None, timeout: float = 30.0) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise FleetError(f"{method} {url}: HTTP {e.code}: {e.read()[:300].decode(errors='replace')}") from e
    except (urllib.error.URLError, OSError) as e:
        raise FleetError(f"{method} {url}: console unreachable ({e}); check --fleet and that `edgeops fleet serve` runs") from e


def run_remote(bundle_ref: str, device_id: str, fleet_url: str, token: str | None, runs: int, wait_s: float = 300.0) -> HilReport:
    """Order a self-test of ``bundle_ref`` (NAME@VERSION) on ``device_id`` and collect the result."""
    base = fleet_url.rstrip("/")
    started = _call("POST", f"{base}/api/v1/devices/{device_id}/self-test", token, {"bundle": bundle_ref, "runs": runs})
    command_id = started["command_id"]
    report = HilReport(bundle=bundle_ref, target=f"device:{device_id}")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        events = _call("GET", f"{base}/api/v1/events?device={device_id}&command_id={command_id}", token).get("events", [])
        final = [e for e in events if e.get("kind") in ("self_test_passed", "self_test_failed", "bundle_rejected", "command_rejected", "install_failed")]
        if final:
            event = final[-1]
            if event["kind"] in ("bundle_rejected", "command_rejected", "install_failed"):
                report.checks.append(Check("bundle_integrity", False, detail=event.get("detail", event["kind"])))
                return report
            report.checks.append(Check("bundle_integrity", True, detail="TUF-verified on the device"))
            for gate in event.get("gates", []):
                report.checks.append(Check(f"self_test.{gate['gate']}", gate["passed"], gate.get("measured"), gate.get("threshold"), gate.get("detail", "")))
            try:
                report.figures = json.loads(event.get("detail") or "{}").get("figures", {})
            except ValueError:
                report.figures = {"detail": event.get("detail")}
            return report
        time.sleep(1.0)
    report.checks.append(Check("device_answered", False, detail=f"no self-test result from {device_id} within {wait_s:.0f}s"))
    return report
