"""`edgeops keys|publish|verify|repo`: keys, the signed bundle repository, and verification.

Exit codes come from the error classes (edgeops.errors): 7 for any trust failure, 6 for a
malformed bundle, 3 for bad options. ``--json`` prints one JSON document for machines.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from edgeops.errors import BundleError, ConfigError, EdgeopsError


def _echo_json(data: dict) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _prompt_passphrase(confirm: bool = False):
    def ask(path: str) -> str:
        return click.prompt(f"passphrase for {path}", hide_input=True, confirmation_prompt=confirm)

    return ask


def _load_ring(keys_dir: str, passphrase_prompt: bool):
    from edgeops.trust.keys import Keyring

    return Keyring.load(keys_dir, _prompt_passphrase() if passphrase_prompt else None)


_keys_option = click.option("--keys", "keys_dir", required=True, type=click.Path(file_okay=False), help="key directory (from `edgeops keys init`)")
_repo_option = click.option("--repo", "repo_dir", required=True, type=click.Path(file_okay=False), help="repository folder")
_prompt_option = click.option("--passphrase-prompt", is_flag=True, help="ask for the key passphrase (default: $EDGEOPS_KEY_PASSPHRASE when keys are encrypted)")


@click.group("keys")
def keys() -> None:
    """Create, rotate and show signing keys (TUF roles and the console's command key)."""


@keys.command("init")
@_keys_option
@click.option("--root-keys", default=3, show_default=True, type=click.IntRange(1, 16), help="number of root keys")
@click.option("--root-threshold", default=2, show_default=True, type=click.IntRange(1, 16), help="root signatures needed")
@click.option("--expiry-days", "expiry", multiple=True, metavar="ROLE=DAYS", help="override a role's expiry period, e.g. timestamp=1 (defaults: root 365, targets 90, snapshot 7, timestamp 1)")
@click.option("--passphrase-prompt", is_flag=True, help="encrypt private keys with a passphrase typed now (else $EDGEOPS_KEY_PASSPHRASE, else unencrypted)")
@click.option("--root-dir", default=None, metavar="DIR", help="keep the root private keys in DIR (relative to KEYS or absolute), apart from the online keys")
@click.option("--json", "as_json", is_flag=True, help="print the created keys as JSON")
def keys_init(keys_dir: str, root_keys: int, root_threshold: int, expiry: tuple[str, ...], passphrase_prompt: bool, root_dir: str | None, as_json: bool) -> None:
    """Generate Ed25519 keys for root, targets, snapshot, timestamp and command signing."""
    from edgeops.trust.keys import DEFAULT_EXPIRY_DAYS, Keyring, passphrase_from_env

    if root_threshold > root_keys:
        raise ConfigError(f"--root-threshold {root_threshold} is more than --root-keys {root_keys}")
    overrides: dict[str, float] = {}
    for item in expiry:
        role, _, days = item.partition("=")
        if role not in DEFAULT_EXPIRY_DAYS:
            raise ConfigError(f"--expiry-days {item!r}: role must be one of {', '.join(DEFAULT_EXPIRY_DAYS)}")
        try:
            overrides[role] = float(days)
        except ValueError:
            raise ConfigError(f"--expiry-days {item!r}: DAYS must be a number") from None
        if overrides[role] <= 0:
            raise ConfigError(f"--expiry-days {item!r}: DAYS must be positive")
    passphrase = click.prompt("passphrase for the new keys", hide_input=True, confirmation_prompt=True) if passphrase_prompt else passphrase_from_env()
    ring = Keyring.create(keys_dir, root_keys=root_keys, root_threshold=root_threshold, expiry_days=overrides, passphrase=passphrase, root_private_dir=root_dir)
    _show(ring, as_json, encrypted=bool(passphrase))


def _show(ring, as_json: bool, encrypted: bool | None = None) -> None:
    data = {"keys_dir": str(ring.directory), "roles": {}}
    for role, entry in sorted(ring.roles.items()):
        data["roles"][role] = {
            "threshold": entry.threshold,
            "expiry_days": entry.expiry_days,
            "keys": [{"name": name, "keyid": key.keyid, "private_key_present": (ring.private_dir(role) / f"{name}.key").exists()} for name, key in zip(entry.keys, ring.public_keys(role))],
        }
    if encrypted is not None:
        data["encrypted"] = encrypted
    if as_json:
        _echo_json(data)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"keys in {ring.directory}")
    for col in ("role", "threshold", "expiry (days)", "key", "keyid", "private"):
        table.add_column(col)
    for role, r in data["roles"].items():
        for k in r["keys"]:
            table.add_row(role, str(r["threshold"]), str(r["expiry_days"] or "-"), k["name"], k["keyid"][:16] + "…", "yes" if k["private_key_present"] else "offline")
    Console().print(table)


