"""Hardware profiles: one TOML file per target device, validated against a typed schema.

Profiles are data, not code. The built-in ones live in ``hardware-profiles/``; a user passes
their own file by path wherever a profile name is accepted. Unknown keys and bad values are
errors that name the file, the key and the allowed values.
"""

from __future__ import annotations

import hashlib
import sys
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgeops.errors import ProfileError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Arch = Literal["x86_64", "aarch64", "armv7l"]
RuntimeName = Literal["onnxruntime", "litert"]
QuantScheme = Literal["static-int8", "dynamic-int8", "full-int8", "fp16", "none"]
QUANT_CHOICES = ("auto", "static-int8", "dynamic-int8", "full-int8", "fp16", "none")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceSpec(_Strict):
    """What the device is: CPU architecture and features, cores, memory, accelerator."""

    arch: Arch = Field(description="CPU architecture as `uname -m` prints it")
    cpu: str = Field(description="CPU model, for people")
    cpu_features: list[str] = Field(default_factory=list, description="ISA features the runtime may use, e.g. avx512_vnni, dotprod")
    cores: int = Field(ge=1, description="CPU cores available to the model")
    memory_mb: int = Field(ge=16, description="RAM of the device in MiB")
    accelerator: Literal["none", "cuda", "edgetpu", "npu"] = "none"


class RuntimeSpec(_Strict):
    """The inference runtime on the device and its execution providers / delegates."""

    name: RuntimeName
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"], description="onnxruntime execution providers in priority order, or LiteRT delegates")
    threads: int = Field(default=1, ge=1, description="intra-op threads used to measure latency against the budget")


class QuantizationSpec(_Strict):
    """How the packager quantizes models for this target when `--quantize auto` is used."""

    scheme: QuantScheme = Field(description="preferred scheme for conv nets; `auto` adapts it per model")
    transformer_scheme: QuantScheme | None = Field(default=None, description="scheme for Linear-heavy models, if it differs")
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    per_channel: bool = True
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"


class Budgets(_Strict):
    """Limits a built model must meet on this target; validation gates and the agent use them."""

    latency_p95_ms: float = Field(gt=0, description="p95 latency of one inference on the device")
    max_bundle_mb: float = Field(gt=0, description="largest bundle the device accepts")
    max_accuracy_drop: float = Field(ge=0, le=100, description="largest top-1 accuracy drop in percentage points")
    min_agreement: float = Field(default=0.99, ge=0, le=1, description="least top-1 agreement with the original model")
    min_cosine: float = Field(default=0.98, ge=-1, le=1, description="least cosine similarity of outputs with the original")
    max_memory_mb: float | None = Field(default=None, gt=0, description="largest resident memory growth when loading the model")


class Constraints(_Strict):
    """What models this target can run at all."""

    static_shapes: bool = Field(default=False, description="every input dimension must be fixed")
    min_opset: int = Field(default=13, ge=1)
    max_opset: int = Field(default=21, ge=1)
    unsupported_ops: list[str] = Field(default_factory=list, description="ONNX/TFLite operators the target cannot run")
    input_formats: list[Literal["onnx", "pytorch", "tflite"]] = Field(default_factory=lambda: ["onnx", "pytorch", "tflite"])

    @model_validator(mode="after")
    def _opset_range(self) -> "Constraints":
        if self.min_opset > self.max_opset:
            raise ValueError(f"min_opset {self.min_opset} is above max_opset {self.max_opset}")
        return self


class HardwareProfile(_Strict):
    """A validated hardware profile."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    device: DeviceSpec
    runtime: RuntimeSpec
    quantization: QuantizationSpec
    budgets: Budgets
    constraints: Constraints = Field(default_factory=Constraints)
    source: str = Field(default="", exclude=True, description="file the profile was read from")
    sha256: str = Field(default="", exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> "HardwareProfile":
        if self.runtime.name == "litert" and self.quantization.scheme in ("static-int8", "dynamic-int8") and "EdgeTpuDelegate" in self.runtime.providers:
            raise ValueError("an Edge TPU profile needs quantization.scheme = 'full-int8'")
        return self

    @property
    def artifact_format(self) -> str:
        """File format the runtime loads: 'onnx' or 'tflite'."""
        return "tflite" if self.runtime.name == "litert" else "onnx"


def builtin_profiles_dir() -> Path:
    """Folder that holds the built-in profiles (hardware-profiles/ in the source tree)."""
    try:
        return Path(str(resources.files("edgeops.hardware_profiles")))
    except ModuleNotFoundError:  # a source checkout on PYTHONPATH, not installed (see edgeops/__init__.py)
        return Path(__file__).resolve().parent.parent / "hardware-profiles"


def list_profiles() -> list[HardwareProfile]:
    """Every built-in profile, sorted by name."""
    return [load_profile_file(p) for p in sorted(builtin_profiles_dir().glob("*.toml"))]


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """Load a profile by built-in name or from a path to the user's own TOML file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists() or "/" in str(name_or_path):
        return load_profile_file(candidate)
    path = builtin_profiles_dir() / f"{name_or_path}.toml"
    if not path.exists():
        names = ", ".join(p.stem for p in sorted(builtin_profiles_dir().glob("*.toml")))
        raise ProfileError(f"unknown hardware profile '{name_or_path}': built-in profiles are {names}; or pass a path to your own .toml file")
    return load_profile_file(path)


def load_profile_file(path: str | Path) -> HardwareProfile:
    """Parse and validate one profile file; errors name the file, the key and what is allowed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ProfileError(f"{path}: cannot read profile file ({e.strerror or e})") from e
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: not valid TOML: {e}") from e
    try:
        profile = HardwareProfile.model_validate(data)
    except ValidationError as e:
        raise ProfileError(_describe_validation_error(path, e)) from e
    return profile.model_copy(update={"source": str(path), "sha256": hashlib.sha256(raw).hexdigest()})


def _describe_validation_error(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid hardware profile"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            section = _section_model(item["loc"][:-1])
            allowed = ", ".join(sorted(section.model_fields)) if section else "?"
            lines.append(f"  key '{key}': unknown key; allowed keys here are {allowed}")
        elif item["type"] == "missing":
            lines.append(f"  key '{key}': required key is missing")
        else:
            lines.append(f"  key '{key}': {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def _section_model(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = HardwareProfile
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return None
        model = field.annotation
    return model


# CPU flags (as /proc/cpuinfo spells them) that give int8 dot products: u8 x s8 QDQ graphs run
# exactly on these; without them onnxruntime's AVX2 kernels can saturate.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "avx512vnni", "amx_int8"})


def host_cpu_flags() -> set[str]:
    """CPU feature flags of this machine (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()
