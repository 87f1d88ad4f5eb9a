"""`edgeops fleet ...` and `edgeops rollout ...`.

``fleet init|serve|enroll`` work on the console host (files, database); ``fleet devices`` and
every ``rollout`` command talk to the running console's REST API, so they work from any
machine and against any replica. The API is found through ``--url``/``--token``, the
``EDGEOPS_FLEET_URL``/``EDGEOPS_FLEET_TOKEN`` environment, or ``--config fleet.toml``.
Heavy imports (sqlalchemy, paho, aiohttp) happen inside the commands.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import click

from edgeops.errors import ConfigError

DEFAULT_CONFIG = "fleet.toml"


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _ts(value) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if value else "-"


def _remember_ca(ctx, param, value):
    ctx.meta["edgeops_api_ca"] = value
    return value


def _api_options(fn):
    fn = click.option("--ca", "ca_file", envvar="EDGEOPS_FLEET_CA", type=click.Path(dir_okay=False), default=None, expose_value=False, callback=_remember_ca, help="CA certificate to verify an https console with [env EDGEOPS_FLEET_CA; default: [api] ca_file of --config, else the system CAs]")(fn)
    fn = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="fleet.toml to read the API address, token and CA from")(fn)
    fn = click.option("--token", envvar="EDGEOPS_FLEET_TOKEN", default=None, help="API bearer token [env EDGEOPS_FLEET_TOKEN]")(fn)
    fn = click.option("--url", envvar="EDGEOPS_FLEET_URL", default=None, help="console URL, e.g. https://console.example.org:8780 [env EDGEOPS_FLEET_URL]")(fn)
    return fn


def _client(url, token, config_path):
    from edgeops.fleet.client import FleetClient

    if not url and not config_path and Path(DEFAULT_CONFIG).exists():
        config_path = DEFAULT_CONFIG
    ca_file = click.get_current_context().meta.get("edgeops_api_ca")
    return FleetClient.from_options(url, token, config_path, ca_file)


# --------------------------------------------------------------------------- fleet
@click.group()
def fleet() -> None:
    """The fleet console: serve, enroll devices, list them."""


@fleet.command("init")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=".", show_default=True, help="folder for fleet.toml, keys/, repo/, enroll/")
@click.option("--broker-url", default="mqtt://127.0.0.1:1883", show_default=True)
@click.option("--database-url", default="sqlite:///fleet.db", show_default=True, help="or postgresql+psycopg://user@host/db")
@click.option("--api-bind", default="127.0.0.1:8780", show_default=True)
@click.option("--no-keys", is_flag=True, help="do not create keys/ and repo/ (use existing ones; edit fleet.toml)")
@click.option("--root-keys", default=3, show_default=True, type=click.IntRange(1, 16), help="number of TUF root keys (kept in root-keys/, apart from the online keys)")
@click.option("--root-threshold", default=2, show_default=True, type=click.IntRange(1, 16), help="root signatures needed")
@click.option("--broker-group", default=None, help="group the broker runs as (reads mosquitto.passwd and its key); default: the mosquitto user's group")
@click.option("--force", is_flag=True, help="overwrite an existing fleet.toml")
@click.option("--json", "as_json", is_flag=True)
def init_cmd(directory, broker_url, database_url, api_bind, no_keys, root_keys, root_threshold, broker_group, force, as_json) -> None:
    """Write fleet.toml (with a fresh API token and console broker password), keys and a TUF repository.

    Keys: keys/ holds the online keys (targets, snapshot, timestamp, command) and every public
    key; root-keys/ the root private keys (3, threshold 2 by default): move it to offline media
    and bring it back to that path only to sign a new root (`edgeops keys rotate`).
    """
    from edgeops.fleet.broker_files import broker_access
    from edgeops.fleet.config import config_from_dict, render_toml
    from edgeops.fleet.enroll import set_console_password
    from edgeops.trust.fsutil import atomic_write

    if root_threshold > root_keys:
        raise ConfigError(f"--root-threshold {root_threshold} is more than --root-keys {root_keys}")

    base = Path(directory)
    base.mkdir(parents=True, exist_ok=True)
    path = base / DEFAULT_CONFIG
    if path.exists() and not force:
        raise ConfigError(f"{path} exists already; pass --force to overwrite it")
    token = secrets.token_urlsafe(32)
    console_password = secrets.token_urlsafe(24)
    data = {
        # no client_id: it is the username, which the generated broker config forces (broker_identity.py)
        "broker": {"url": broker_url, "username": "edgeops-console", "password": console_password},
        "database": {"url": database_url},
        "repository": {"dir": "repo", "keys_dir": "keys"},
        "api": {"bind": api_bind, "tokens": [token]},
        "rollouts": {"reconcile_interval_s": 2.0, "offline_timeout_s": 300.0},
        "enroll": {"dir": "enroll", "password_file": "enroll/mosquitto.passwd", "acl_file": "enroll/mosquitto.acl", "ca_dir": "enroll/ca", "broker_group": broker_group},
    }
    config = config_from_dict({**data, "base_dir": str(base.resolve())}, source=str(path))
    access = broker_access(config)  # a bad --broker-group is refused before anything is written
    # holds secrets: 0600 even where --force replaces a file with a looser mode
    atomic_write(path, ("# edgeops fleet console configuration (edgeops fleet init)\n" + render_toml(data)).encode(), mode=0o600)
    made = [str(path)]
    if not no_keys:
        from edgeops.trust.keys import Keyring, passphrase_from_env
        from edgeops.trust.repository import Repository

        keys = config.path("keys")
        if not (keys / "keyring.json").exists():
            Keyring.create(keys, root_keys=root_keys, root_threshold=root_threshold, passphrase=passphrase_from_env(), root_private_dir="../root-keys")
            made += [str(keys), str(config.path("root-keys"))]
        repo = config.path("repo")
        if not (repo / "metadata" / "timestamp.json").exists():
            Repository.init(repo, Keyring.load(keys, passphrase_from_env()))
            made.append(str(repo))
    notes = set_console_password(config, console_password, access)
    made.append(str(config.path(config.enroll.dir)))
    broker_conf = config.path(config.enroll.dir) / "broker"
    if as_json:
        _echo_json({"config": str(path), "created": made, "api_url": f"http://{api_bind}", "broker_dir": str(broker_conf), "notes": notes})
        return
    click.echo(f"wrote {', '.join(made)}")
    if str(config.path("root-keys")) in made:
        click.echo(f"keys: move {config.path('root-keys')} (the {root_keys} root keys, {root_threshold} needed to sign) to offline media; keys/ holds the online ones")
    click.echo(f"broker: add `include_dir {broker_conf.resolve()}` to mosquitto.conf (ACL, password file, listener binding client ids to users)")
    for note in notes:
        click.echo(f"broker: {note}")
    click.echo(f"next: edgeops fleet serve --config {path}")


@fleet.command("serve")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=DEFAULT_CONFIG, show_default=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
def serve_cmd(config_path, log_level) -> None:
    """Run the console: ingest, repository server, reconciler, REST API, /metrics."""
    import logging
    import signal
    import threading

    from edgeops.fleet.config import load_config
    from edgeops.fleet.console import FleetConsole

    logging.basicConfig(level=getattr(logging, log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(config_path)
    console = FleetConsole(config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    console.start()
    click.echo(f"edgeops fleet console: api {console.api_url}, broker {config.broker.url} (MQTT {console.mqtt.protocol}), database {console.db.dialect}", err=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        console.stop()


@fleet.command("enroll")
@click.argument("device_id")
@click.option("--tags", default="", help="k=v,k2=v2")
@click.option("--profile", default=None, help="hardware profile name")
@click.option("--method", type=click.Choice(["password", "cert"]), default="password", show_default=True, help="broker authentication")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=DEFAULT_CONFIG, show_default=True)
@click.option("--no-register", is_flag=True, help="write credentials only; do not add the device to the database")
@click.option("--broker-group", default=None, help="group the broker runs as (default: fleet.toml [enroll] broker_group, else the mosquitto user's group)")
@click.option("--json", "as_json", is_flag=True)
def enroll_cmd(device_id, tags, profile, method, config_path, no_register, broker_group, as_json) -> None:
    """Create DEVICE_ID's broker credentials, update the ACL, write its agent.toml, register it."""
    from edgeops.fleet.broker_files import broker_access
    from edgeops.fleet.config import load_config
    from edgeops.fleet.enroll import enroll_device, parse_tags

    config = load_config(config_path)
    result = enroll_device(config, device_id, parse_tags(tags), profile, method, register=not no_register, access=broker_access(config, broker_group))
    if as_json:
        _echo_json(result.to_dict())
        return
    click.echo(f"enrolled {device_id} ({method}); agent config: {result.agent_toml}")
    for note in result.notes:
        click.echo(f"broker: {note}")
    click.echo("reload the broker so it reads the new password file / ACL (e.g. kill -HUP $(pidof mosquitto))")


