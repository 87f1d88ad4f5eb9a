"""`edgeops hil run --local` through the real CLI: JUnit XML parsed, exit codes a CI can gate on."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from tests.support.bundles import write_test_bundle


def _hil(*args):
    return subprocess.run([sys.executable, "-m", "edgeops.cli", "hil", "run", *args], capture_output=True, text=True, timeout=120)


def _cases(xml_path):
    root = ET.parse(xml_path).getroot()
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    return root, cases, props


def test_good_bundle_passes_with_valid_junit(tmp_path):
    bundle = tmp_path / "good.bundle"
    write_test_bundle(bundle)
    out = _hil(str(bundle), "--local", "--runs", "30", "--junit", str(tmp_path / "j.xml"), "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    root, cases, props = _cases(tmp_path / "j.xml")
    assert root.get("failures") == "0"
    for name in ("bundle_integrity", "self_test.load", "self_test.golden", "self_test.latency_p95", "latency_p95_budget"):
        assert name in cases and cases[name].find("failure") is None
    assert float(props["latency_p99_ms"]) >= float(props["latency_p50_ms"]) > 0
    assert props["profile"] == "x86_64-avx512-vnni"
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["passed"] is True and doc["figures"]["runs"] == 30


def test_golden_mismatch_fails_with_failing_case(tmp_path):
    bundle = tmp_path / "bad-golden.bundle"
    write_test_bundle(bundle, golden_ok=False)
    out = _hil(str(bundle), "--local", "--runs", "10", "--junit", str(tmp_path / "j.xml"))
    assert out.returncode == 10, out.stderr
    assert "self_test.golden" in out.stderr
    root, cases, _ = _cases(tmp_path / "j.xml")
    assert int(root.get("failures")) >= 1
    assert cases["self_test.golden"].find("failure") is not None


def test_latency_over_budget_fails(tmp_path):
    bundle = tmp_path / "slow.bundle"
    write_test_bundle(bundle, variant="slow", latency_p95_ms=1.0)
    out = _hil(str(bundle), "--local", "--runs", "10", "--junit", str(tmp_path / "j.xml"))
    assert out.returncode == 10
    _, cases, _ = _cases(tmp_path / "j.xml")
    assert cases["latency_p95_budget"].find("failure") is not None


def test_tampered_bundle_fails_integrity(tmp_path):
    bundle = tmp_path / "t.bundle"
    write_test_bundle(bundle)
    data = bytearray(bundle.read_bytes())
    data[data.find(b"edgeops_test_good")] ^= 1
    bundle.write_bytes(bytes(data))
    out = _hil(str(bundle), "--local", "--junit", str(tmp_path / "j.xml"))
    assert out.returncode == 10
    _, cases, _ = _cases(tmp_path / "j.xml")
    assert cases["bundle_integrity"].find("failure") is not None


@pytest.mark.parametrize("args, needle", [(["x.bundle"], "exactly one"), (["x.bundle", "--local"], "does not exist"), (["m@1", "--device", "d1"], "--fleet")])
def test_usage_errors(tmp_path, args, needle):
    out = _hil(*args)
    assert out.returncode == 2 and needle in out.stderr


def test_accelerator_profile_on_a_cpu_only_onnxruntime_fails_the_provider_check(tmp_path):
    """A Jetson bundle run where onnxruntime has no CUDA/TensorRT: onnxruntime quietly runs it on
    the CPU; the report must say so instead of quoting CPU latency as the device's."""
    import onnxruntime as ort

    from edgeops.profiles import load_profile

    if {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers()):
        pytest.skip("this onnxruntime has a GPU provider: the fallback cannot happen here")
    bundle = tmp_path / "jetson.bundle"
    write_test_bundle(bundle, profile="jetson-orin-nano", providers=load_profile("jetson-orin-nano").runtime.providers)
    out = _hil(str(bundle), "--local", "--runs", "5", "--junit", str(tmp_path / "j.xml"), "--json", str(tmp_path / "r.json"))
    assert out.returncode == 10
    _, cases, props = _cases(tmp_path / "j.xml")
    failure = cases["execution_provider"].find("failure")
    assert failure is not None and "fell back to the CPU" in failure.get("message", "") + (failure.text or "")
    assert props["providers"] == "CPUExecutionProvider"


def test_cpu_profile_reports_the_provider_it_ran_on(tmp_path):
    bundle = tmp_path / "cpu.bundle"
    write_test_bundle(bundle)
    out = _hil(str(bundle), "--local", "--runs", "5", "--junit", str(tmp_path / "j.xml"))
    assert out.returncode == 0, out.stderr
    _, cases, props = _cases(tmp_path / "j.xml")
    assert cases["execution_provider"].find("failure") is None
    assert props["providers"] == "CPUExecutionProvider"
