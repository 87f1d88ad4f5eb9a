"""Operators no runtime of the profile has a kernel for are refused before any pass, naming the
node, op and domain and the profiles whose runtime would take it."""

from __future__ import annotations

import onnx
import pytest

from edgeops.converters.errors import CustomOperatorError
from edgeops.converters.operators import check_operators, profiles_taking
from edgeops.errors import UnsupportedOperatorError
from edgeops.profiles import load_profile
from tests.converters.conftest import run_cli
from tests.support.onnx_models import custom_domain_model


def test_custom_domain_op_is_refused_naming_node_op_and_domain(tmp_path, capsys):
    src = tmp_path / "vendor.onnx"
    onnx.save(custom_domain_model(), str(src))
    code, _, stderr = run_cli(["build", src, "--profile", "x86_64-avx512-vnni", "--name", "v", "--version", "1", "-o", tmp_path / "v.bundle"], capsys)
    assert code == 4 and "Traceback" not in stderr
    assert "op 'FancyActivation' of domain 'com.example.vendor' at node 'vendor_act'" in stderr
    assert "no built-in profile" in stderr
    assert not (tmp_path / "v.bundle").exists()


def test_contrib_op_names_the_profiles_that_take_it():
    # com.microsoft operators run on onnxruntime profiles only; LiteRT's converter maps standard ONNX.
    takers = profiles_taking("com.microsoft", "FusedConv")
    assert {"x86_64-avx512-vnni", "raspberry-pi-5"} <= set(takers) and "arm64-litert" not in takers
    model = custom_domain_model(domain="com.microsoft", op="FusedConv")
    check_operators(model, load_profile("x86_64-avx512-vnni"), "m.onnx")  # onnxruntime has the kernel
    with pytest.raises(CustomOperatorError) as err:
        check_operators(model, load_profile("arm64-litert"), "m.onnx")
    assert isinstance(err.value, UnsupportedOperatorError)
    assert "op 'FusedConv' of domain 'com.microsoft' at node 'vendor_act'" in str(err.value) and "x86_64-avx512-vnni" in str(err.value)