@fleet.command("console-user")
@click.argument("name")
@click.option("--method", type=click.Choice(["password", "cert"]), default="password", show_default=True, help="broker authentication")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=DEFAULT_CONFIG, show_default=True)
@click.option("--broker-group", default=None, help="group the broker runs as (default: fleet.toml [enroll] broker_group, else the mosquitto user's group)")
@click.option("--json", "as_json", is_flag=True)
def console_user_cmd(name, method, config_path, broker_group, as_json) -> None:
    """A broker user NAME for one more console replica (the broker binds client ids to users, so
    replicas sharing one user would keep taking each other's session).

    Writes enroll/consoles/NAME/broker.toml (0600): put its [broker] lines into that replica's
    fleet.toml, then reload the broker.
    """
    from edgeops.fleet.broker_files import broker_access
    from edgeops.fleet.config import load_config
    from edgeops.fleet.enroll import add_console_user

    config = load_config(config_path)
    result = add_console_user(config, name, method, broker_access(config, broker_group))
    if as_json:
        _echo_json(result)
        return
    click.echo(f"console user {name} ({method}): copy the [broker] lines of {result['broker_toml']} into that replica's fleet.toml")
    for note in result["notes"]:
        click.echo(f"broker: {note}")
    click.echo("reload the broker so it reads the new password file / ACL (e.g. kill -HUP $(pidof mosquitto))")


