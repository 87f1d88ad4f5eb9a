"""A small REST client of the console (stdlib urllib), used by `edgeops rollout ...` and `edgeops fleet devices`.

Where the console is: ``--url``/``--token``, else ``EDGEOPS_FLEET_URL``/``EDGEOPS_FLEET_TOKEN``,
else the ``[api]`` section of ``--config fleet.toml`` (bind address, first token; https when
the section has ``cert_file``). An https console is verified with ``--ca`` /
``EDGEOPS_FLEET_CA``, else ``[api] ca_file`` of the fleet.toml, else the system's CAs.
API errors come back as the console's message with the matching edgeops error class, so the
CLI exits with the same code as the console would (9 for fleet errors, 3 for refused settings).
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request

from edgeops.errors import ConfigError, EdgeopsError, FleetError, IllegalTransitionError

URL_ENV = "EDGEOPS_FLEET_URL"
TOKEN_ENV = "EDGEOPS_FLEET_TOKEN"
CA_ENV = "EDGEOPS_FLEET_CA"


class ApiError(FleetError):
    """The console answered with an error."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _error_for(status: int, message: str) -> EdgeopsError:
    if status == 409:
        return IllegalTransitionError(message)
    if status == 422:
        from edgeops.fleet.rollouts.settings import RolloutSettingsError

        return RolloutSettingsError(message)
    return ApiError(message, status)


class FleetClient:
    """Calls the console's REST API with a bearer token."""

    def __init__(self, url: str, token: str | None, timeout_s: float = 30.0, ca_file: str | os.PathLike | None = None):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--url {url!r}: expected http(s)://host:port of the fleet console")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.ca_file = str(ca_file) if ca_file else None
        self._ssl: ssl.SSLContext | None = None
        if self.url.startswith("https://"):
            try:
                self._ssl = ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"--ca {self.ca_file}: cannot read the CA certificate ({e})") from e

    @classmethod
    def from_options(cls, url: str | None, token: str | None, config_path: str | None, ca_file: str | None = None) -> "FleetClient":
        """Resolve URL, token and CA from options, environment, or a fleet.toml."""
        url = url or os.environ.get(URL_ENV)
        token = token or os.environ.get(TOKEN_ENV)
        ca_file = ca_file or os.environ.get(CA_ENV)
        if (not url or not token or not ca_file) and config_path:
            from edgeops.fleet.config import load_config

            cfg = load_config(config_path)
            host = cfg.api.host if cfg.api.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
            if ":" in host:  # an IPv6 literal
                host = f"[{host}]"
            url = url or f"{'https' if cfg.api.tls else 'http'}://{host}:{cfg.api.port}"
            tokens = cfg.api.all_tokens()
            token = token or (tokens[0] if tokens else None)
            if not ca_file and cfg.api.ca_file:
                ca_file = str(cfg.path(cfg.api.ca_file))
        if not url:
            raise ConfigError(f"where is the console? pass --url (or set {URL_ENV}) or --config fleet.toml")
        return cls(url, token, ca_file=ca_file)

    def request(self, method: str, path: str, body: dict | None = None, query: dict | None = None):
        """One call; returns the decoded JSON; raises the edgeops error for the HTTP status."""
        q = {k: v for k, v in (query or {}).items() if v is not None}
        full = self.url + path + (("?" + urllib.parse.urlencode(q)) if q else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(full, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s, context=self._ssl) as resp:  # noqa: S310 (scheme checked)
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", e.reason)
            except Exception:
                message = str(e.reason)
            raise _error_for(e.code, f"{method} {path}: {message}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise FleetError(
                    f"the fleet console at {self.url} has a certificate this client does not trust ({reason.verify_message}); "
                    f"pass --ca with the CA that signed it (the fleet CA: enroll/api/ca.crt), set {CA_ENV}, or use --config fleet.toml with [api] ca_file"
                ) from e
            # a TLS server drops a plain-http request without an answer
            hint = " (if the console serves https, use an https:// URL)" if isinstance(e, ConnectionError) and self.url.startswith("http://") else ""
            raise FleetError(f"cannot reach the fleet console at {self.url}: {reason}{hint}") from e

    # convenience
    def devices(self, **query):
        """GET /api/v1/devices."""
        return self.request("GET", "/api/v1/devices", query=query)

    def rollouts(self, **query):
        """GET /api/v1/rollouts."""
        return self.request("GET", "/api/v1/rollouts", query=query)

    def rollout(self, rollout_id: str, history: bool = False):
        """GET /api/v1/rollouts/{id}."""
        return self.request("GET", f"/api/v1/rollouts/{urllib.parse.quote(rollout_id)}", query={"history": "1" if history else None})

    def create_rollout(self, body: dict):
        """POST /api/v1/rollouts."""
        return self.request("POST", "/api/v1/rollouts", body=body)

    def action(self, rollout_id: str, action: str):
        """POST /api/v1/rollouts/{id}/{action}."""
        return self.request("POST", f"/api/v1/rollouts/{urllib.parse.quote(rollout_id)}/{action}", body={})

    def rollout_devices(self, rollout_id: str):
        """GET /api/v1/rollouts/{id}/devices."""
        return self.request("GET", f"/api/v1/rollouts/{urllib.parse.quote(rollout_id)}/devices")

    def drift(self, **query):
        """GET /api/v1/drift (by, bundle, device, tag, profile, window_s)."""
        return self.request("GET", "/api/v1/drift", query=query)
