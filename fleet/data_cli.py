"""``edgeops data``: the console's captured samples (issue 17; docs/monitoring.md).

``list|show|export|label|key`` read the console's own store (``capture/`` next to fleet.toml,
the index in its database, the capture private key), so they run where the console runs, with
``--config fleet.toml``. ``capture`` orders a policy through the console's REST API (admin).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from edgeops.fleet.cli import DEFAULT_CONFIG, _api_options, _client, _echo_json


def _store(config_path: str | None):
    from edgeops.fleet.capture import load_or_create_key
    from edgeops.fleet.capture_store import default_capture_dir
    from edgeops.fleet.config import load_config
    from edgeops.fleet.db import Database

    cfg = load_config(config_path or DEFAULT_CONFIG)
    db = Database.from_config(cfg)
    folder = default_capture_dir(cfg)
    from edgeops.fleet.capture_store import capture_table

    capture_table(db).metadata.create_all(db.engine)
    return db, folder, (lambda: load_or_create_key(folder, create=False))


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    from edgeops.fleet.rollouts.settings import parse_duration

    try:
        return float(text) if float(text) > 1e9 else time.time() - float(text)
    except ValueError:
        return time.time() - parse_duration(text, "since")


def _filters(fn):
    fn = click.option("--since", default=None, help="received in the last 90s/10m/24h/7d, or since a unix time")(fn)
    fn = click.option("--version", default=None, help="VERSION or NAME@VERSION of the model that served the sample")(fn)
    fn = click.option("--trigger", default=None, help="random, low_confidence, shadow_disagreement, drift_warn, drift_alert, nonfinite")(fn)
    fn = click.option("--device", default=None, help="only this device")(fn)
    fn = click.option("--tag", default=None, help="KEY=VALUE: only devices with this tag")(fn)
    fn = click.option("--labelled", is_flag=True, help="only samples with a label")(fn)
    fn = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="the console's fleet.toml [default: ./fleet.toml]")(fn)
    return fn


def _flt(since, version, trigger, device, tag, labelled):
    from edgeops.fleet.capture_store import SampleFilter

    return SampleFilter(since=_since(since), version=version, trigger=trigger, device=device, tag=tag, labelled=labelled)


@click.group()
def data() -> None:
    """Captured samples: list, show, label, export as build data; order capture."""


@data.command("list")
@_filters
@click.option("--limit", type=int, default=None)
@click.option("--json", "as_json", is_flag=True)
def list_cmd(since, version, trigger, device, tag, labelled, config_path, limit, as_json) -> None:
    """Stored samples matching the filters, oldest first."""
    from edgeops.fleet.capture_store import list_samples

    db, _, _ = _store(config_path)
    rows = list_samples(db, _flt(since, version, trigger, device, tag, labelled), limit=limit)
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["ts"]))
        label = "-" if r["label"] is None else r["label"]
        click.echo(f"{r['sample_id'][:16]}  {when}  {r['device_id']:<16} {r['model_name']}@{r['model_version']}  {r['trigger']:<20} label {label}  {r['size']} B")
    click.echo(f"{len(rows)} samples")


@data.command("show")
@click.argument("sample_id")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
@click.option("--json", "as_json", is_flag=True)
def show_cmd(sample_id, config_path, as_json) -> None:
    """One sample: its index row, its record and its tensors (opened with the capture key)."""
    from edgeops.fleet.capture_store import find_sample, read_sample, sample_meta

    db, folder, key = _store(config_path)
    row = find_sample(db, sample_id)
    arrays = read_sample(folder, key(), row["sample_id"])
    out = {**row, "meta": sample_meta(arrays), "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "min": float(v.min()) if v.size else None, "max": float(v.max()) if v.size else None} for k, v in arrays.items() if k != "meta"}}
    _echo_json(out) if as_json else click.echo(json.dumps(out, indent=2, sort_keys=True, default=str))


@data.command("label")
@click.argument("csv_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
def label_cmd(csv_path, config_path) -> None:
    """Import labels from a CSV of sample_id,label rows (all or nothing)."""
    from edgeops.fleet.capture_store import import_labels

    db, _, _ = _store(config_path)
    click.echo(f"{import_labels(db, Path(csv_path))} samples labelled")


@data.command("export")
@_filters
@click.option("-o", "--output", required=True, type=click.Path(), help="data.npz (one array per input + labels) or a folder (one feed .npz per sample)")
@click.option("--labels/--no-labels", "with_labels", default=None, help="require (or leave out) labels [default: when every sample has one]")
@click.option("--json", "as_json", is_flag=True)
def export_cmd(since, version, trigger, device, tag, labelled, config_path, output, with_labels, as_json) -> None:
    """Write samples as `edgeops build --calibration/--validation` reads them; prints the sha256
    the build's manifest will record for this data."""
    from edgeops.fleet.capture_store import export_samples

    db, folder, key = _store(config_path)
    e = export_samples(db, folder, key(), Path(output), _flt(since, version, trigger, device, tag, labelled), with_labels)
    doc = {"path": str(e.path), "sha256": e.sha256, "samples": e.samples, "rows": e.rows, "labels": e.labels, "sample_ids": e.sample_ids}
    if as_json:
        _echo_json(doc)
        return
    click.echo(f"wrote {e.path}: {e.samples} samples, {e.rows} rows, labels {'yes' if e.labels else 'no'}")
    click.echo(f"sha256 {e.sha256}")
    click.echo("a bundle built with --validation/--calibration of this data records this sha256 in its manifest (edgeops inspect BUNDLE)")