@fleet.command("broker-cert")
@click.argument("names", nargs=-1, required=True)
@click.option("--port", default=8883, show_default=True, type=click.IntRange(1, 65535), help="TLS listener port")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=DEFAULT_CONFIG, show_default=True)
@click.option("--update-config/--no-update-config", default=True, show_default=True, help="point fleet.toml's [broker] (console) and [enroll] device_broker_url at the TLS listener")
@click.option("--broker-group", default=None, help="group the broker runs as (reads server.key); default: fleet.toml [enroll] broker_group, else the mosquitto user's group")
@click.option("--json", "as_json", is_flag=True)
def broker_cert_cmd(names, port, config_path, update_config, broker_group, as_json) -> None:
    """Issue the broker's TLS certificate for NAMES (host names / IPs devices use) and the console's client certificate.

    Writes enroll/broker/tls-listener.conf to include in mosquitto.conf: a TLS listener where
    every client (devices enrolled with --method cert, and the console) authenticates with a
    certificate from the fleet CA and the certificate's name is its ACL user.
    """
    from edgeops.fleet.broker_files import broker_access, password_listener_port
    from edgeops.fleet.config import load_config
    from edgeops.fleet.enroll import write_broker_tls

    config = load_config(config_path)
    result = write_broker_tls(config, list(names), port, broker_access(config, broker_group))
    if update_config:
        import tomllib

        from edgeops.fleet.config import config_from_dict, render_toml
        from edgeops.trust.fsutil import atomic_write

        original = Path(config_path).read_bytes()
        raw = tomllib.loads(original.decode("utf-8"))
        raw.setdefault("broker", {}).update(url=result["device_broker_url"], ca_file=result["ca_cert"], cert_file=result["console_cert"], key_file=result["console_key"])
        enroll = raw.setdefault("enroll", {})
        enroll["device_broker_url"] = result["device_broker_url"]
        # password devices keep the listener they were enrolled for, not the TLS one
        enroll.setdefault("password_listener_port", password_listener_port(config))
        text = "# edgeops fleet console configuration (updated by edgeops fleet broker-cert)\n" + render_toml(raw)
        config_from_dict({**tomllib.loads(text), "base_dir": config.base_dir}, source=config_path)  # still valid before it replaces the file
        # both hold the API token and the broker password: 0600, written atomically
        atomic_write(config_path + ".bak", original, mode=0o600)
        atomic_write(config_path, text.encode("utf-8"), mode=0o600)
        result["config_updated"] = config_path
    if as_json:
        _echo_json(result)
        return
    click.echo(f"broker: `include_dir {result['broker_dir']}` in mosquitto.conf (tls-listener.conf, security.conf, ...), then restart it")
    for note in result["notes"]:
        click.echo(f"broker: {note}")
    if update_config:
        click.echo(f"console: {config_path} now connects to {result['device_broker_url']} with its certificate (previous file: {config_path}.bak)")
    else:
        click.echo(f"console: put these lines in the [broker] section of {config_path}:")
        click.echo(result["fleet_toml_broker"].split("\n", 1)[1].rstrip())
    click.echo(f"devices: `edgeops fleet enroll DEVICE --method cert` now writes agent.toml files for {result['device_broker_url']}")


