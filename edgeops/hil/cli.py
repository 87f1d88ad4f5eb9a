"""`edgeops hil run`: hardware-in-loop checks of a bundle for CI, with JUnit XML out."""

from __future__ import annotations

import json
import os

import click
from rich.console import Console
from rich.table import Table

from edgeops.errors import HilFailedError
from edgeops.protocol import MAX_SELF_TEST_RUNS


@click.group()
def hil() -> None:
    """Hardware-in-loop: self-test and benchmark a bundle on a device or on this machine."""


@hil.command("run")
@click.argument("bundle")
@click.option("--local", "local", is_flag=True, help="run on this machine (BUNDLE is a bundle file)")
@click.option("--device", "device_id", help="device id to run on, through the console (BUNDLE is NAME@VERSION as published)")
@click.option("--fleet", "fleet_url", envvar="EDGEOPS_FLEET_URL", help="console URL, e.g. http://console:8080 [env EDGEOPS_FLEET_URL]")
@click.option("--token", envvar="EDGEOPS_FLEET_TOKEN", help="console API token [env EDGEOPS_FLEET_TOKEN]")
@click.option("--ca", "ca_file", envvar="EDGEOPS_FLEET_CA", type=click.Path(exists=True, dir_okay=False), help="CA certificate of an https console (the fleet CA: enroll/api/ca.crt) [env EDGEOPS_FLEET_CA]")
@click.option("--runs", default=100, show_default=True, type=click.IntRange(1, 100000), help=f"timed inferences for the latency figures (at most {MAX_SELF_TEST_RUNS} with --device)")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 256), help="intra-op threads (local runs; a device uses its profile's)")
@click.option("--latency-factor", default=1.0, show_default=True, type=click.FloatRange(min=0.01), help="pass when p95 <= budget x factor")
@click.option("--wait", "wait_s", default=300.0, show_default=True, type=click.FloatRange(min=1), help="seconds to wait for the device's answer (--device)")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), help="write JUnit XML here")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write the JSON report here ('-' for stdout)")
def run_cmd(bundle, local, device_id, fleet_url, token, ca_file, runs, threads, latency_factor, wait_s, junit_path, json_path) -> None:
    """Run BUNDLE's self-test and benchmark; exit 10 when any check fails."""
    if local == bool(device_id):
        raise click.UsageError("give exactly one of --local or --device ID (with --fleet URL)")
    if local:
        if not os.path.isfile(bundle):
            raise click.UsageError(f"--local needs a bundle file; {bundle!r} does not exist")
        from edgeops.hil.local import run_local

        report = run_local(bundle, runs=runs, threads=threads, latency_factor=latency_factor)
    else:
        if not fleet_url:
            raise click.UsageError("--device needs --fleet URL (or EDGEOPS_FLEET_URL)")
        name, sep, version = bundle.partition("@")
        if not (name and sep and version) or os.path.isfile(bundle):
            raise click.UsageError(f"--device needs BUNDLE as NAME@VERSION as published to the console (e.g. detector@1.4.0), not {bundle!r}")
        if runs > MAX_SELF_TEST_RUNS:
            raise click.UsageError(f"--runs {runs}: a device self-test takes at most {MAX_SELF_TEST_RUNS} runs")
        from edgeops.hil.remote import run_remote

        report = run_remote(bundle, device_id, fleet_url, token, runs, wait_s=wait_s, latency_factor=latency_factor, progress=lambda m: click.echo(m, err=True), ca_file=ca_file)
    if junit_path:
        report.write_junit(junit_path)
    if json_path == "-":
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        if json_path:
            report.write_json(json_path)
        _print(report)
    if not report.passed:
        failed = ", ".join(c.name for c in report.checks if not c.passed) or "no checks ran"
        raise HilFailedError(f"{report.bundle} on {report.target}: failed checks: {failed}")


def _print(report) -> None:
    table = Table(title=f"hil {report.bundle} on {report.target}")
    for col in ("check", "result", "measured", "threshold", "detail"):
        table.add_column(col)
    for c in report.checks:
        table.add_row(c.name, "[green]pass[/green]" if c.passed else "[red]FAIL[/red]", "" if c.measured is None else f"{c.measured:g}", "" if c.threshold is None else f"{c.threshold:g}", c.detail[:80])
    console = Console()
    console.print(table)
    console.print(", ".join(f"{k} {v}" for k, v in report.figures.items() if v is not None))
