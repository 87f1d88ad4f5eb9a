"""`edgeops demo`: the whole story in one command (see :mod:`edgeops.demo`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from edgeops.errors import EdgeopsError


class DemoFailedError(EdgeopsError):
    """The demo ran, but a step did not behave as expected (the summary lists what)."""

    exit_code = 1


def _setup_logging(workdir: Path) -> Path:
    """Everything the components log goes to WORKDIR/demo.log; the terminal gets the story only."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "demo.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(threadName)s: %(message)s"))
    # asyncio: the embedded broker's event loop reports client errors there (e.g. a client that
    # disconnects mid-handshake); they belong in the log, not in the story.
    for name in ("edgeops", "amqtt", "transitions", "aiohttp", "asyncio"):
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.setLevel(logging.INFO if name == "edgeops" else logging.WARNING)
        lg.propagate = False
    return path


@click.command()
@click.option("--devices", default=50, show_default=True, type=click.IntRange(3, 2000), help="simulated devices, each running the real agent")
@click.option("--broker", metavar="URL", help="use this MQTT broker (mqtt://host:port) instead of starting an embedded one")
@click.option("--workdir", type=click.Path(file_okay=False), help="folder for keys, repository, bundles, database and device data (default: a new temporary folder)")
@click.option("--profile", default="auto", show_default=True, help="hardware profile to build for: an onnxruntime profile this CPU satisfies; auto: x86_64-avx512-vnni with VNNI, else x86_64-avx2")
@click.option("--summary", "summary_path", type=click.Path(dir_okay=False), help="where to write the JSON summary (default: WORKDIR/demo-summary.json)")
@click.option("--keep-running", is_flag=True, help="leave broker, console API and fleet up after the story until Ctrl-C")
@click.option("--json", "as_json", is_flag=True, help="print the summary JSON on stdout (the story goes to stderr)")
@click.option("--seed", default=0, show_default=True, type=int, help="seed for training, cameras and device randomness")
def demo(devices, broker, workdir, profile, summary_path, keep_running, as_json, seed) -> None:
    """Build, sign, roll out to a simulated fleet, and watch a bad model halt and roll back.

    Trains a small CNN, builds v1 with the packager, publishes it to a new TUF repository,
    starts an MQTT broker, the fleet console and DEVICES real agents fed with drifting camera
    frames, rolls v1 out in waves, then rolls out a v2 whose graph gives NaN on frames brighter
    than the lab data: wave 1 rolls back by itself, the console halts the rollout, and no other
    device ever gets v2. Then the console's drift scores find the site whose cameras drift
    brightest, a signed capture policy brings its frames back, and v3 is built with them as its
    validation data. Exit 0 only when every step behaved as expected.
    """
    import tempfile

    from edgeops.demo.report import Narrator, print_tables, write_summary
    from edgeops.demo.story import Demo, DemoOptions
    from edgeops.demo.host import choose_profile

    profile, why = choose_profile(profile)
    wd = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="edgeops-demo-"))
    log_path = _setup_logging(wd)
    narrator = Narrator(stderr=as_json)
    narrator.console.print(f"[bold]edgeops demo[/]: {devices} devices, profile {profile} ({why}), workdir {wd} (logs: {log_path.name})")
    options = DemoOptions(devices=devices, broker=broker, workdir=wd, profile=profile, keep_running=keep_running, seed=seed)
    story = Demo(options, narrator)
    try:
        summary = story.run()
        out = write_summary(Path(summary_path) if summary_path else wd / "demo-summary.json", summary)
        print_tables(narrator, summary)
        narrator.console.print(f"summary: {out}")
        if as_json:
            click.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))
    finally:
        story.hold()  # --keep-running: until Ctrl-C; then (or at once) stop everything
    if not summary.get("passed"):
        raise DemoFailedError("the demo did not behave as expected: " + "; ".join(summary.get("failures") or ["unknown"]) + f" (logs: {log_path})")