@fleet.command("api-cert")
@click.argument("names", nargs=-1, required=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=DEFAULT_CONFIG, show_default=True)
@click.option("--update-config/--no-update-config", default=True, show_default=True, help="point [api] cert_file, key_file and ca_file of fleet.toml at the new files")
@click.option("--json", "as_json", is_flag=True)
def api_cert_cmd(names, config_path, update_config, as_json) -> None:
    """Issue the REST API's TLS certificate for NAMES (host names / IPs operators use) from the fleet CA.

    127.0.0.1 and localhost are always included. Writes enroll/api/{server.crt,server.key,ca.crt};
    the console serves https from the next `edgeops fleet serve`, and `edgeops rollout ... --config
    fleet.toml` verifies it with ca.crt (elsewhere: --ca ca.crt or EDGEOPS_FLEET_CA).
    """
    from edgeops.fleet.api_tls import set_api_tls, write_api_tls
    from edgeops.fleet.config import load_config

    result = write_api_tls(load_config(config_path), list(names))
    if update_config:
        set_api_tls(config_path, result["cert_file"], result["key_file"], result["ca_file"])
        result["config_updated"] = config_path
    if as_json:
        _echo_json(result)
        return
    click.echo(f"api: certificate for {', '.join(result['names'])} in {Path(result['cert_file']).parent}")
    if update_config:
        click.echo(f"console: {config_path} [api] now serves https (restart `edgeops fleet serve`)")
    else:
        click.echo(f'console: put these lines in the [api] section of {config_path}:\ncert_file = "{result["cert_file"]}"\nkey_file = "{result["key_file"]}"\nca_file = "{result["ca_file"]}"')
    click.echo(f"clients elsewhere: --url https://{names[0]}:PORT --ca {result['ca_file']} (or EDGEOPS_FLEET_CA)")