@data.command("key")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None)
def key_cmd(config_path) -> None:
    """Print the console's capture public key (creates the key pair when missing), for agent
    configs' capture.public_key."""
    from edgeops.fleet.capture import load_or_create_key, public_key_b64
    from edgeops.fleet.capture_store import default_capture_dir
    from edgeops.fleet.config import load_config

    cfg = load_config(config_path or DEFAULT_CONFIG)
    click.echo(public_key_b64(load_or_create_key(default_capture_dir(cfg))))


@data.command("capture")
@_api_options
@click.option("--device", default=None, help="one device")
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE (repeatable): every device with these tags (a cohort)")
@click.option("--profile", default=None, help="every device of this profile (with --tag: both)")
@click.option("--off", is_flag=True, help="turn capture off")
@click.option("--duration", default="24h", show_default=True, help="how long the policy lasts (90s, 10m, 24h, 7d)")
@click.option("--random-share", type=float, default=None, help="capture this share of all served inferences")
@click.option("--min-confidence", type=float, default=None, help="capture when the top-1 probability is below this")
@click.option("--shadow-disagreement", is_flag=True, help="capture when the shadow model (probation) picks another class")
@click.option("--drift", type=click.Choice(["warn", "alert"]), default=None, help="capture while the device's interval drifts at this level or above")
@click.option("--nonfinite", is_flag=True, help="capture outputs with NaN/Inf")
@click.option("--sample-rate", type=float, default=None, help="share of triggering inferences kept (default 1)")
@click.option("--min-interval", type=float, default=None, help="at most one sample this often (seconds)")
@click.option("--budget", type=int, default=None, help="sealed bytes per device per UTC day (default 64 MiB)")
@click.option("--json", "as_json", is_flag=True)
def capture_cmd(url, token, config_path, device, tags, profile, off, duration, random_share, min_confidence, shadow_disagreement, drift, nonfinite, sample_rate, min_interval, budget, as_json) -> None:
    """Order a signed capture policy on a device or a cohort through the console (admin)."""
    from edgeops.fleet.rollouts.settings import parse_duration

    tag_map = {}
    for t in tags:
        k, sep, v = t.partition("=")
        if not sep:
            raise click.BadParameter(f"{t!r}: expected KEY=VALUE", param_hint="--tag")
        tag_map[k] = v
    body = {"device": device, "tags": tag_map or None, "profile": profile, "enabled": not off, "duration_s": parse_duration(duration, "duration"),
            "random_share": random_share, "min_confidence": min_confidence, "shadow_disagreement": shadow_disagreement or None, "drift": drift,
            "nonfinite": nonfinite or None, "sample_rate": sample_rate, "min_interval_s": min_interval, "budget_bytes_per_day": budget}
    body = {k: v for k, v in body.items() if v is not None}
    r = _client(url, token, config_path).request("POST", "/api/v1/capture", body=body)
    if as_json:
        _echo_json(r)
        return
    for d, info in sorted(r["devices"].items()):
        click.echo(f"{d}: command {info['command_id']} {'published' if info['acknowledged'] else 'NOT acknowledged by the broker'}")
    click.echo(f"policy {r['policy_id']} {'off' if off else 'on'} for {len(r['devices'])} device(s)")
