"""TUF metadata verification in a short-lived child process (:class:`IsolatedTrustClient`).

A device agent refreshes TUF metadata once per update, and holds the served model for days in
between. Running python-tuf in the agent's own process would keep python-tuf, securesystemslib
and cryptography resident for the whole time (~12 MiB of the agent's RSS, measured with
``bench/agent.py``), and would parse hostile metadata in the process that serves inference.
Instead, :class:`IsolatedTrustClient` runs the TUF client workflow of
:class:`~edgeops.trust.client.TrustClient` in a child (``python -m edgeops.trust.worker``)
that exits when the refresh is done. The parent keeps only what it needs afterwards: the
verified target records and the command keys of the trusted root, as plain data.

The child has no network access of its own: every repository file it asks for is fetched by
the parent through the agent's transport (MQTT request/response or HTTP) and passed down the
pipe, so the child needs no broker session and the transport's bounds apply as before. The
metadata cache (``metadata_dir``) is the child's to write, with the same atomic writes.

Protocol: JSON lines. The parent writes one request (``{"op": "refresh"}``); the child answers
with any number of ``{"fetch": path, "max_length": n}`` (the parent replies ``{"data": base64}``
or ``{"error": "<TrustError class>", "message": ...}``), then one ``{"result": {...}}`` or
``{"error": ..., "message": ...}`` and exits. The parent kills a child that stays silent for
``timeout_s``; a child whose parent dies reads end-of-file and exits.

Bundle downloads do not go through the child: their length and sha256 check needs no TUF code
(:func:`edgeops.trust.targets.download_target`).
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from edgeops.trust import errors
from edgeops.trust.pubkeys import VerifyKey, verify_keys_from_field
from edgeops.trust.targets import COMMAND_KEYS_FIELD, TargetRecord, download_target, pick_bundle_target, target_path
from edgeops.trust.transport import RepositoryTransport

# A refresh answer carries every signed target record; cap what the parent reads per line.
MAX_LINE_BYTES = 64 * 1024 * 1024


def _error_class(name: Any) -> type[errors.TrustError]:
    cls = getattr(errors, name, None) if isinstance(name, str) else None
    return cls if isinstance(cls, type) and issubclass(cls, errors.TrustError) else errors.TrustError


class IsolatedTrustClient:
    """The parts of :class:`~edgeops.trust.client.TrustClient` an agent uses, with the TUF
    workflow in a child process (see module doc).

    Args:
        metadata_dir: the metadata cache (as for TrustClient).
        transport: how the parent reaches the repository; the child's fetches go through it.
        root: path to the trust anchor root.json (None: the cached one).
        timeout_s: longest silence from the child before it is killed (RepositoryUnavailableError).
        python: the interpreter that runs the child (default: this one).
    """

    def __init__(self, metadata_dir: str | Path, transport: RepositoryTransport, root: str | Path | None = None, *, timeout_s: float = 120.0, python: str | None = None):
        self.metadata_dir = Path(metadata_dir)
        self.transport = transport
        self.root = Path(root) if root is not None else None
        self.timeout_s = timeout_s
        self.python = python or sys.executable
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        if self.root is not None and not self.root.is_file():
            raise errors.KeyFileError(f"{self.root}: cannot read trusted root (no such file)")
        if self.root is None and not (self.metadata_dir / "root.json").exists():
            raise errors.KeyFileError(f"{self.metadata_dir}: no root.json cached and no trusted root given; provision the device with the repository's root.json")
        self._targets: dict[str, TargetRecord] | None = None
        self._command_keys_field: Any = {}
        self._versions: dict[str, int] = {}
        self.refreshes = 0

    # -- the TrustClient surface ----------------------------------------------------------------
    def refresh(self) -> None:
        """Run the TUF client workflow in a child process; TrustError subclasses as TrustClient raises them."""
        result = self._run_child({"op": "refresh"})
        try:
            targets = {t["name"]: TargetRecord.from_wire(t) for t in result["targets"]}
            versions = {str(k): int(v) for k, v in result["versions"].items()}
            keys_field = result.get("command_keys", {})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise errors.MalformedMetadataError(f"TUF worker: malformed answer ({e})") from e
        self._targets, self._versions, self._command_keys_field = targets, versions, keys_field
        self.refreshes += 1

    def _ready(self) -> dict[str, TargetRecord]:
        if self._targets is None:
            self.refresh()
        assert self._targets is not None  # refresh() sets it or raises
        return self._targets

    def trusted_versions(self) -> dict[str, int]:
        """Versions of the trusted top-level metadata after the last refresh."""
        self._ready()
        return dict(self._versions)

    def get_target(self, name: str) -> TargetRecord:
        """The signed record of target path ``name``; UnknownTargetError when it is not listed."""
        record = self._ready().get(name)
        if record is None:
            raise errors.UnknownTargetError(f"the repository's signed targets do not list {name!r}")
        return record

    def get_bundle(self, bundle_name: str, version: str, profile: str | None = None) -> TargetRecord:
        """The signed record of a bundle by name and version (target path convention); with
        ``profile``, the one built for that profile (the plain path when its signed profile is
        that one, else the profile's own path: see :func:`~edgeops.trust.targets.profile_target_path`)."""
        if profile is None:
            return self.get_target(target_path(bundle_name, version))
        return pick_bundle_target(self.get_target, bundle_name, version, profile)

    def targets(self) -> list[TargetRecord]:
        """Every target the top-level targets role signs (edgeops repositories delegate none)."""
        return list(self._ready().values())

    def command_keys(self) -> list[VerifyKey]:
        """The console's command keys signed into the trusted root (see TrustClient.command_keys)."""
        self._ready()
        return verify_keys_from_field(self._command_keys_field, f"root.json: {COMMAND_KEYS_FIELD}")

    def download_target(self, record: TargetRecord, dest: str | Path) -> Path:
        """Fetch a target into ``dest`` through the parent's transport, checked against its signed length and hashes."""
        return download_target(self.transport, record, dest)

    # -- the child ------------------------------------------------------------------------------
    def _run_child(self, request: dict) -> dict:
        args = [self.python, "-m", "edgeops.trust.worker", str(self.metadata_dir), str(self.root) if self.root else ""]
        env = dict(os.environ)
        # The child must import this same edgeops (a source checkout run without pip install too).
        package_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([package_parent, *filter(None, [env.get("PYTHONPATH")])])
        try:
            proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        except OSError as e:
            raise errors.RepositoryUnavailableError(f"cannot start the TUF worker ({self.python}): {e}; check the interpreter exists, or set trust.metadata_worker = false") from e
        assert proc.stdin is not None and proc.stdout is not None
        try:
            _write_line(proc.stdin, request)
            while True:
                msg = self._read(proc)
                if "fetch" in msg:
                    _write_line(proc.stdin, self._answer_fetch(msg))
                elif "result" in msg and isinstance(msg["result"], dict):
                    return msg["result"]
                elif "error" in msg:
                    raise _error_class(msg["error"])(str(msg.get("message", "")))
                else:
                    raise errors.MalformedMetadataError(f"TUF worker: unexpected message {str(msg)[:200]}")
        except (BrokenPipeError, ConnectionResetError) as e:
            raise errors.RepositoryUnavailableError(f"the TUF worker exited early (code {proc.poll()})") from e
        finally:
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _read(self, proc: subprocess.Popen) -> dict:
        deadline = time.monotonic() + self.timeout_s
        fd = proc.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                raise errors.RepositoryUnavailableError(f"the TUF worker gave no answer for {self.timeout_s:.0f}s and was killed; the update is retried (a host this slow may need trust.metadata_worker = false)")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                break
        line = proc.stdout.readline(MAX_LINE_BYTES)
        if not line:
            code = proc.wait()
            raise errors.RepositoryUnavailableError(f"the TUF worker exited with code {code} before answering (its traceback is in the agent's log); the update is retried")
        try:
            msg = json.loads(line)
        except ValueError as e:
            raise errors.MalformedMetadataError(f"TUF worker: not a JSON line ({e})") from e
        if not isinstance(msg, dict):
            raise errors.MalformedMetadataError("TUF worker: expected a JSON object")
        return msg

    def _answer_fetch(self, msg: dict) -> dict:
        path, max_length = msg.get("fetch"), msg.get("max_length")
        if not isinstance(path, str) or not isinstance(max_length, int) or max_length < 0:
            return {"error": "MalformedMetadataError", "message": "bad fetch request"}
        try:
            data = bytearray()
            for chunk in self.transport.fetch(path, max_length):
                data += chunk
                if len(data) > max_length:
                    break  # the child reports endless data; no point reading on
            return {"data": base64.b64encode(bytes(data)).decode()}
        except errors.TrustError as e:
            return {"error": type(e).__name__, "message": str(e)}
        except Exception as e:  # a transport that broke its contract is still a transport failure
            return {"error": "RepositoryUnavailableError", "message": f"{path}: {e!r}"}


def _write_line(stream: BinaryIO, msg: dict) -> None:
    stream.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
    stream.flush()


class PipeTransport:
    """The child's transport: asks the parent for each file over the pipe."""

    def __init__(self, requests: BinaryIO, answers: BinaryIO):
        self.requests = requests
        self.answers = answers

    def fetch(self, path: str, max_length: int):
        """One file's bytes, fetched by the parent (raises the parent's TrustError class)."""
        _write_line(self.requests, {"fetch": path, "max_length": max_length})
        line = self.answers.readline(MAX_LINE_BYTES)
        if not line:
            raise SystemExit(0)  # the parent is gone: nothing left to verify for
        msg = json.loads(line)
        if "data" in msg:
            return iter([base64.b64decode(msg["data"])])
        raise _error_class(msg.get("error"))(str(msg.get("message", "")))


def main(argv: list[str]) -> int:
    """Child entry point: ``python -m edgeops.trust.worker METADATA_DIR ROOT_JSON_OR_EMPTY``."""
    # The protocol owns the real stdout; anything else printed (a library's warning) goes to stderr.
    answers = sys.stdin.buffer
    requests = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr
    from edgeops.trust.client import TrustClient

    metadata_dir, root = argv[0], (argv[1] or None)
    line = answers.readline(MAX_LINE_BYTES)
    if not line:
        return 0
    try:
        request = json.loads(line)
        if request.get("op") != "refresh":
            raise errors.TrustError(f"TUF worker: unknown request {str(request)[:100]}")
        client = TrustClient(metadata_dir, PipeTransport(requests, answers), root=root)
        client.refresh()
        result = {
            "versions": client.trusted_versions(),
            "targets": [t.to_wire() for t in client.targets()],
            "command_keys": client.root_field(COMMAND_KEYS_FIELD) or {},
        }
        _write_line(requests, {"result": result})
    except errors.TrustError as e:
        _write_line(requests, {"error": type(e).__name__, "message": str(e)})
    except (BrokenPipeError, ConnectionResetError):
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
