"""How the demo tells its story: rich step lines as it goes, a final table, the JSON summary.

With ``--json`` the story goes to stderr so stdout holds only the summary document.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path


class Narrator:
    """Step lines (``▶ step`` ... ``✓ step  1.2s``), story lines, and the timings of every step."""

    def __init__(self, stderr: bool = False, quiet: bool = False):
        from rich.console import Console

        self.console = Console(stderr=stderr, highlight=False, quiet=quiet)
        self.timings: dict[str, float] = {}
        self._t0 = time.monotonic()

    @contextlib.contextmanager
    def step(self, key: str, title: str):
        """Time one step under ``key``; prints its title, then ✓ or ✗ with the seconds taken."""
        self.console.print(f"[bold cyan]▶[/] [bold]{title}[/]")
        t0 = time.monotonic()
        try:
            yield
        except BaseException:
            self.timings[key] = round(time.monotonic() - t0, 2)
            self.console.print(f"  [bold red]✗[/] {title} [dim]({self.timings[key]:.1f}s)[/]")
            raise
        self.timings[key] = round(time.monotonic() - t0, 2)
        self.console.print(f"  [green]✓[/] [dim]{self.timings[key]:.1f}s[/]")

    def say(self, text: str, style: str = "") -> None:
        """One story line under the current step."""
        elapsed = time.monotonic() - self._t0
        self.console.print(f"  [dim]{elapsed:6.1f}s[/] " + (f"[{style}]{text}[/]" if style else text))

    def total(self) -> float:
        """Seconds since the narrator was created."""
        return round(time.monotonic() - self._t0, 2)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_tables(narrator: Narrator, summary: dict) -> None:
    """The final tables: versions on devices, rollouts and waves, gates, timings, verdict."""
    from rich.table import Table

    c = narrator.console
    c.print()
    t = Table(title="Devices at the end", title_justify="left")
    t.add_column("version")
    t.add_column("devices", justify="right")
    for v, n in (summary.get("versions_at_end") or {}).items():
        t.add_row(v, str(n))
    c.print(t)

    t = Table(title="Rollouts", title_justify="left")
    for col in ("rollout", "bundle", "status", "wave", "%", "devices", "wave status", "by status"):
        t.add_column(col)
    for key in ("v1_rollout", "v2_rollout"):
        r = summary.get(key)
        if not r:
            continue
        for w in r.get("waves", []):
            t.add_row(r["id"] if w["wave"] == 1 else "", r["bundle"] if w["wave"] == 1 else "", r["status"] if w["wave"] == 1 else "", str(w["wave"]), _fmt(w["percent"]), str(w["devices"]), w["status"], ", ".join(f"{k} {n}" for k, n in w["by_status"].items()))
    c.print(t)

    t = Table(title="Gates (measured vs threshold)", title_justify="left")
    for col in ("where", "gate", "outcome", "measured", "threshold", "detail"):
        t.add_column(col)
    for g in summary.get("gates", []):
        outcome = g.get("outcome", "")
        style = "red" if outcome == "fail" else ("green" if outcome == "pass" else "")
        t.add_row(g["where"], g["gate"], f"[{style}]{outcome}[/]" if style else outcome, _fmt(g.get("measured")), _fmt(g.get("threshold")), (g.get("detail") or "")[:40])
    c.print(t)

    loop_rows = _loop_rows(summary)
    if loop_rows:
        t = Table(title="Monitoring loop (drift -> capture -> export -> v3)", title_justify="left")
        t.add_column("step")
        t.add_column("result")
        for step, result in loop_rows:
            t.add_row(step, result)
        c.print(t)

    t = Table(title="Time per step", title_justify="left")
    t.add_column("step")
    t.add_column("seconds", justify="right")
    for k, v in (summary.get("timings") or {}).items():
        t.add_row(k, f"{v:.1f}")
    c.print(t)

    if summary.get("passed"):
        c.print(f"[bold green]PASSED[/] every step behaved as expected in {summary['timings'].get('total', 0):.0f}s")
    else:
        c.print("[bold red]FAILED[/] " + "; ".join(summary.get("failures") or ["see above"]))


def _loop_rows(summary: dict) -> list[tuple[str, str]]:
    """The monitoring loop's results as (step, result) rows: drift, capture, export, v3."""
    rows = []
    d = summary.get("drift")
    if d:
        rows.append(("drift", f"{d['cohort']} on {d['bundle']}: {d['level']}, PSI {_fmt(d['psi'])}, KS p {_fmt(d['p_value'])}, {d['samples']} inferences from {d['devices']} devices"))
    cap = summary.get("capture")
    if cap:
        rows.append(("capture", f"policy {cap['policy_id']} on {cap['devices_ordered']} devices: {cap['captured_on_devices']} frames captured, {cap['stored']} stored"))
    e = summary.get("export")
    if e:
        rows.append(("export", f"{e['samples']} frames{' with labels' if e['labels'] else ''}, sha256 {e['sha256']}"))
    v3 = summary.get("v3")
    if v3:
        rows.append(("build v3", f"{v3['version']}: gates {'passed' if v3['gates_passed'] else 'FAILED'}, top-1 agreement {_fmt(v3['top1_agreement'])}, accuracy on the field frames {_fmt(v3.get('accuracy_on_field_frames'))}, provenance.validation_sha256 {'= export' if v3['validation_is_export'] else '≠ export'}"))
    return rows


def write_summary(path: Path, summary: dict) -> Path:
    """Write the summary JSON (sorted keys, trailing newline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    return path
