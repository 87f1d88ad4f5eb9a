"""End to end through the real CLI: keys init, repo init, publish, verify, status, refresh, rotate."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.edgeops.trust.helpers import make_bundle


def edgeops(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeops.cli", *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    keys, repo = tmp / "keys", tmp / "repo"
    r = edgeops("keys", "init", "--keys", str(keys), "--root-keys", "3", "--root-threshold", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["roles"]["root"]["threshold"] == 2
    r = edgeops("repo", "init", "--repo", str(repo), "--keys", str(keys))
    assert r.returncode == 0, r.stderr
    bundle = make_bundle(tmp / "digits-1.0.0.bundle", release=3)
    r = edgeops("publish", str(bundle), "--repo", str(repo), "--keys", str(keys), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["custom"]["release"] == 3
    return tmp, keys, repo, bundle


def test_verify_ok_and_tampered(published):
    tmp, keys, repo, bundle = published
    r = edgeops("verify", str(bundle), "--repo", str(repo), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verdict"] == "verified" and out["release"] == 3 and out["metadata_versions"]["targets"] == 2
    r = edgeops("verify", str(bundle), "--root", str(repo / "metadata" / "1.root.json"))
    assert r.returncode == 0 and "VERIFIED digits 1.0.0" in r.stdout
    bad = tmp / "tampered.bundle"
    data = bytearray(bundle.read_bytes())
    data[-3000] ^= 1
    bad.write_bytes(bytes(data))
    r = edgeops("verify", str(bad), "--repo", str(repo), "--json")
    assert r.returncode == 7
    assert json.loads(r.stdout)["error"]["type"] == "HashMismatchError"
    r = edgeops("verify", str(bad), "--repo", str(repo))
    assert r.returncode == 7 and "REJECTED" in r.stderr


def test_unpublished_bundle_is_unknown_target(published):
    tmp, keys, repo, _ = published
    other = make_bundle(tmp / "other.bundle", version="9.9.9", release=9)
    r = edgeops("verify", str(other), "--repo", str(repo), "--json")
    assert r.returncode == 7 and json.loads(r.stdout)["error"]["type"] == "UnknownTargetError"


def test_publish_downgrade_refused_then_allowed(published):
    tmp, keys, repo, _ = published
    old = make_bundle(tmp / "digits-0.5.0.bundle", version="0.5.0", release=2)
    r = edgeops("publish", str(old), "--repo", str(repo), "--keys", str(keys))
    assert r.returncode == 7 and "--allow-downgrade" in r.stderr
    r = edgeops("publish", str(old), "--repo", str(repo), "--keys", str(keys), "--allow-downgrade", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["custom"]["release"] == 4
    r = edgeops("verify", str(old), "--repo", str(repo), "--json")
    assert json.loads(r.stdout)["release"] == 4


def test_status_refresh_rotate(published):
    tmp, keys, repo, bundle = published
    r = edgeops("repo", "status", "--repo", str(repo), "--json")
    assert r.returncode == 0 and not json.loads(r.stdout)["needs_refresh"]
    r = edgeops("repo", "refresh", "--repo", str(repo), "--keys", str(keys), "--force", "--json")
    assert r.returncode == 0 and "timestamp" in json.loads(r.stdout)["re_signed"]
    r = edgeops("keys", "rotate", "root", "--keys", str(keys), "--repo", str(repo), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["root_version"] == 2
    # A verifier anchored at the first root follows the rotation.
    r = edgeops("verify", str(bundle), "--root", str(repo / "metadata" / "1.root.json"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["metadata_versions"]["root"] == 2
    r = edgeops("keys", "show", "--keys", str(keys), "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)["roles"]["root"]["keys"]) == 3


def test_encrypted_keys_with_env_passphrase(tmp_path):
    env = {"EDGEOPS_KEY_PASSPHRASE": "correct horse"}
    r = edgeops("keys", "init", "--keys", str(tmp_path / "k"), "--root-keys", "1", "--root-threshold", "1", env=env)
    assert r.returncode == 0, r.stderr
    assert b"ENCRYPTED" in (tmp_path / "k" / "targets-1.key").read_bytes()
    r = edgeops("repo", "init", "--repo", str(tmp_path / "r"), "--keys", str(tmp_path / "k"), env={"EDGEOPS_KEY_PASSPHRASE": ""})
    assert r.returncode == 7 and "encrypted" in r.stderr
    r = edgeops("repo", "init", "--repo", str(tmp_path / "r"), "--keys", str(tmp_path / "k"), env=env)
    assert r.returncode == 0, r.stderr


def test_publish_channels_are_signed_in_the_target(tmp_path):
    """`edgeops publish --channel`: the channel and the earlier one it requires are signed in the
    target's custom metadata; publishing the same bundle to the next channel re-signs its target
    (dev -> staging -> prod), again to the same channel changes nothing; bad names are refused."""
    keys, repo = tmp_path / "keys", tmp_path / "repo"
    assert edgeops("keys", "init", "--keys", str(keys), "--root-keys", "1", "--root-threshold", "1").returncode == 0
    assert edgeops("repo", "init", "--repo", str(repo), "--keys", str(keys)).returncode == 0
    bundle = make_bundle(tmp_path / "digits-1.0.0.bundle", release=1)

    def publish(*extra):
        r = edgeops("publish", str(bundle), "--repo", str(repo), "--keys", str(keys), "--json", *extra)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    dev = publish("--channel", "dev")
    assert dev["custom"]["channel"] == "dev" and dev["custom"]["channels"] == {"dev": None}
    staging = publish("--channel", "staging")
    assert not staging["unchanged"] and staging["versions"]["targets"] == dev["versions"]["targets"] + 1
    assert staging["custom"]["channels"] == {"dev": None, "staging": "dev"} and staging["custom"]["release"] == 1
    assert publish("--channel", "staging")["unchanged"]
    prod = publish("--channel", "prod", "--requires-channel", "staging")
    assert prod["custom"]["channel"] == "prod" and prod["custom"]["channels"]["prod"] == "staging"
    # what a device's client reads: the verified target carries it
    r = edgeops("verify", str(bundle), "--repo", str(repo), "--json")
    assert r.returncode == 0, r.stderr
    r = edgeops("publish", str(bundle), "--repo", str(repo), "--keys", str(keys), "--channel", "prod", "--requires-channel", "prod")
    assert r.returncode != 0 and "cannot require itself" in r.stderr
    r = edgeops("publish", str(bundle), "--repo", str(repo), "--keys", str(keys), "--channel", "no way")
    assert r.returncode != 0 and "a channel name is 1-32 letters" in r.stderr
    r = edgeops("publish", str(bundle), "--repo", str(repo), "--keys", str(keys), "--channel", "prod")
    assert r.returncode == 0 and "in channel prod (a rollout there needs one finished in staging first)" in r.stdout
