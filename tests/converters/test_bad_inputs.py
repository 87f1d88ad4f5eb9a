"""Every bad-input path of `edgeops build` ends in a clear error with the right exit code."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeops.profiles import builtin_profiles_dir

from .conftest import run_cli


def _args(model, out, profile="x86_64-avx512-vnni", *extra):
    return ["build", model, "--profile", profile, "--name", "m", "--version", "1", "-o", out, *extra]


def _custom_profile(tmp_path, base="x86_64-avx512-vnni", **constraints):
    text = (builtin_profiles_dir() / f"{base}.toml").read_text()
    head, _, _ = text.partition("[constraints]")
    lines = ["[constraints]"] + [f"{k} = {json.dumps(v)}" for k, v in constraints.items()]
    path = tmp_path / "custom.toml"
    path.write_text(head.replace(f'name = "{base}"', 'name = "custom"') + "\n".join(lines) + "\n")
    return path


def test_unknown_profile_names_the_builtin_ones(cnn_files, tmp_path, capsys):
    code, _, err = run_cli(_args(cnn_files["onnx"], tmp_path / "o.bundle", "no-such-board"), capsys)
    assert code == 3 and "no-such-board" in err and "x86_64-avx2" in err


def test_profile_file_with_a_bad_key_names_file_and_key(cnn_files, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text((builtin_profiles_dir() / "x86_64-avx2.toml").read_text().replace("[budgets]", "[budgets]\nlatency_ms = 3"))
    code, _, err = run_cli(_args(cnn_files["onnx"], tmp_path / "o.bundle", str(bad)), capsys)
    assert code == 3 and "bad.toml" in err and "latency_ms" in err


def test_broken_model_file_is_a_model_load_error_naming_the_file(tmp_path, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07this is not protobuf" * 10)
    code, _, err = run_cli(_args(broken, tmp_path / "o.bundle"), capsys)
    assert code == 4 and "broken.onnx" in err


def test_missing_model_file(tmp_path, capsys):
    code, _, err = run_cli(_args(tmp_path / "nope.onnx", tmp_path / "o.bundle"), capsys)
    assert code == 4 and "nope.onnx" in err


def test_wrong_shape_data_names_the_input(cnn_files, tmp_path, capsys):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, input=np.zeros((4, 1, 8, 8), np.float32))
    code, _, err = run_cli(_args(cnn_files["onnx"], tmp_path / "o.bundle", "x86_64-avx512-vnni", "--calibration", wrong), capsys)
    assert code == 4 and "'input'" in err and "[4, 1, 8, 8]" in err


def test_wrong_dtype_data_names_the_input(cnn_files, tmp_path, capsys):
    wrong = tmp_path / "ints.npy"
    np.save(wrong, np.zeros((4, 1, 16, 16), np.int32))
    code, _, err = run_cli(_args(cnn_files["onnx"], tmp_path / "o.bundle", "x86_64-avx512-vnni", "--validation", wrong, "--quantize", "none"), capsys)
    assert code == 4 and "'input'" in err and "int32" in err


def test_missing_calibration_says_how_to_pass_it(cnn_files, tmp_path, capsys):
    code, _, err = run_cli(_args(cnn_files["onnx"], tmp_path / "o.bundle", "x86_64-avx512-vnni", "--validation", cnn_files["validation"]), capsys)
    assert code == 4 and "--calibration" in err and "dynamic-int8" in err
    assert not (tmp_path / "o.bundle").exists()


def test_unsupported_operator_names_node_and_op(cnn_files, tmp_path, capsys):
    profile = _custom_profile(tmp_path, unsupported_ops=["Conv"])
    code, _, err = run_cli(_args(cnn_files["onnx"], tmp_path / "o.bundle", str(profile), "--quantize", "none"), capsys)
    assert code == 4 and "op Conv" in err and "node '" in err


def test_opset_outside_profile_range_is_converted_into_it(cnn_files, tmp_path, capsys):
    # Above the range: converted down to its top with onnx.version_converter and reported
    # (a model the converter cannot adapt is refused: tests/converters/test_opset.py).
    profile = _custom_profile(tmp_path, min_opset=13, max_opset=14)
    code, stdout, err = run_cli(_args(cnn_files["onnx"], tmp_path / "o.bundle", str(profile), "--quantize", "none", "--json"), capsys)
    assert code == 0, err
    conversion = json.loads(stdout)["report"]["conversions"]["opset_conversion"]
    assert (conversion["from"], conversion["to"]) == (17, 14)


def test_dynamic_shapes_on_static_profile_need_input_shape(cnn_files, tmp_path, capsys):
    profile = _custom_profile(tmp_path, static_shapes=True)
    out = tmp_path / "o.bundle"
    code, _, err = run_cli(_args(cnn_files["onnx"], out, str(profile), "--quantize", "none"), capsys)
    assert code == 4 and "--input-shape input=1,1,16,16" in err
    code, stdout, err = run_cli(_args(cnn_files["onnx"], out, str(profile), "--quantize", "none", "--input-shape", "input=1,1,16,16", "--json"), capsys)
    assert code == 0, err
    assert json.loads(stdout)["manifest"]["inputs"][0]["shape"] == [1, 1, 16, 16]


def test_gate_failure_fails_the_build_with_a_table(cnn_files, tmp_path, capsys):
    out = tmp_path / "o.bundle"
    code, _, err = run_cli(_args(cnn_files["onnx"], out, "x86_64-avx512-vnni", "--quantize", "dynamic-int8", "--validation", cnn_files["validation"], "--max-size-mb", "0.001"), capsys)
    assert code == 5 and "max_bundle_mb" in err and "0.001" in err
    assert not out.exists()


def test_allow_gate_failures_writes_the_bundle_marked_failed(cnn_files, tmp_path, capsys):
    out = tmp_path / "o.bundle"
    code, stdout, err = run_cli(_args(cnn_files["onnx"], out, "x86_64-avx512-vnni", "--quantize", "dynamic-int8", "--validation", cnn_files["validation"],
                                      "--max-size-mb", "0.001", "--allow-gate-failures", "--json"), capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["gates_passed"] is False and doc["report"]["status"] == "gates_failed"
    assert out.exists()


def test_bad_option_values(cnn_files, tmp_path, capsys):
    code, _, err = run_cli(_args(cnn_files["onnx"], tmp_path / "o.bundle", "x86_64-avx512-vnni", "--input-shape", "input=1,x"), capsys)
    assert code == 3 and "--input-shape" in err
    code, _, err = run_cli(["build", cnn_files["onnx"], "--profile", "x86_64-avx2", "--name", "bad name", "--version", "1", "-o", tmp_path / "o"], capsys)
    assert code == 3 and "name" in err


def test_onnx_model_with_a_dynamic_batch_on_litert_profile_asks_for_a_shape(cnn_files, tmp_path, capsys):
    # LiteRT profiles take ONNX (converted with onnx2tf) but need static shapes: refused before any conversion.
    code, _, err = run_cli(_args(cnn_files["onnx"], tmp_path / "o.bundle", "arm64-litert"), capsys)
    assert code == 4 and "arm64-litert" in err and "--input-shape input=1,1,16,16" in err


def test_pass_options_are_validated_with_exceptions():
    from edgeops.converters.passes import create_pass
    from edgeops.errors import ConfigError

    with pytest.raises(ConfigError, match="calibration_method"):
        create_pass("quantize-static", calibration_method="median")
    with pytest.raises(ConfigError, match="unknown pass"):
        create_pass("no-such-pass")
    with pytest.raises(ConfigError, match="bogus"):
        create_pass("fp16", bogus=1)
