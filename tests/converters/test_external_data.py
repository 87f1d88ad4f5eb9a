"""An ONNX model with its weights in external data builds into a bundle that carries the data
file (size and sha256 in the manifest), installs in the agent's store and passes its self-test."""

from __future__ import annotations

import io
import json
import tarfile

import onnx
import pytest

from edgeops.bundle import read_bundle, sha256_bytes, sha256_file
from edgeops.errors import BundleError
from tests.converters.conftest import run_cli
from tests.support.onnx_models import conv_net, write_data


@pytest.fixture
def external_model(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    path = folder / "net.onnx"
    onnx.save_model(conv_net(opset=13, style="initializers", channels=24), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="net.weights", size_threshold=1024)
    assert (folder / "net.weights").stat().st_size > 10_000 and path.stat().st_size < 5_000
    return path


def _build(model, data, out, capsys):
    return run_cli([
        "build", model, "--profile", "x86_64-avx512-vnni", "--name", "ext", "--version", "1",
        "--calibration", data["calibration"], "--validation", data["validation"], "--json", "-o", out,
    ], capsys)


def test_external_data_model_round_trips_into_a_bundle_and_passes_the_agent_self_test(external_model, tmp_path, capsys):
    from edgeops.agent.config import SelfTestConfig
    from edgeops.agent.runtimes import load_runtime
    from edgeops.agent.selftest import run_self_test
    from edgeops.agent.store import ModelStore

    data = write_data(tmp_path)
    out = tmp_path / "ext.bundle"
    code, stdout, stderr = _build(external_model, data, out, capsys)
    assert code == 0, stderr
    report = json.loads(stdout)["report"]
    assert report["quantization"]["scheme"] == "static-int8"
    assert any(p.startswith("external-data: weights in model/model.onnx.data") for p in report["passes"])
    contents = read_bundle(out)
    files = contents.manifest.files
    assert set(files) >= {"model/model.onnx", "model/model.onnx.data"}
    for name in ("model/model.onnx", "model/model.onnx.data"):
        assert files[name].sha256 == sha256_bytes(contents.files[name]) and files[name].size == len(contents.files[name])
    graph = onnx.load_model_from_string(contents.files["model/model.onnx"])
    locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}
    # edgeops inspect lists the data file with its hash.
    code, listing, _ = run_cli(["inspect", out], capsys)
    assert code == 0 and "model/model.onnx.data" in listing
    # The same inputs give the same bytes.
    again = tmp_path / "again.bundle"
    assert _build(external_model, data, again, capsys)[0] == 0
    assert sha256_file(again) == sha256_file(out)
    # The device installs it as the agent does and self-tests it (onnxruntime reads the data file
    # beside the model file).
    store = ModelStore(tmp_path / "store")
    digest = sha256_file(out)
    manifest = store.install(out, digest)
    assert (store.files_dir(digest) / "model" / "model.onnx.data").exists()
    result = run_self_test(store.files_dir(digest), manifest, SelfTestConfig(), load_runtime, [], 1)
    assert result.passed, result.summary()


def test_tampered_external_data_is_refused(external_model, tmp_path, capsys):
    data = write_data(tmp_path)
    out = tmp_path / "ext.bundle"
    assert _build(external_model, data, out, capsys)[0] == 0
    # Rewrite the bundle with one byte of the weights file flipped (same size, same order).
    tampered = tmp_path / "tampered.bundle"
    with tarfile.open(out) as src, tarfile.open(tampered, "w", format=tarfile.USTAR_FORMAT) as dst:
        for member in src.getmembers():
            raw = src.extractfile(member).read()
            if member.name == "model/model.onnx.data":
                raw = raw[:100] + bytes([raw[100] ^ 1]) + raw[101:]
            dst.addfile(member, io.BytesIO(raw))
    with pytest.raises(BundleError, match="model/model.onnx.data"):
        read_bundle(tampered)



def test_model_over_the_protobuf_limit_is_refused_naming_its_size(external_model, tmp_path, capsys, monkeypatch):
    # A real > 2 GiB model is too big for CI: lower the limit the loader checks against instead.
    from edgeops.converters import source

    monkeypatch.setattr(source, "PROTOBUF_LIMIT", 20_000)
    code, _, stderr = run_cli(["build", external_model, "--profile", "x86_64-avx512-vnni", "--name", "e", "--version", "1", "-o", tmp_path / "e.bundle"], capsys)
    assert code == 4 and "net.onnx" in stderr and "2 GiB" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "e.bundle").exists()
