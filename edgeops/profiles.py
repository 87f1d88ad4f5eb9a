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
from typing import Annotated, ClassVar, Literal

from edgeops.errors import ProfileError
from edgeops.schema import FieldError, Meta, Schema, SchemaError, field, nested_schema

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Arch = Literal["x86_64", "aarch64", "armv7l"]
RuntimeName = Literal["onnxruntime", "litert", "openvino"]
OPENVINO_DEVICES = ("CPU", "GPU", "NPU")
QuantScheme = Literal["static-int8", "dynamic-int8", "full-int8", "fp16", "none"]
QUANT_CHOICES = ("auto", "static-int8", "dynamic-int8", "full-int8", "fp16", "none")


class _Strict(Schema, frozen=True):
    """A profile section: unknown keys refused, immutable once loaded."""


class DeviceSpec(_Strict):
    """What the device is: CPU architecture (as `uname -m` prints it), CPU model (for people),
    the ISA features the runtime may use (e.g. avx512_vnni, dotprod), the cores available to
    the model, RAM in MiB, accelerator."""

    arch: Arch
    cpu: str
    cpu_features: list[str] = field(default_factory=list)
    cores: Annotated[int, Meta(ge=1)]
    memory_mb: Annotated[int, Meta(ge=16)]
    accelerator: Literal["none", "cuda", "edgetpu", "npu"] = "none"


class RuntimeSpec(_Strict):
    """The inference runtime on the device: onnxruntime execution providers (or LiteRT
    delegates) in priority order, and the intra-op threads used to measure latency against
    the budget.

    OpenVINO profiles (``name = "openvino"``) say instead which OpenVINO ``device`` runs the
    model (CPU, GPU, NPU), its ``inference_precision`` (``f32``; ``bf16``, which OpenVINO uses
    for float models by default on CPUs with AVX512_BF16/AMX and which changes the numerics; or
    ``auto``: the packager keeps bf16 only where the parity gates pass and records the decision in
    the bundle) and the ``performance_hint`` (LATENCY for one request at a time). These three
    keys are refused on the other runtimes."""

    name: RuntimeName
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    threads: Annotated[int, Meta(ge=1)] = 1
    device: Literal["CPU", "GPU", "NPU"] | None = None
    inference_precision: Literal["f32", "bf16", "auto"] | None = None
    performance_hint: Literal["LATENCY", "THROUGHPUT"] | None = None

    def __post_init__(self) -> None:
        if self.name != "openvino":
            for key in ("device", "inference_precision", "performance_hint"):
                if getattr(self, key) is not None:
                    raise FieldError(key, f"only OpenVINO profiles (runtime.name = 'openvino') take runtime.{key}; this profile runs {self.name}")
        elif self.providers not in (["CPUExecutionProvider"], [self.openvino_device]):
            raise FieldError("providers", f"an OpenVINO profile names its device in runtime.device ({', '.join(OPENVINO_DEVICES)}), not in providers; "
                             f"leave providers out or set it to [\"{self.openvino_device}\"]")

    @property
    def openvino_device(self) -> str:
        """The OpenVINO device (CPU unless the profile says otherwise)."""
        return self.device or "CPU"

    @property
    def openvino_precision(self) -> str:
        """The profile's inference precision (f32 unless it says bf16 or auto)."""
        return self.inference_precision or "f32"

    @property
    def openvino_hint(self) -> str:
        """OpenVINO's performance hint (LATENCY unless the profile says THROUGHPUT)."""
        return self.performance_hint or "LATENCY"


class QuantizationSpec(_Strict):
    """How the packager quantizes models for this target when `--quantize auto` is used:
    ``scheme`` for conv nets (`auto` adapts it per model), ``transformer_scheme`` for
    Linear-heavy models if it differs."""

    scheme: QuantScheme
    transformer_scheme: QuantScheme | None = None
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    per_channel: bool = True
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"


class Budgets(_Strict):
    """Limits a built model must meet on this target; validation gates and the agent use them:
    p95 latency of one inference on the device, the largest bundle the device accepts, the
    largest top-1 accuracy drop in percentage points, the least top-1 agreement and output
    cosine similarity with the original model, the largest resident memory growth when
    loading the model."""

    latency_p95_ms: Annotated[float, Meta(gt=0)]
    max_bundle_mb: Annotated[float, Meta(gt=0)]
    max_accuracy_drop: Annotated[float, Meta(ge=0, le=100)]
    min_agreement: Annotated[float, Meta(ge=0, le=1)] = 0.99
    min_cosine: Annotated[float, Meta(ge=-1, le=1)] = 0.98
    max_memory_mb: Annotated[float, Meta(gt=0)] | None = None


class Constraints(_Strict):
    """What models this target can run at all: fixed input dimensions only
    (``static_shapes``), the opset range, operators it cannot run, accepted input formats."""

    static_shapes: bool = False
    min_opset: Annotated[int, Meta(ge=1)] = 13
    max_opset: Annotated[int, Meta(ge=1)] = 21
    unsupported_ops: list[str] = field(default_factory=list)
    input_formats: list[Literal["onnx", "pytorch", "tflite"]] = field(default_factory=lambda: ["onnx", "pytorch", "tflite"])

    def __post_init__(self) -> None:
        if self.min_opset > self.max_opset:
            raise ValueError(f"min_opset {self.min_opset} is above max_opset {self.max_opset}")


class HardwareProfile(_Strict):
    """A validated hardware profile. ``source`` (the file it was read from) and ``sha256`` (of
    that file) are set by the loader and are not part of the profile's data."""

    __schema_exclude__: ClassVar[tuple[str, ...]] = ("source", "sha256")

    name: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    description: str = ""
    device: DeviceSpec
    runtime: RuntimeSpec
    quantization: QuantizationSpec
    budgets: Budgets
    constraints: Constraints = field(default_factory=Constraints)
    source: str = ""
    sha256: str = ""

    def __post_init__(self) -> None:
        if self.runtime.name == "litert" and self.quantization.scheme in ("static-int8", "dynamic-int8") and "EdgeTpuDelegate" in self.runtime.providers:
            raise ValueError("an Edge TPU profile needs quantization.scheme = 'full-int8'")

    @property
    def artifact_format(self) -> str:
        """File format the runtime loads: 'onnx', 'tflite' or 'openvino' (IR .xml + .bin)."""
        return {"litert": "tflite", "openvino": "openvino"}.get(self.runtime.name, "onnx")


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
        profile = HardwareProfile.parse(data)
    except SchemaError as e:
        raise ProfileError(_describe_validation_error(path, e, data)) from e
    return profile.replace(source=str(path), sha256=hashlib.sha256(raw).hexdigest())


def _describe_validation_error(path: Path, error: SchemaError, data: object = None) -> str:
    key = error.key or "(top level)"
    if error.kind == "unknown":
        section = nested_schema(HardwareProfile, error.key.rpartition(".")[0])
        allowed = ", ".join(sorted(n for n in section.field_names() if n not in section.__schema_exclude__)) if section else "?"
        detail = f"unknown key; allowed keys here are {allowed}"
    elif error.kind == "missing":
        detail = "required key is missing"
    else:
        detail = error.message
        got = _value_at(data, error.key)
        if got is not _ABSENT:
            detail += f" (got {got!r})"
    return f"{path}: invalid hardware profile\n  key '{key}': {detail}"


_ABSENT = object()


def _value_at(data: object, dotted: str) -> object:
    """The value at a dotted key of parsed TOML, or _ABSENT."""
    for part in filter(None, dotted.split(".")):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return _ABSENT
    return data if dotted else _ABSENT


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
