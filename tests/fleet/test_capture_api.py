"""POST /api/v1/capture refusals and the `edgeops data` CLI on a console's store (issue 17).
The accepted path over a real broker is in test_capture_e2e.py."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from nacl.public import PrivateKey

from edgeops.cli import cli as main
from tests.fleet.test_api import call, make_console, stop_console
from tests.fleet.test_capture_store import TOPIC, chunks, sealed


@pytest.fixture
def console(tmp_path, fleet_repo):
    c = make_console("sqlite", tmp_path, fleet_repo)
    yield c
    stop_console(c, "sqlite")


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"random_share": 1.0}, 400, "name the target"),
        ({"device": "d0", "tags": {"site": "x"}, "random_share": 1.0}, 400, "name the target"),
        ({"device": "d0"}, 400, "at least one trigger"),
        ({"device": "d0", "random_share": 2.0}, 400, "random_share"),
        ({"device": "d0", "random_share": 0.1, "drift": "loud"}, 400, "drift"),
        ({"device": "d0", "random_share": 0.1, "colour": "red"}, 400, "unknown field"),
        ({"device": "d0", "random_share": "0.1"}, 400, "random_share"),
        ({"device": "d0", "random_share": 0.1, "budget_bytes_per_day": 0}, 400, "budget_bytes_per_day"),
        ({"device": "nobody", "random_share": 0.1}, 404, "not enrolled"),
        ({"tags": {"site": "y"}, "random_share": 0.1}, 400, "no enrolled device"),
        ({"tags": {"site": "x"}, "random_share": 0.1}, 503, "without MQTT"),
    ],
)
def test_capture_orders_refused_with_the_field_named(console, body, status, words):
    got, doc = call(console, "POST", "/api/v1/capture", body)
    assert got == status and words in json.dumps(doc), doc


def test_data_cli_lists_labels_and_exports_with_the_sha256(console, tmp_path):
    key_path = tmp_path / "capture" / "capture.key"
    from edgeops.fleet.capture import load_or_create_key
    from edgeops.fleet.capture_store import CaptureStore

    key = load_or_create_key(tmp_path / "capture")
    assert key_path.stat().st_mode & 0o077 == 0
    store = CaptureStore(console.db, tmp_path / "capture", key)
    from tests.support.bundles import sample_inputs

    for i in range(3):
        for p in chunks(sealed(key, sample_inputs(1, seed=i), ts=10.0 + i)):
            store.handle(TOPIC, p)
    (tmp_path / "fleet.toml").write_text(f'base_dir = "{tmp_path}"\n[database]\nurl = "sqlite:///{tmp_path / "fleet.db"}"\n')
    run = CliRunner().invoke
    cfg = ["--config", str(tmp_path / "fleet.toml")]
    r = run(main, ["data", "list", "--json", *cfg])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert len(rows) == 3
    (tmp_path / "l.csv").write_text("".join(f"{row['sample_id']},{n}\n" for n, row in enumerate(rows)))
    r = run(main, ["data", "label", str(tmp_path / "l.csv"), *cfg])
    assert r.exit_code == 0 and "3 samples labelled" in r.output, r.output
    r = run(main, ["data", "export", "--device", "cam-1", "-o", str(tmp_path / "d.npz"), *cfg])
    assert r.exit_code == 0, r.output
    import hashlib

    assert f"sha256 {hashlib.sha256((tmp_path / 'd.npz').read_bytes()).hexdigest()}" in r.output and "labels yes" in r.output
    r = run(main, ["data", "show", rows[0]["sample_id"][:10], "--json", *cfg])
    assert r.exit_code == 0 and json.loads(r.output)["meta"]["trigger"] == "random", r.output
    r = run(main, ["data", "export", "--trigger", "drift_alert", "-o", str(tmp_path / "none.npz"), *cfg])
    assert r.exit_code != 0 and "no stored sample matches" in str(r.exception)  # edgeops.cli.main prints it as an error
    # a store opened with another key reads nothing
    (key_path).write_text(__import__("base64").b64encode(bytes(PrivateKey.generate())).decode())
    r = run(main, ["data", "show", rows[0]["sample_id"][:10], *cfg])
    assert r.exit_code != 0
