"""PyTorch inputs: TorchScript and ExportedProgram files, and the samples module."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeops.converters import samples

from .conftest import run_cli


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_torchscript_file_builds_with_input_shape(tmp_path, capsys):
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(_Tiny().eval()), str(path))
    out = tmp_path / "ts.bundle"
    code, stdout, err = run_cli(["build", path, "--profile", "x86_64-avx2", "--name", "t", "--version", "1", "--quantize", "none",
                                 "--input-shape", "x=1,1,8,8", "--json", "-o", out], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["manifest"]["provenance"]["source_format"] == "torchscript"
    assert doc["manifest"]["inputs"][0]["shape"] == [1, 1, 8, 8]
    assert doc["report"]["metrics"]["top1_agreement"] == 1.0


def test_exported_program_file_builds_with_data_shape(tmp_path, capsys):
    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(_Tiny().eval(), (torch.zeros(1, 1, 8, 8),)), str(path))
    np.save(tmp_path / "val.npy", np.random.default_rng(0).standard_normal((6, 1, 8, 8)).astype(np.float32))
    code, stdout, err = run_cli(["build", path, "--profile", "x86_64-avx2", "--name", "t", "--version", "1", "--quantize", "dynamic-int8",
                                 "--validation", tmp_path / "val.npy", "--json", "-o", tmp_path / "ep.bundle"], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["manifest"]["provenance"]["source_format"] == "exported-program"
    assert doc["report"]["metrics"]["feeds"] == 6


def test_pytorch_model_without_a_shape_says_how_to_give_one(tmp_path, capsys):
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(_Tiny().eval()), str(path))
    code, _, err = run_cli(["build", path, "--profile", "x86_64-avx2", "--name", "t", "--version", "1", "--quantize", "none", "-o", tmp_path / "o"], capsys)
    assert code == 3 and "--input-shape" in err


def test_samples_are_deterministic_and_save_npz(tmp_path):
    a = samples.digits_arrays(size=8)
    b = samples.digits_arrays(size=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    x_train, y_train, x_val, y_val, x_calib = a
    assert x_val.shape[1:] == (1, 8, 8) and len(x_val) == len(y_val) and len(x_calib) == 128
    # calibration comes from the training split, never from held-out validation data
    assert not any(np.array_equal(c, v) for c in x_calib[:5] for v in x_val)


# --- module:factory: transformers architectures (bench/corpus_torch.py), random weights, no download ---


@pytest.mark.slow
def test_transformers_image_model_factory_builds_static_int8_for_vnni(tmp_path, capsys, monkeypatch):
    """A torchvision-style ResNet from transformers' config, found from the current directory as a
    user's own module is (the `edgeops` script's sys.path does not start there)."""
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calibration.npz", pixel_values=rng.standard_normal((16, 3, 64, 64)).astype(np.float32))
    # Random weights give near-tied logits, so top-1 flips under any int8 noise: the agreement gate is
    # lowered here, the cosine gate (0.98) is the profile's.
    code, stdout, err = run_cli(["build", "bench.corpus_torch:resnet_small", "--profile", "x86_64-avx512-vnni", "--name", "resnet", "--version", "1",
                                 "--calibration", tmp_path / "calibration.npz", "--min-agreement", "0.5", "--json", "-o", tmp_path / "resnet.bundle"], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["report"]["quantization"]["scheme"] == "static-int8"  # a conv net
    assert "export-onnx: dynamo exporter, opset 18" in doc["report"]["passes"]
    assert doc["manifest"]["inputs"] == [{"name": "pixel_values", "dtype": "float32", "shape": [1, 3, 64, 64]}]
    assert doc["report"]["metrics"]["outputs"]["output_0"]["cosine_min"] >= 0.98
    assert all(g["passed"] for g in doc["report"]["gates"])


@pytest.mark.slow
def test_bert_factory_with_int64_token_ids_and_mask_builds_dynamic_int8_for_vnni(tmp_path, capsys, monkeypatch):
    """Two integer inputs (token ids, attention mask): exported by dynamo, validated on generated
    inputs that are valid for them (ids within the vocabulary, a 0/1 mask)."""
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    code, stdout, err = run_cli(["build", "bench.corpus_torch:bert_tiny", "--profile", "x86_64-avx512-vnni", "--name", "bert", "--version", "1",
                                 "--quantize", "dynamic-int8", "--json", "-o", tmp_path / "bert.bundle"], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    assert [(i["name"], i["dtype"], i["shape"]) for i in doc["manifest"]["inputs"]] == [("input_ids", "int64", [1, 32]), ("attention_mask", "int64", [1, 32])]
    assert "export-onnx: dynamo exporter, opset 18" in doc["report"]["passes"]
    assert doc["report"]["quantization"]["scheme"] == "dynamic-int8"
    assert doc["report"]["metrics"]["nonfinite_outputs"] == 0
    assert all(g["passed"] for g in doc["report"]["gates"])


class _DataDependent(torch.nn.Module):
    """A branch on a tensor's value: dynamo cannot export it, the TorchScript tracer records one path."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = self.fc(x)
        if y.sum() > 0:
            return y
        return -y


def data_dependent():
    return _DataDependent().eval(), (torch.ones(1, 8),)


def test_dynamo_failure_falls_back_to_torchscript_and_the_report_says_why(tmp_path, capsys):
    code, stdout, err = run_cli(["build", "tests.converters.test_torch_sources:data_dependent", "--profile", "x86_64-avx2", "--name", "dd", "--version", "1",
                                 "--quantize", "none", "--json", "-o", tmp_path / "dd.bundle"], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    assert any(p.startswith("export-onnx: TorchScript exporter") for p in doc["report"]["passes"])
    assert any("dynamo exporter failed" in w and "fell back to the TorchScript exporter" in w for w in doc["report"]["warnings"])


@pytest.mark.slow
def test_the_edgeops_command_finds_a_factory_module_in_the_current_directory(tmp_path):
    """`edgeops build mymodels:tiny` run where mymodels.py lives, as a user does: the console
    script's sys.path starts at its own folder, so before, this was "cannot import module"."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "mymodels.py").write_text(
        "import torch\n\n"
        "def tiny():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(8, 4)).eval(), (torch.ones(1, 8),)\n"
    )
    exe = shutil.which("edgeops") or str(Path(sys.executable).with_name("edgeops"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([exe, "build", "mymodels:tiny", "--profile", "x86_64-avx2", "--name", "tiny", "--version", "1", "--quantize", "none", "-o", "tiny.bundle"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "tiny.bundle").exists()
