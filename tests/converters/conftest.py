"""Shared fixtures: a digits CNN trained once per session, its ONNX export and data files."""

from __future__ import annotations

import numpy as np
import pytest

from edgeops.cli import main


@pytest.fixture(scope="session")
def cnn_sample():
    from edgeops.converters import samples

    # Small enough to train in a few seconds on one core; 16x16 input keeps it conv-dominated.
    return samples.train_digits_cnn(size=16, width=8, epochs=4)


@pytest.fixture(scope="session")
def cnn_files(cnn_sample, tmp_path_factory):
    """cnn.onnx (dynamic batch), calibration.npz, validation.npz (with labels)."""
    import torch

    folder = tmp_path_factory.mktemp("cnn")
    paths = cnn_sample.save_npz(folder)
    onnx_path = folder / "cnn.onnx"
    torch.onnx.export(
        cnn_sample.model, cnn_sample.example_inputs, str(onnx_path), dynamo=False, opset_version=17,
        input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return {"onnx": onnx_path, **paths, "dir": folder}


@pytest.fixture(scope="session")
def transformer_onnx(tmp_path_factory):
    """A small Linear-heavy transformer encoder exported to ONNX, with 8x8 validation data."""
    import torch

    from edgeops.converters import samples

    sample = samples.train_digits_transformer(d_model=64, depth=1, epochs=8)
    folder = tmp_path_factory.mktemp("tr")
    path = folder / "transformer.onnx"
    torch.onnx.export(sample.model, sample.example_inputs, str(path), dynamo=False, opset_version=17, input_names=["input"], output_names=["logits"])
    np.savez(folder / "validation.npz", input=sample.x_val, labels=sample.y_val)
    return {"onnx": path, "validation": folder / "validation.npz"}


def run_cli(args, capsys) -> tuple[int, str, str]:
    """Run `edgeops ARGS` in-process through the real entry point; return (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
