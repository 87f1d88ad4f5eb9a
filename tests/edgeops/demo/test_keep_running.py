"""`edgeops demo --keep-running` prints the console's browser URL and a token that signs in there."""

from __future__ import annotations

import re

from edgeops.demo.story import still_running_message
from tests.fleet.conftest import fleet_repo  # noqa: F401 (the fleet tests' signed repository fixture)
from tests.fleet.test_access import _sign_in
from tests.fleet.test_api import TOKEN, make_console


def test_printed_url_and_token_sign_in(tmp_path, fleet_repo):  # noqa: F811 (the fixture imported above)
    console = make_console("sqlite", tmp_path, fleet_repo)  # the demo's console has one admin token, like this one
    try:
        text = still_running_message("mqtt://127.0.0.1:1883", console.api_url, TOKEN)
        m = re.search(r"console in a browser: (http://\S+/ui/)\s+\(sign in with the token (\S+)\)", text)
        assert m and m.group(1) == console.api_url + "/ui/" and m.group(2) == TOKEN
        *_, status, url, body = _sign_in(console, m.group(2))
        assert status == 200 and url.endswith("/ui/fleet") and "(admin)" in body
    finally:
        console.stop()
