"""Per-process verification memos: repeats of a success are answered from memory, failures never are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeops.fleet.simulator import verifymemo
from edgeops.fleet.simulator.verifymemo import Memo, memo_check_canonical, memo_check_no_bad_signatures, memo_verify_signature
from edgeops.trust import errors
from tests.agent.helpers import TrustFixture


@pytest.fixture(scope="module")
def tf(tmp_path_factory):
    t = TrustFixture(tmp_path_factory.mktemp("memo"))
    t.v1 = t.publish("1.0.0", 1)
    return t


class Counting:
    """Wraps a real check and counts how often it really ran."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def test_memo_is_bounded_lru():
    m = Memo(max_entries=2)
    m.put("a")
    m.put("b")
    assert m.get("a")  # a is now the most recent
    m.put("c")
    assert m.get("b") is None and m.get("a") and m.get("c")
    assert m.stats()["entries"] == 2


def test_signature_memo_answers_repeats_and_recomputes_failures(tf):
    from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError
    from securesystemslib.signer import Signature
    from securesystemslib.signer._key import SSlibKey
    from tuf.api.metadata import Metadata

    md = Metadata.from_file(str(tf.repo_dir / "metadata" / "timestamp.json"))
    root = Metadata.from_file(str(tf.repo_dir / "metadata" / "1.root.json")).signed
    (keyid, sig), = md.signatures.items()
    key = root.keys[keyid]
    real = Counting(SSlibKey.verify_signature)
    verify = memo_verify_signature(real, Memo())
    data = md.signed_bytes
    for _ in range(3):
        verify(key, sig, data)
    assert real.calls == 1
    # other bytes under the same signature: recomputed, and refused, every time
    for _ in range(2):
        with pytest.raises((UnverifiedSignatureError, VerificationError)):
            verify(key, sig, data + b" ")
    # a tampered signature value on the same bytes: refused every time
    bad = Signature(keyid, ("0" if sig.signature[0] != "0" else "1") + sig.signature[1:])
    for _ in range(2):
        with pytest.raises((UnverifiedSignatureError, VerificationError)):
            verify(key, bad, data)
    assert real.calls == 5


def test_canonical_memo_still_refuses_altered_bytes(tf):
    from edgeops.trust.client import check_canonical_encoding

    real = Counting(check_canonical_encoding)
    check = memo_check_canonical(real, Memo())
    data = (tf.repo_dir / "metadata" / "timestamp.json").read_bytes()
    check(data, "timestamp.json")
    check(data, "timestamp.json")
    assert real.calls == 1
    altered = json.dumps(json.loads(data), indent=4, sort_keys=True).encode()  # same content, other encoding
    for _ in range(2):
        with pytest.raises(errors.MalformedMetadataError):
            check(altered, "timestamp.json")
    assert real.calls == 3


def test_no_bad_signatures_memo_is_keyed_by_the_file_and_the_trusted_keys(tf, tmp_path):
    from tuf.api.metadata import Metadata

    from edgeops.trust.client import check_no_bad_signatures

    real = Counting(check_no_bad_signatures)
    check = memo_check_no_bad_signatures(real, Memo())
    root = Metadata.from_file(str(tf.repo_dir / "metadata" / "1.root.json")).signed
    data = (tf.repo_dir / "metadata" / "timestamp.json").read_bytes()
    check(data, "timestamp.json", root)
    check(data, "timestamp.json", root)
    assert real.calls == 1
    # the same file against a root that trusts other timestamp keys: checked again, and refused
    other = TrustFixture(tmp_path / "other")
    other_root = Metadata.from_file(str(other.repo_dir / "metadata" / "1.root.json")).signed
    for _ in range(2):
        with pytest.raises(errors.SignatureError):
            check(data, "timestamp.json", other_root)
    assert real.calls == 3


def test_install_wraps_the_checks_in_a_simulator_process(tf, tmp_path):
    """install() patches process-wide, so it runs in a child process here (as in the simulator)."""
    code = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[3])!r})
from edgeops.fleet.simulator import verifymemo
memos = verifymemo.install()
assert verifymemo.install() is memos  # idempotent
from edgeops.trust.client import TrustClient
from edgeops.trust.transport import DirectoryTransport
for i in range(3):
    c = TrustClient({str(tmp_path)!r} + f"/dev{{i}}", DirectoryTransport({str(tf.repo_dir)!r}), root={str(tf.root_json)!r})
    c.refresh()
    c.get_target({tf.v1.target_name!r})
print(json.dumps(verifymemo.stats()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["signatures"]["hits"] > 0 and stats["canonical"]["hits"] > 0 and stats["no_bad_signatures"]["hits"] > 0
    assert verifymemo.stats() == {}  # this (test) process was left alone
