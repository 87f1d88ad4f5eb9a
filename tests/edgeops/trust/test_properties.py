"""Property tests: the extractor, the bundle scanner and the command parser on arbitrary bytes
raise only typed errors, never anything else (and never accept garbage)."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeops.bundle import extract_bundle, read_bundle
from edgeops.errors import BundleError
from edgeops.trust import errors
from edgeops.trust.commands import CommandVerifier, parse_envelope
from edgeops.trust.keys import load_signer
from edgeops.trust.verify import BundleScanner
from tests.edgeops.trust.helpers import make_bundle, raw_tar

_TMP = Path(tempfile.mkdtemp(prefix="edgeops-prop-"))
_GOOD = make_bundle(_TMP / "good.bundle").read_bytes()

# Arbitrary bytes, and bytes that look like a tar (a real header prefix, then noise): the
# second kind reaches deeper into the parsers than random noise does.
tarish = st.builds(lambda cut, noise: _GOOD[:cut] + noise, st.integers(0, len(_GOOD)), st.binary(max_size=2048))
members = st.lists(
    st.tuples(st.text(min_size=1, max_size=40), st.binary(max_size=64), st.sampled_from([b"0", b"1", b"2", b"3", b"5", b"S", b"7", b"x", b"L"])),
    max_size=4,
)
anything = st.one_of(st.binary(max_size=4096), tarish)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _weird_tar(entries) -> bytes:
    out = []
    for name, data, kind in entries:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = len(data) if kind in (b"0", b"7", b"S") else 0
        info.linkname = "../x" if kind in (b"1", b"2") else ""
        out.append((info, data if info.size else None))
    try:
        return raw_tar(out)
    except (ValueError, tarfile.TarError, UnicodeError):
        return b""


def _only_bundle_errors(data: bytes) -> None:
    for fn in (lambda: read_bundle(io.BytesIO(data)), lambda: _scan(data)):
        try:
            fn()
        except BundleError:
            pass
    dest = Path(tempfile.mkdtemp(dir=_TMP)) / "out"
    try:
        extract_bundle(io.BytesIO(data), dest, max_total_bytes=1 << 20)
    except BundleError:
        assert not dest.exists() and not dest.with_name("out.partial").exists()


def _scan(data: bytes) -> None:
    s = BundleScanner(max_total_bytes=1 << 20)
    s.feed(data)
    s.finish()


@SETTINGS
@given(anything)
def test_extractor_and_scanner_raise_only_bundle_errors(data):
    if data == _GOOD:
        return
    _only_bundle_errors(data)


@SETTINGS
@given(members)
def test_extractor_on_arbitrary_tar_members(entries):
    data = _weird_tar(entries)
    _only_bundle_errors(data)
    # Such archives never start with a valid manifest, so nothing may be accepted.
    try:
        read_bundle(io.BytesIO(data))
    except BundleError:
        return
    raise AssertionError("an arbitrary tar was accepted as a bundle")


@SETTINGS
@given(st.binary(max_size=70000) | st.builds(lambda d: json.dumps(d).encode(), st.recursive(st.none() | st.booleans() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=20)))
def test_command_parser_raises_only_command_errors(data):
    try:
        parse_envelope(data)
    except errors.MalformedCommandError:
        pass


_KEYS = _TMP / "keys"


def _verifier():
    from edgeops.trust.keys import Keyring

    if not (_KEYS / "keyring.json").exists():
        Keyring.create(_KEYS, root_keys=1, root_threshold=1)
    return CommandVerifier("dev-1", Keyring.load(_KEYS).public_keys("command"), _TMP / "cmd-state.json")


envelopes = st.fixed_dictionaries(
    {
        "payloadType": st.sampled_from(["application/vnd.edgeops.command+json", "x", ""]),
        "payload": st.one_of(st.text(max_size=40), st.binary(max_size=200).map(lambda b: __import__("base64").b64encode(b).decode())),
        "signatures": st.lists(st.fixed_dictionaries({"keyid": st.text(max_size=70), "sig": st.text(max_size=100)}), max_size=3),
    }
).map(lambda d: json.dumps(d).encode())


@SETTINGS
@given(st.one_of(st.binary(max_size=2000), envelopes))
def test_command_verifier_raises_only_command_errors(data):
    try:
        _verifier().verify(data)
    except errors.CommandError:
        return
    raise AssertionError("garbage was accepted as a command")


def test_load_signer_garbage_is_key_file_error(tmp_path):
    p = tmp_path / "x.key"
    for junk in (b"", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", bytes(range(256))):
        p.write_bytes(junk)
        try:
            load_signer(p)
        except errors.KeyFileError:
            continue
        raise AssertionError(junk)
