"""`edgeops profiles list|show`: the hardware profiles a model can be built for."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from edgeops.profiles import list_profiles, load_profile


@click.group()
def profiles() -> None:
    """List and show hardware profiles (built-in names or your own .toml file)."""


@profiles.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON for machines")
def list_cmd(as_json: bool) -> None:
    """List the built-in hardware profiles."""
    items = list_profiles()
    if as_json:
        click.echo(json.dumps([{"name": p.name, "arch": p.device.arch, "runtime": p.runtime.name, "quantization": p.quantization.scheme, "latency_p95_ms": p.budgets.latency_p95_ms, "description": p.description} for p in items], indent=2))
        return
    table = Table(title="hardware profiles")
    for col in ("name", "arch", "runtime", "providers", "quantization", "p95 budget", "max size"):
        table.add_column(col)
    for p in items:
        table.add_row(p.name, p.device.arch, p.runtime.name, ",".join(p.runtime.providers), p.quantization.scheme, f"{p.budgets.latency_p95_ms:g} ms", f"{p.budgets.max_bundle_mb:g} MB")
    Console().print(table)


@profiles.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="print JSON for machines")
def show_cmd(name: str, as_json: bool) -> None:
    """Show one profile: NAME is a built-in name or a path to a .toml file."""
    p = load_profile(name)
    doc = p.to_dict()
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    console = Console()
    console.print(f"[bold]{p.name}[/bold]  {p.description}")
    console.print(f"file: {p.source}")
    for section in ("device", "runtime", "quantization", "budgets", "constraints"):
        table = Table(title=section, show_header=False)
        table.add_column("key")
        table.add_column("value")
        for k, v in doc[section].items():
            table.add_row(k, ", ".join(map(str, v)) if isinstance(v, list) else str(v))
        console.print(table)
