"""Hardware profiles: built-ins validate, user files load by path, bad files name file and key."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeops.cli import cli
from edgeops.errors import ProfileError
from edgeops.profiles import builtin_profiles_dir, list_profiles, load_profile

REQUIRED = {"x86_64-avx512-vnni", "x86_64-avx2", "raspberry-pi-4", "raspberry-pi-5", "jetson-orin-nano", "coral-edgetpu", "arm64-litert"}


def test_builtin_profiles_all_validate():
    names = {p.name for p in list_profiles()}
    assert REQUIRED <= names
    for p in list_profiles():
        assert p.source.endswith(f"{p.name}.toml"), "file name and profile name must agree"


def test_profile_facts():
    assert "avx512_vnni" in load_profile("x86_64-avx512-vnni").device.cpu_features
    assert "avx512_vnni" not in load_profile("x86_64-avx2").device.cpu_features
    assert "dotprod" not in load_profile("raspberry-pi-4").device.cpu_features
    assert "dotprod" in load_profile("raspberry-pi-5").device.cpu_features
    jetson = load_profile("jetson-orin-nano")
    assert jetson.quantization.scheme == "fp16" and "TensorrtExecutionProvider" in jetson.runtime.providers
    coral = load_profile("coral-edgetpu")
    assert coral.quantization.scheme == "full-int8" and coral.constraints.static_shapes and coral.artifact_format == "tflite"
    assert load_profile("arm64-litert").runtime.name == "litert"


def test_user_profile_by_path(tmp_path):
    src = (builtin_profiles_dir() / "raspberry-pi-4.toml").read_text().replace('name = "raspberry-pi-4"', 'name = "my-board"')
    path = tmp_path / "my-board.toml"
    path.write_text(src)
    p = load_profile(str(path))
    assert p.name == "my-board" and p.source == str(path) and len(p.sha256) == 64


@pytest.mark.parametrize(
    "mutate, must_mention",
    [
        (lambda s: s.replace("[budgets]", "[budgets]\nlatency_p99_ms = 3"), ["budgets.latency_p99_ms", "unknown key", "latency_p95_ms"]),
        (lambda s: s.replace('scheme = "static-int8"', 'scheme = "int4"'), ["quantization.scheme", "static-int8"]),
        (lambda s: s.replace('arch = "aarch64"', 'arch = "mips"'), ["device.arch", "aarch64"]),
        (lambda s: s.replace("latency_p95_ms = 150.0", "latency_p95_ms = -1"), ["budgets.latency_p95_ms", "greater than 0"]),
        (lambda s: s.replace("cores = 4\n", ""), ["device.cores", "missing"]),
        (lambda s: s + "\n[surprise]\nx = 1\n", ["surprise", "unknown key"]),
        (lambda s: s.replace("[device]", "[device"), ["not valid TOML"]),
    ],
)
def test_bad_profile_names_file_and_key(tmp_path, mutate, must_mention):
    path = tmp_path / "bad.toml"
    path.write_text(mutate((builtin_profiles_dir() / "raspberry-pi-4.toml").read_text()))
    with pytest.raises(ProfileError) as err:
        load_profile(str(path))
    text = str(err.value)
    assert str(path) in text
    for word in must_mention:
        assert word in text


def test_unknown_profile_name_lists_builtins():
    with pytest.raises(ProfileError, match="x86_64-avx2"):
        load_profile("no-such-board")


def test_profiles_cli_list_and_show_json():
    runner = CliRunner()
    out = runner.invoke(cli, ["profiles", "list", "--json"])
    assert out.exit_code == 0, out.output
    assert REQUIRED <= {p["name"] for p in json.loads(out.output)}
    out = runner.invoke(cli, ["profiles", "show", "coral-edgetpu", "--json"])
    assert out.exit_code == 0
    assert json.loads(out.output)["quantization"]["scheme"] == "full-int8"
    out = runner.invoke(cli, ["profiles", "show", "raspberry-pi-5"])
    assert out.exit_code == 0 and "dotprod" in out.output
