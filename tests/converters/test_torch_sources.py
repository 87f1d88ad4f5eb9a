"""PyTorch inputs: TorchScript and ExportedProgram files, and the samples module."""

from __future__ import annotations

import json

import numpy as np
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