@keys.command("show")
@_keys_option
@click.option("--json", "as_json", is_flag=True)
def keys_show(keys_dir: str, as_json: bool) -> None:
    """List the keys of each role (public parts only)."""
    from edgeops.trust.keys import Keyring

    _show(Keyring.load(keys_dir), as_json)


@keys.command("rotate")
@click.argument("role", type=click.Choice(["root", "targets", "snapshot", "timestamp", "command"]))
@_keys_option
@_repo_option
@_prompt_option
@click.option("--json", "as_json", is_flag=True)
def keys_rotate(role: str, keys_dir: str, repo_dir: str, passphrase_prompt: bool, as_json: bool) -> None:
    """Replace ROLE's keys; the new root.json is signed by a threshold of old and new root keys."""
    from edgeops.trust.repository import Repository

    ring = _load_ring(keys_dir, passphrase_prompt)
    repo = Repository(Path(repo_dir))
    new = repo.rotate(role, ring)
    root_version = repo.root().signed.version
    if as_json:
        _echo_json({"role": role, "new_keys": new, "root_version": root_version})
    else:
        click.echo(f"rotated {role}: new keys {', '.join(new)}; root is now version {root_version} (old keys moved to {Path(keys_dir) / 'retired'})")


@click.command("publish")
@click.argument("bundle", type=click.Path(dir_okay=False, exists=True))
@_repo_option
@_keys_option
@click.option("--allow-downgrade", is_flag=True, help="publish a bundle whose release counter is not above the published one, under a new higher signed counter")
@click.option("--channel", default=None, help="release channel (dev, staging, prod, NAME), signed in the target's metadata; publish again with the next channel to promote")
@click.option("--requires-channel", default=None, help="the earlier channel a rollout must have finished in before one in --channel (default: the channel this version was published to before)")
@_prompt_option
@click.option("--json", "as_json", is_flag=True)
def publish(bundle: str, repo_dir: str, keys_dir: str, allow_downgrade: bool, channel: str | None, requires_channel: str | None, passphrase_prompt: bool, as_json: bool) -> None:
    """Add BUNDLE to the repository as a TUF target and re-sign targets, snapshot and timestamp."""
    from edgeops.trust.repository import Repository

    ring = _load_ring(keys_dir, passphrase_prompt)
    result = Repository(Path(repo_dir)).publish(bundle, ring, allow_downgrade=allow_downgrade, channel=channel, requires_channel=requires_channel)
    if as_json:
        _echo_json(result.to_dict())
        return
    c = result.custom
    channel = ""
    if c.get("channel"):
        required = (c.get("channels") or {}).get(c["channel"])
        channel = f" in channel {c['channel']}" + (f" (a rollout there needs one finished in {required} first)" if required else "")
    if result.unchanged:
        click.echo(f"already published: {result.target} (release {c.get('release')}){channel}")
        return
    note = f" (downgrade: manifest release {c['manifest_release']} re-issued as {c['release']})" if c.get("downgrade") else ""
    note += channel
    click.echo(f"published {result.target} ({c.get('name')}@{c.get('version')} for profile {c.get('profile')}) release {c['release']}{note}: {result.length:,} bytes, sha256 {result.sha256[:16]}…; targets v{result.versions['targets']}, snapshot v{result.versions['snapshot']}, timestamp v{result.versions['timestamp']}")


def run_verify(bundle: str, repo: str | None, root: str | None) -> dict:
    """Full check of a bundle file: TUF chain from the trusted root, target, manifest hashes.

    Returns the verdict as a dict; raises the error that rejected it.
    """
    from edgeops.trust.client import TrustClient
    from edgeops.trust.transport import transport_for
    from edgeops.trust.verify import read_manifest, verify_bundle_file

    if repo is None:
        if root is None:
            raise ConfigError("give --repo DIR|URL (metadata source) and/or --root root.json (trust anchor)")
        root_path = Path(root)
        if root_path.parent.name != "metadata":
            raise ConfigError(f"--root {root}: give --repo too (the root.json is not inside a repository's metadata/ folder)")
        repo = str(root_path.parent.parent)
    anchor_note = "given root"
    if root is None:
        if repo.startswith(("http://", "https://")):
            raise ConfigError("verifying against a URL needs --root root.json: the trust anchor must not come from the same server")
        root = str(Path(repo) / "metadata" / "1.root.json")
        anchor_note = "the repository's own 1.root.json (trust on first use)"
    manifest = read_manifest(bundle)
    with tempfile.TemporaryDirectory(prefix="edgeops-verify-") as tmp:
        client = TrustClient(Path(tmp) / "metadata", transport_for(repo), root=Path(root))
        client.refresh()
        record = client.get_bundle(manifest.name, manifest.version, manifest.profile)
        verdict = verify_bundle_file(bundle, record)
        versions = client.trusted_versions()
    return {"verdict": "verified", "anchor": anchor_note, "metadata_versions": versions, **verdict.to_dict(), "release": record.release}


