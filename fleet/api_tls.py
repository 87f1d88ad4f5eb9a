"""The REST API's TLS certificate from the fleet CA (`edgeops fleet api-cert`).

The fleet CA (``enroll.ca_dir``, the one `edgeops fleet broker-cert` and ``enroll --method cert``
use) signs a server certificate for the names operators reach the console by; 127.0.0.1 and
localhost are always added so the CLI on the console host verifies it too. The files go to
``ENROLL/api/`` (key 0600) and ``[api]`` of fleet.toml points at them: ``cert_file``/``key_file``
make the console serve https, ``ca_file`` is what clients (`edgeops rollout --config`) verify it
with. Operators with their own certificate set the three paths by hand instead.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from edgeops.fleet.config import FleetConfig, load_config, render_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LOCAL_NAMES = ("127.0.0.1", "localhost")


def write_api_tls(config: FleetConfig, names: list[str], days: int = 825) -> dict:
    """Issue the API's certificate for ``names`` (plus LOCAL_NAMES); returns the paths written."""
    from edgeops.fleet.enroll import FleetCA, _write_private

    all_names = list(dict.fromkeys([*names, *LOCAL_NAMES]))
    ca = FleetCA(config.path(config.enroll.ca_dir))
    key_pem, cert_pem = ca.issue_server(all_names, days=days)
    api_dir = config.path(config.enroll.dir) / "api"
    api_dir.mkdir(parents=True, exist_ok=True)
    _write_private(api_dir / "server.key", key_pem)
    _write_private(api_dir / "server.crt", cert_pem, 0o644)
    shutil.copyfile(ca.cert_path, api_dir / "ca.crt")
    return {
        "cert_file": str((api_dir / "server.crt").resolve()),
        "key_file": str((api_dir / "server.key").resolve()),
        "ca_file": str((api_dir / "ca.crt").resolve()),
        "names": all_names,
    }


def set_api_tls(config_path: str | os.PathLike, cert_file: str, key_file: str, ca_file: str | None) -> None:
    """Point ``[api]`` of fleet.toml at the certificate; the file is replaced atomically and stays 0600 (it holds tokens)."""
    path = Path(config_path)
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    raw.setdefault("api", {}).update(cert_file=cert_file, key_file=key_file, ca_file=ca_file)
    text = "# edgeops fleet console configuration (API TLS set by edgeops fleet api-cert)\n" + render_toml(raw)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        load_config(tmp)  # still a valid config before it replaces the old one
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
