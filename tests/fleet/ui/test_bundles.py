"""The Bundles page's data: manifest, build report and provenance from the signed bundle files."""

from __future__ import annotations

import shutil

from edgeops.fleet.ui import bundles


def test_published_bundles_with_manifest_report_and_provenance(fleet_repo):
    out = {b["ref"]: b for b in bundles.published_bundles(fleet_repo["repo"])}
    assert sorted(out) == ["digits@1.0.0", "digits@2.0.0", "digits@3.0.0"]
    b = out["digits@2.0.0"]
    assert "error" not in b and b["manifest"]["version"] == "2.0.0" and b["target"] == "digits/2.0.0/digits-2.0.0.bundle"
    assert isinstance(b["build_report"], dict) and b["provenance"]["source_format"] == "onnx"
    assert bundles.bundle_refs(fleet_repo["repo"]) == sorted(out)


def test_a_changed_bundle_file_is_shown_as_such(tmp_path, fleet_repo):
    repo = tmp_path / "repo"
    shutil.copytree(fleet_repo["repo"], repo)
    files = sorted((repo / "targets" / "digits" / "1.0.0").glob("*.bundle"))
    assert files
    for f in files:
        data = bytearray(f.read_bytes())
        data[-1] ^= 1
        f.write_bytes(bytes(data))
    bundles._CACHE.clear()  # the real bundles were read (and cached by hash) by the test above
    out = {b["ref"]: b for b in bundles.published_bundles(repo)}
    assert "does not match its signed target's sha256" in out["digits@1.0.0"]["error"] and "manifest" not in out["digits@1.0.0"]
    assert "error" not in out["digits@2.0.0"]


def test_bundle_card_shows_build_gates_and_sizes():
    from edgeops.fleet.ui.pages import bundles_body

    html = bundles_body([{"ref": "det@1.0.0", "target": "det/1.0.0/det-1.0.0.bundle", "length": 10, "sha256": "ab" * 32,
                          "manifest": {"profile": "p", "runtime": "onnxruntime", "release": 3, "budgets": {"latency_p95_ms": 12.5}},
                          "build_report": {"status": "passed", "size": {"built_bytes": 7, "original_bytes": 9}, "gates": [{"gate": "max_accuracy_drop", "value": 0.4, "limit": 1.0, "unit": "points", "passed": True}, {"gate": "max_bundle_mb", "value": 120, "limit": 100, "unit": "MB", "passed": False}]},
                          "provenance": {"source_format": "onnx"}}])
    assert "<dt>Latency budget p95</dt><dd>12.5 ms</dd>" in html and "7 bytes (original 9)" in html
    assert 'class="build-gates"' in html and "max_bundle_mb" in html and 'badge bad">fail' in html