@click.command("verify")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--repo", "repo", default=None, help="repository folder or http(s) URL (metadata source)")
@click.option("--root", "root", default=None, type=click.Path(dir_okay=False, exists=True), help="trusted root.json (default: the repository's 1.root.json)")
@click.option("--json", "as_json", is_flag=True)
def verify(bundle: str, repo: str | None, root: str | None, as_json: bool) -> None:
    """Verify BUNDLE: signed metadata chain, target length and sha256, and the manifest's hashes."""
    try:
        result = run_verify(bundle, repo, root)
    except (EdgeopsError, BundleError) as e:
        if as_json:
            _echo_json({"verdict": "rejected", "bundle": bundle, "error": {"type": type(e).__name__, "message": str(e), "exit_code": e.exit_code}})
        else:
            click.echo(f"REJECTED {bundle}: {type(e).__name__}", err=True)
        raise  # edgeops.cli.main prints the message to stderr and exits with the class's code
    if as_json:
        _echo_json(result)
    else:
        click.echo(
            f"VERIFIED {result['name']} {result['version']} (release {result['release']}, profile {result['profile']}): "
            f"{result['length']:,} bytes, sha256 {result['sha256'][:16]}…, metadata {result['metadata_versions']}, anchor: {result['anchor']}"
        )


@click.group("repo")
def repo() -> None:
    """Create, refresh and inspect the signed bundle repository."""


@repo.command("init")
@_repo_option
@_keys_option
@_prompt_option
def repo_init(repo_dir: str, keys_dir: str, passphrase_prompt: bool) -> None:
    """Create an empty repository signed with the keys in --keys."""
    from edgeops.trust.repository import Repository

    r = Repository.init(Path(repo_dir), _load_ring(keys_dir, passphrase_prompt))
    click.echo(f"initialised {r.repo_dir}: devices trust {r.metadata_dir / '1.root.json'}")


@repo.command("refresh")
@_repo_option
@_keys_option
@click.option("--force", is_flag=True, help="re-sign targets, snapshot and timestamp even if not due")
@_prompt_option
@click.option("--json", "as_json", is_flag=True)
def repo_refresh(repo_dir: str, keys_dir: str, force: bool, passphrase_prompt: bool, as_json: bool) -> None:
    """Re-sign the roles whose expiry is near (timestamp, snapshot, targets; root when keys allow)."""
    from edgeops.trust.repository import Repository

    r = Repository(Path(repo_dir))
    done = r.refresh(_load_ring(keys_dir, passphrase_prompt), force=force)
    if as_json:
        _echo_json({"re_signed": done, "status": r.status()})
    else:
        click.echo(f"re-signed: {', '.join(done)}" if done else "nothing due")


@repo.command("status")
@_repo_option
@click.option("--keys", "keys_dir", default=None, type=click.Path(file_okay=False), help="key directory (for its expiry periods)")
@click.option("--json", "as_json", is_flag=True)
def repo_status(repo_dir: str, keys_dir: str | None, as_json: bool) -> None:
    """Versions and expiry of each role, and the published targets."""
    from edgeops.trust.keys import Keyring
    from edgeops.trust.repository import Repository

    status = Repository(Path(repo_dir)).status(Keyring.load(keys_dir) if keys_dir else None)
    if as_json:
        _echo_json(status)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    roles = Table(title=f"repository {repo_dir}")
    for col in ("role", "version", "expires", "state"):
        roles.add_column(col)
    for role, r in status["roles"].items():
        state = "[red]expired[/red]" if r["expired"] else ("[yellow]refresh due[/yellow]" if r["needs_refresh"] else "ok")
        roles.add_row(role, str(r["version"]), r["expires"], state)
    console.print(roles)
    targets = Table(title="targets")
    for col in ("target", "release", "profile", "bytes", "sha256"):
        targets.add_column(col)
    for t in status["targets"]:
        targets.add_row(t["target"], str(t.get("release")) + (" (downgrade)" if t.get("downgrade") else ""), str(t.get("profile")), f"{t['length']:,}", (t["sha256"] or "")[:16] + "…")
    console.print(targets)
