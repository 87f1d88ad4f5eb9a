"""`edgeops inspect BUNDLE`: print a bundle's manifest, validation report and golden vectors."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from edgeops.bundle import GOLDEN_NAME, REPORT_NAME, read_bundle
from edgeops.golden import GoldenVectors


@click.command("inspect")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print manifest and report as JSON")
def inspect_bundle(bundle: str, as_json: bool) -> None:
    """Check a bundle's internal consistency and print what it holds."""
    contents = read_bundle(bundle)
    m = contents.manifest
    report = json.loads(contents.files[REPORT_NAME]) if REPORT_NAME in contents.files else None
    golden = GoldenVectors.from_json_bytes(contents.files[GOLDEN_NAME]) if GOLDEN_NAME in contents.files else None
    if as_json:
        click.echo(json.dumps({"manifest": m.to_dict(), "report": report, "golden_cases": len(golden.cases) if golden else 0}, indent=2, sort_keys=True))
        return
    console = Console()
    console.print(f"[bold]{m.name} {m.version}[/bold] (release {m.release}) for [cyan]{m.profile}[/cyan] on {m.runtime} [{', '.join(m.providers)}], quantization {m.quantization}")
    io_table = Table(title="inputs / outputs")
    for col in ("", "name", "dtype", "shape"):
        io_table.add_column(col)
    for kind, specs in (("in", m.inputs), ("out", m.outputs)):
        for s in specs:
            io_table.add_row(kind, s.name, s.dtype, str(s.shape))
    console.print(io_table)
    files = Table(title="files")
    files.add_column("path")
    files.add_column("size", justify="right")
    files.add_column("sha256")
    for path, e in m.files.items():
        files.add_row(path, f"{e.size:,}", e.sha256[:16] + "…")
    console.print(files)
    prov = m.provenance
    console.print(f"source {prov.source_format} sha256 {prov.source_model_sha256[:16]}…, git {prov.git_commit or '-'}")
    console.print("toolchain: " + ", ".join(f"{k} {v}" for k, v in sorted(prov.toolchain.items())))
    mon = m.monitoring
    if mon is None:
        console.print("drift reference: none (built without --validation or --calibration data)")
    else:
        tensors = ", ".join(f"{n} ({lay.channels} ch x {lay.bins} bins{f', {lay.classes} classes' if lay.classes else ''})" for n, lay in mon.layouts.items())
        console.print(f"drift reference: {mon.source} data, {mon.rows} rows: {tensors}")
    if golden:
        console.print(f"golden vectors: {len(golden.cases)} cases, outputs {', '.join(sorted(golden.tolerances))}")
    if report:
        console.print_json(json.dumps(report.get("summary", report)))