@fleet.command("devices")
@_api_options
@click.option("--online/--offline", "online", default=None, help="only online / offline devices")
@click.option("--version", "version", default=None, help="NAME@VERSION of the active bundle")
@click.option("--json", "as_json", is_flag=True)
def devices_cmd(url, token, config_path, online, version, as_json) -> None:
    """List devices with their versions, state and health."""
    devices = _client(url, token, config_path).devices(online=None if online is None else str(online).lower(), version=version)
    if as_json:
        _echo_json(devices)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("device", "online", "active", "state", "health", "profile", "tags", "last seen")
    for d in devices:
        active = f"{d['active']['name']}@{d['active']['version']}" if d["active"] else "-"
        table.add_row(d["id"], "yes" if d["online"] else "no", active, d["state"], d["health"], d["profile"] or "-", ",".join(f"{k}={v}" for k, v in d["tags"].items()), _ts(d["last_seen"]))
    Console().print(table)
    click.echo(f"{len(devices)} devices")


@fleet.command("drift")
@_api_options
@click.option("--by", type=click.Choice(["version", "device", "profile", "tag"]), default="version", show_default=True, help="group the scores")
@click.option("--bundle", default=None, help="NAME@VERSION (NAME: every version)")
@click.option("--device", default=None, help="only this device")
@click.option("--tag", default=None, help="KEY=VALUE: only devices with this tag")
@click.option("--profile", default=None, help="only devices of this profile")
@click.option("--window", default=None, help="sketches received this long back (90s, 10m, 1h; default drift.window_s)")
@click.option("--json", "as_json", is_flag=True)
def drift_cmd(url, token, config_path, by, bundle, device, tag, profile, window, as_json) -> None:
    """Drift of served data against each bundle's reference (docs/monitoring.md)."""
    from edgeops.fleet.rollouts.settings import parse_duration

    window_s = int(parse_duration(window, "window")) if window else None
    r = _client(url, token, config_path).drift(by=by, bundle=bundle, device=device, tag=tag, profile=profile, window_s=window_s)
    if as_json:
        _echo_json(r)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("group", "bundle", "level", "samples", "PSI", "KS", "p-value", "devices", title=f"drift by {r['by']}, last {r['window_s']:.0f} s")
    def fmt(v, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for g in r["groups"]:
        label = ", ".join(f"{v}" for v in g["group"].values()) or "-"
        table.add_row(label, f"{g['bundle']}@{g['version']}", g["level"], str(g["samples"]), fmt(g["psi"], ".3f"), fmt(g["ks"], ".3f"), fmt(g["p_value"], ".2g"), str(g["devices"]))
    Console().print(table)
    t = r["thresholds"]
    click.echo(f"levels: warn at PSI {t['warn_psi']}, alert at {t['alert_psi']}, when p < {t['alpha']} on at least {t['min_samples']} inferences")


# --------------------------------------------------------------------------- rollout
@click.group()
def rollout() -> None:
    """Staged rollouts with health gates (talks to the console's REST API)."""


def _print_rollout(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]{r['id']}[/bold] {r['bundle']}  status: [bold]{r['status']}[/bold]  {r['reason']}")
    s = r["settings"]
    con.print(
        f"selector {s['selector']}  bake {s['bake_s']:.0f}s  min_reporting {s['min_reporting']}  max_failure_rate {s['max_failure_rate']}"
        f"  on_gate_failure {s['on_gate_failure']}{'  approve_each_wave' if s['approve_each_wave'] else ''}"
    )
    # the target each profile's devices get, and the selected devices left out (no target for their profile)
    for profile, t in sorted((r.get("targets") or {}).items()):
        con.print(f"target {'(any profile)' if profile == '*' else 'for ' + profile}: {t['name']}  sha256 {t['sha256'][:12]}  release {t['release']}", markup=False)
    for profile, ex in sorted(((r.get("excluded") or {}).get("by_profile") or {}).items()):
        more = f" and {ex['devices'] - len(ex['sample'])} more" if ex["devices"] > len(ex["sample"]) else ""
        con.print(f"excluded: {ex['devices']} devices of profile {profile}: {ex['reason']} ({', '.join(ex['sample'])}{more})", markup=False)
    table = Table("wave", "percent", "status", "devices", "reported", "succeeded", "failed", "gates")
    for w in r["waves"]:
        gates = " ".join(f"{g['gate']}={'ok' if g['outcome'] == 'pass' else g['outcome']}" for g in w["gates"])
        table.add_row(str(w.get("number", w["idx"] + 1)), f"{w['percent']:g}%", w["status"], str(w["devices"]), str(w["reported"]), str(w["succeeded"]), str(w["failed"]), gates)
    con.print(table)
    # the judge's numbers (p-value, effect, devices per cohort, look) and why a gate cannot decide yet
    current = next((w for w in r["waves"] if w["idx"] == r.get("current_wave")), None)
    for g in (current or {}).get("gates", []):
        if g.get("judgement") or g["outcome"] in ("fail", "inconclusive"):
            con.print(f"  {g['gate']}: {g['outcome']}: {g.get('detail', '')}", markup=False)
    for mw in s.get("maintenance") or []:
        waiting = sum(w.get("waiting_for_window", 0) for w in r["waves"])
        sel = mw.get("select") or {}
        parts = ([f"profile={sel['profile']}"] if sel.get("profile") else []) + [f"tag={k}={v}" for k, v in sorted((sel.get("tags") or {}).items())]
        parts += ["device=" + "+".join(sel["devices"])] if sel.get("devices") else []
        con.print(f"maintenance window: {','.join(parts) or 'all'} from cron '{mw['cron']}' for {mw['duration_s']:g}s ({mw['timezone']}); {waiting} devices waiting for theirs", markup=False)
    if any(s.get(k) is not None for k in ("max_latency_regression", "max_error_rate", "max_latency_p50_regression", "max_confidence_drop", "max_class_mix_shift", "min_agreement")):
        con.print(
            f"judge: alpha {s.get('judge_alpha')} over {s.get('judge_max_looks')} looks (Bonferroni), >= {s.get('judge_min_devices')} devices per cohort,"
            f" control share {s.get('control_share')}, pause when inconclusive for {s.get('inconclusive_timeout_s', 0):.0f}s"
        )


@rollout.command("create")
@_api_options
@click.option("--bundle", required=True, help="NAME@VERSION (a signed target of the repository)")
@click.option("--select", "select", default="all", show_default=True, help="profile=NAME, tag=KEY=VALUE, device=ID+ID, all; comma = and")
@click.option("--waves", default="1%,10%,50%,100%", show_default=True, help="cumulative percentages of the selected devices")
@click.option("--bake", default="0", show_default=True, help="time each wave runs before it can pass (90s, 10m, 1h)")
@click.option("--max-failure-rate", type=float, default=0.05, show_default=True)
@click.option("--max-rollback-rate", type=float, default=None)
@click.option("--max-error-rate", type=float, default=None, help="largest excess of the error rate, and of the NaN rate, over the control cohort (judged)")
@click.option("--max-latency-regression", type=float, default=None, help="largest per-device p95 ratio, new / control cohort (judged; 1.1: 10%% slower)")
@click.option("--max-latency-p50-regression", type=float, default=None, help="largest per-device p50 ratio, new / control cohort (judged like the p95)")
@click.option("--max-confidence-drop", type=float, default=None, help="largest drop of the per-device mean top-1 confidence vs the control (judged; 0.05: 5%% lower), from classifier output sketches")
@click.option("--max-class-mix-shift", type=float, default=None, help="largest total variation distance of the output class mix vs the control (judged), from classifier output sketches")
@click.option("--min-agreement", type=float, default=None, help="shadow agreement with the replaced model; fails when significantly below (one-proportion test)")
@click.option("--max-drift", default=None, help="PSI of the wave's data against the bundle's drift reference, or warn / alert: fleet.toml's [drift] threshold (docs/monitoring.md)")
@click.option("--min-reporting", type=float, default=0.9, show_default=True)
@click.option("--judge-alpha", type=float, default=None, help="false-alarm rate of a judged gate over a wave's looks (default 0.05)")
@click.option("--judge-max-looks", type=int, default=None, help="looks per wave sharing --judge-alpha (default 5)")
@click.option("--judge-look-interval", default=None, help="least time between two looks (default 1m)")
@click.option("--judge-min-devices", type=int, default=None, help="devices each cohort needs before a judged gate decides (default 5)")
@click.option("--control-share", type=float, default=None, help="share of the selection held back as the control (default 0.1)")
@click.option("--inconclusive-timeout", default=None, help="a gate inconclusive this long pauses the rollout (default 30m)")
@click.option("--strata-tag", default=None, help="a tag key (e.g. site) that splits waves and judged gates into strata beyond the profile")
@click.option("--channel", default=None, help="the release channel this rollout delivers to (dev, staging, prod, ...)")
@click.option("--requires-channel", default=None, help="refuse unless this version finished a rollout in this channel (promotion)")
@click.option("--watch", default=None, help="after the last wave passes, keep judging the rollout this long (30m); a late failure rolls back the devices that reported it and pauses")
@click.option("--maintenance", multiple=True, help="'SELECT;CRON;DURATION[;TIMEZONE]': devices SELECT get their command only in this window (repeatable), e.g. 'tag=site=berlin;0 2 * * *;2h;Europe/Berlin'")
@click.option("--on-gate-failure", type=click.Choice(["pause", "abort"]), default="pause", show_default=True)
@click.option("--approve-each-wave", is_flag=True, help="wait for `rollout promote` after each wave")
@click.option("--start", "start_now", is_flag=True, help="start it right away")
@click.option("--json", "as_json", is_flag=True)
def create_cmd(url, token, config_path, bundle, select, waves, bake, max_failure_rate, max_rollback_rate, max_error_rate, max_latency_regression, max_latency_p50_regression, max_confidence_drop, max_class_mix_shift, min_agreement, max_drift, min_reporting, judge_alpha, judge_max_looks, judge_look_interval, judge_min_devices, control_share, inconclusive_timeout, strata_tag, channel, requires_channel, watch, maintenance, on_gate_failure, approve_each_wave, start_now, as_json) -> None:
    """Create a rollout (validated by the console; refused settings name the field)."""
    from edgeops.fleet.rollouts.settings import parse_request

    body = {
        "bundle": bundle,
        "select": select,
        "waves": waves,
        "bake": bake,
        "max_failure_rate": max_failure_rate,
        "max_rollback_rate": max_rollback_rate,
        "max_error_rate": max_error_rate,
        "max_latency_regression": max_latency_regression,
        "min_agreement": min_agreement,
        **({"max_drift": max_drift} if max_drift is not None else {}),
        "min_reporting": min_reporting,
        "on_gate_failure": on_gate_failure,
        "approve_each_wave": approve_each_wave,
    }
    judge_opts = {"judge_alpha": judge_alpha, "judge_max_looks": judge_max_looks, "judge_look_interval": judge_look_interval, "judge_min_devices": judge_min_devices, "control_share": control_share, "inconclusive_timeout": inconclusive_timeout, "strata_tag": strata_tag, "watch": watch, "channel": channel, "requires_channel": requires_channel,
                  "max_latency_p50_regression": max_latency_p50_regression, "max_confidence_drop": max_confidence_drop, "max_class_mix_shift": max_class_mix_shift}
    body.update({k: v for k, v in judge_opts.items() if v is not None})
    if maintenance:
        body["maintenance"] = list(maintenance)
    parse_request(body)  # refuse bad settings before any network call
    client = _client(url, token, config_path)
    r = client.create_rollout(body)
    if start_now:
        r = client.action(r["id"], "start")
    if as_json:
        _echo_json(r)
    else:
        click.echo(f"created rollout {r['id']} ({r['bundle']}, {r['status']})")


def _action_command(name: str, help_text: str):
    @rollout.command(name, help=help_text)
    @_api_options
    @click.argument("rollout_id")
    @click.option("--json", "as_json", is_flag=True)
    def cmd(url, token, config_path, rollout_id, as_json) -> None:
        r = _client(url, token, config_path).action(rollout_id, name)
        if as_json:
            _echo_json(r)
        else:
            click.echo(f"rollout {r['id']}: {r['status']} {r['reason']}")

    return cmd


def _allowed(action: str) -> str:
    from edgeops.fleet.rollouts.status import ACTION_FROM

    return ", ".join(sorted(s.value for s in ACTION_FROM[action]))


_action_command("start", f"Start a rollout (allowed from: {_allowed('start')}).")
_action_command("pause", f"Pause a rollout (allowed from: {_allowed('pause')}).")
_action_command("resume", f"Resume a paused rollout (allowed from: {_allowed('resume')}).")
_action_command("promote", f"Start the next wave: approve a passed wave, or override a halted one (allowed from: {_allowed('promote')}).")
_action_command("abort", f"Abort and order every device of the rollout back to its previous version (allowed from: {_allowed('abort')}).")


@rollout.command("status")
@_api_options
@click.argument("rollout_id")
@click.option("--history", is_flag=True, help="include the status history")
@click.option("--json", "as_json", is_flag=True)
def status_cmd(url, token, config_path, rollout_id, history, as_json) -> None:
    """Status of one rollout: waves, device counts, gate verdicts."""
    r = _client(url, token, config_path).rollout(rollout_id, history=history)
    if as_json:
        _echo_json(r)
        return
    _print_rollout(r)
    for h in r.get("history", []):
        click.echo(f"  {_ts(h['ts'])} {h['action']} {h['detail']}")


@rollout.command("list")
@_api_options
@click.option("--status", default=None, help="only rollouts in this status")
@click.option("--json", "as_json", is_flag=True)
def list_cmd(url, token, config_path, status, as_json) -> None:
    """All rollouts, newest first."""
    rows = _client(url, token, config_path).rollouts(status=status)
    if as_json:
        _echo_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "bundle", "status", "wave", "devices", "succeeded", "failed", "created")
    for r in rows:
        table.add_row(r["id"], r["bundle"], r["status"], f"{r['current_wave'] + 1}/{r['waves']}", str(r["devices"]), str(r["succeeded"]), str(r["failed"]), _ts(r["created_at"]))
    Console().print(table)


@rollout.command("devices")
@_api_options
@click.argument("rollout_id")
@click.option("--json", "as_json", is_flag=True)
def rollout_devices_cmd(url, token, config_path, rollout_id, as_json) -> None:
    """Devices of a rollout with their wave and assignment status."""
    rows = _client(url, token, config_path).rollout_devices(rollout_id)
    if as_json:
        _echo_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("device", "wave", "status", "from", "seq", "detail")
    for a in rows:
        table.add_row(a["device_id"], str(a["wave"]), a["status"], a["from"] or "-", str(a["seq"]), a["detail"][:60])
    Console().print(table)


fleet.add_command(__import__("edgeops.fleet.simulator.cli", fromlist=["simulate"]).simulate)  # `edgeops fleet simulate` (fleet/simulator/cli.py; click only at import)
fleet.add_command(__import__("edgeops.fleet.db_cli", fromlist=["db_group"]).db_group)  # `edgeops fleet db` (fleet/db_cli.py: telemetry partitions)
fleet.add_command(__import__("edgeops.fleet.broker_cli", fromlist=["broker_config_cmd"]).broker_config_cmd)  # `edgeops fleet broker-config` (fleet/broker_cli.py)
