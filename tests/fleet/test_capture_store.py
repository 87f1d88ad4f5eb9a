"""The console's capture store and dataset export (issue 17): chunks assembled, checked and
stored once; samples not sealed to the console or naming another device refused; labels
imported; the export round-trips into a real `edgeops build` whose manifest records the
export's sha256. SQLite and PostgreSQL (the index table), real PyNaCl, real onnxruntime."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from nacl.public import PrivateKey

from edgeops.agent.capture import encode_sample, seal
from edgeops.fleet.capture import public_key_b64
from edgeops.fleet.capture_store import CaptureDataError, CaptureStore, SampleFilter, export_samples, import_labels, list_samples
from edgeops.protocol import CaptureAck, CaptureChunk, encode_capture_chunk
from tests.support.bundles import make_onnx_model, sample_inputs

TOPIC = "edgeops/v1/cam-1/capture"


def sealed(key, x: np.ndarray, device: str = "cam-1", ts: float = 1.0, version: str = "1.0.0", trigger: str = "random") -> bytes:
    meta = {"device_id": device, "ts": ts, "trigger": trigger, "model": {"name": "digits", "version": version, "sha256": "a" * 64}, "rollout_id": None, "policy_id": "p"}
    return seal(public_key_b64(key), encode_sample({"input": x}, {"probs": np.ones((len(x), 10), np.float32) / 10}, meta))


def chunks(blob: bytes, size: int = 300) -> list[bytes]:
    sid = hashlib.sha256(blob).hexdigest()
    total = -(-len(blob) // size)
    return [encode_capture_chunk(CaptureChunk(sample_id=sid, index=i, total=total, size=len(blob)), blob[i * size : (i + 1) * size]) for i in range(total)]


@pytest.fixture
def store(db, tmp_path):
    db.create_all()
    sent: list[tuple[str, CaptureAck]] = []
    s = CaptureStore(db, tmp_path / "capture", PrivateKey.generate(), publish=lambda t, p: sent.append((t, CaptureAck.parse_json(p))))
    s.sent = sent
    return s


def test_chunks_assemble_out_of_order_missing_ones_asked_and_a_sample_stored_once(store):
    x = sample_inputs(1, seed=3)
    parts = chunks(sealed(store.private_key, x))
    assert len(parts) >= 3
    for p in parts[1:]:  # chunk 0 lost
        assert store.handle(TOPIC, p).status == "partial"
    topic, ack = store.sent[-1]
    assert topic == "edgeops/v1/cam-1/capture/ack" and ack.status == "missing" and ack.missing == [0]
    acked = []
    assert store.handle(TOPIC, parts[0], lambda: acked.append(1)).status == "stored" and acked == [1]
    assert store.sent[-1][1].status == "stored"
    # the device did not get the ack and sends it all again: answered stored, never stored twice
    assert {store.handle(TOPIC, p).status for p in parts} == {"duplicate"}
    rows = list_samples(store.db)
    assert len(rows) == 1 and rows[0]["device_id"] == "cam-1" and rows[0]["tensors"]["in/input"] == {"shape": [1, 16], "dtype": "float32"}
    assert store.object_path(rows[0]["sample_id"]).read_bytes() != x.tobytes()  # sealed at rest
    assert x.tobytes() not in store.object_path(rows[0]["sample_id"]).read_bytes()


def test_samples_not_for_this_console_or_naming_another_device_are_refused(store):
    other = PrivateKey.generate()
    for p in chunks(sealed(other, sample_inputs(1))):
        r = store.handle(TOPIC, p)
    assert r.status == "refused" and "capture key" in store.sent[-1][1].detail
    for p in chunks(sealed(store.private_key, sample_inputs(1), device="cam-2")):
        r = store.handle(TOPIC, p)
    assert r.status == "refused" and "names device 'cam-2'" in store.sent[-1][1].detail
    assert store.handle(TOPIC, b"\x00\x00\x00\x05junk").status == "malformed"
    assert store.handle("edgeops/v1/cam-1/events", chunks(sealed(store.private_key, sample_inputs(1)))[0]).status == "malformed"
    assert list_samples(store.db) == [] and store.counts["refused"] == 2 and store.counts["malformed"] == 2


def test_labels_and_an_export_that_round_trips_into_edgeops_build(store, tmp_path, capsys):
    from tests.converters.conftest import run_cli

    xs = [sample_inputs(1, seed=s) for s in range(12)]
    for i, x in enumerate(xs):
        for p in chunks(sealed(store.private_key, x, ts=100.0 + i, version="1.0.0" if i < 10 else "2.0.0")):
            store.handle(TOPIC, p)
    rows = list_samples(store.db, SampleFilter(version="digits@1.0.0"))
    assert [r["ts"] for r in rows] == [100.0 + i for i in range(10)]
    with pytest.raises(CaptureDataError, match="no label"):
        export_samples(store.db, store.folder, store.private_key, tmp_path / "v.npz", SampleFilter(version="1.0.0"), with_labels=True)
    csv = tmp_path / "labels.csv"
    csv.write_text("sample_id,label\n" + "".join(f"{r['sample_id'][:12]},{i % 10}\n" for i, r in enumerate(rows)))
    assert import_labels(store.db, csv) == 10
    bad = tmp_path / "bad.csv"
    bad.write_text(f"sample_id,label\n{rows[0]['sample_id']},cat\n")
    with pytest.raises(CaptureDataError, match=r"bad.csv:2: label 'cat'"):
        import_labels(store.db, bad)

    e = export_samples(store.db, store.folder, store.private_key, tmp_path / "val.npz", SampleFilter(version="1.0.0"))
    assert e.samples == 10 and e.labels
    with np.load(e.path) as z:
        np.testing.assert_array_equal(z["input"], np.concatenate(xs[:10]))
        assert list(z["labels"]) == [i % 10 for i in range(10)]
    assert e.sha256 == hashlib.sha256(e.path.read_bytes()).hexdigest()

    model = tmp_path / "digits.onnx"
    model.write_bytes(make_onnx_model())
    code, out, err = run_cli(["build", model, "--profile", "x86_64-avx2", "--name", "digits", "--version", "3.0.0", "--quantize", "none",
                              "--validation", e.path, "-o", tmp_path / "v3.bundle", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["manifest"]["provenance"]["validation_sha256"] == e.sha256
    assert doc["report"]["metrics"]["feeds"] == 10
    assert "accuracy" in json.dumps(doc["report"]["metrics"]), doc["report"]["metrics"]  # the labels reached the build
    # the folder form reads the same and hashes as the build hashes a folder
    f = export_samples(store.db, store.folder, store.private_key, tmp_path / "feeds", SampleFilter(version="1.0.0"))
    code, out, err = run_cli(["build", model, "--profile", "x86_64-avx2", "--name", "digits", "--version", "3.0.1", "--quantize", "none",
                              "--validation", f.path, "-o", tmp_path / "v3b.bundle", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["manifest"]["provenance"]["validation_sha256"] == f.sha256


def test_a_device_cannot_fill_the_console_with_unfinished_or_huge_uploads(store):
    from edgeops.fleet import capture_store as cs

    for i in range(cs.MAX_PARTIAL_PER_DEVICE + 5):  # first chunks only, never finished
        blob = sealed(store.private_key, sample_inputs(1, seed=100 + i))
        assert store.handle(TOPIC, chunks(blob)[0]).status == "partial"
    assert len(list((store.partial / "cam-1").iterdir())) == cs.MAX_PARTIAL_PER_DEVICE
    head = CaptureChunk(sample_id="b" * 64, index=0, total=4096, size=cs.MAX_SAMPLE_BYTES + 1)
    assert store.handle(TOPIC, encode_capture_chunk(head, b"x" * 10)).status == "refused"
    assert "over the console's bound" in store.sent[-1][1].detail


def test_chunks_of_devices_another_fleet_enrolled_are_left_alone(db, tmp_path):
    """Two fleets' consoles on one broker both see a device's chunks: the one that does not know
    the device answers nothing and keeps nothing (a "refused" from it made the device drop a
    sample its own console was storing)."""
    from edgeops.fleet.registry import device_known, register_devices

    db.create_all()
    register_devices(db, [{"id": "cam-1", "profile": "x86_64-avx2"}])
    assert device_known(db, "cam-1") and not device_known(db, "cam-9")
    sent = []
    own_key, other_fleet_key = PrivateKey.generate(), PrivateKey.generate()
    store = CaptureStore(db, tmp_path / "capture", own_key, publish=lambda t, p: sent.append(t), known_device=lambda d: device_known(db, d))
    for p in chunks(sealed(other_fleet_key, sample_inputs(1), device="cam-9")):
        assert store.handle("edgeops/v1/cam-9/capture", p).status == "foreign"
    assert sent == [] and not (tmp_path / "capture" / "partial" / "cam-9").exists() and store.counts["foreign"] >= 1
    for p in chunks(sealed(own_key, sample_inputs(1))):  # its own devices' samples are stored as before
        r = store.handle(TOPIC, p)
    assert r.status == "stored" and len(list_samples(db)) == 1
