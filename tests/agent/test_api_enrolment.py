"""`edgeops fleet enroll` gives each device a bearer token for its inference API (issue 13,
finding 6): a 0600 file next to agent.toml, named in its [api] section, that the agent accepts."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("edgeops.fleet.cli")

from edgeops.agent.api import read_token  # noqa: E402
from edgeops.agent.config import load_config  # noqa: E402
from edgeops.fleet.cli import fleet  # noqa: E402


def test_enrolment_writes_a_private_api_token_named_in_agent_toml(tmp_path):
    runner = CliRunner()
    res = runner.invoke(fleet, ["init", "--dir", str(tmp_path), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    tokens = []
    for device in ("cam-1", "cam-2"):
        res = runner.invoke(fleet, ["enroll", device, "--config", str(tmp_path / "fleet.toml"), "--json"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        cfg = load_config(json.loads(res.output)["agent_toml"])
        path = cfg.api.token_file
        assert path is not None and path.parent == tmp_path / "enroll" / "devices" / device
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        tokens.append(read_token(path))
    assert tokens[0] != tokens[1] and all(len(t) >= 32 for t in tokens)
