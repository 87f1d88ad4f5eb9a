"""Bundle format: deterministic writing, reading, safe extraction, inspect."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgeops.bundle import extract_bundle, read_bundle, sha256_file
from edgeops.errors import BundleError
from tests.support.bundles import write_test_bundle


def test_bundle_is_deterministic(tmp_path):
    write_test_bundle(tmp_path / "a.bundle")
    write_test_bundle(tmp_path / "b.bundle")
    assert sha256_file(tmp_path / "a.bundle") == sha256_file(tmp_path / "b.bundle")


def test_read_and_extract_roundtrip(tmp_path):
    m = write_test_bundle(tmp_path / "a.bundle", name="digits", version="2.0.0", release=7)
    contents = read_bundle(tmp_path / "a.bundle")
    assert contents.manifest == m
    assert set(contents.files) == set(m.files)
    out = tmp_path / "x"
    assert extract_bundle(tmp_path / "a.bundle", out) == m
    assert (out / "model" / "model.onnx").read_bytes() == contents.files["model/model.onnx"]


def test_tampered_member_is_refused_and_nothing_extracted(tmp_path):
    path = tmp_path / "a.bundle"
    write_test_bundle(path)
    data = bytearray(path.read_bytes())
    idx = data.find(b"edgeops_test_good")
    data[idx] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        read_bundle(path)
    with pytest.raises(BundleError):
        extract_bundle(path, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_not_a_bundle(tmp_path):
    p = tmp_path / "junk.bundle"
    p.write_bytes(b"hello")
    with pytest.raises(BundleError, match="junk.bundle"):
        read_bundle(p)


def test_inspect_cli(tmp_path):
    write_test_bundle(tmp_path / "a.bundle", version="3.1.0")
    out = subprocess.run([sys.executable, "-m", "edgeops.cli", "inspect", str(tmp_path / "a.bundle"), "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["manifest"]["version"] == "3.1.0" and doc["golden_cases"] == 3
    bad = subprocess.run([sys.executable, "-m", "edgeops.cli", "inspect", str(tmp_path / "missing.bundle")], capture_output=True, text=True)
    assert bad.returncode == 6 and "missing.bundle" in bad.stderr
