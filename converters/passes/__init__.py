"""The pass registry: each pass registers itself with typed, documented options.

A pass takes an :class:`Artifact` (a torch module, ONNX bytes or TFLite bytes) and the
:class:`PassContext` (profile, data, log) and returns a new artifact. Options are pydantic
models; bad values raise :class:`~edgeops.errors.ConfigError` naming the pass and the option
(never ``assert``, never a logged ``False``). :mod:`edgeops.converters.pipeline` plans which
passes run for a profile and a model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

from pydantic import BaseModel, ConfigDict, ValidationError

from edgeops.errors import ConfigError, first_problem

PASS_REGISTRY: dict[str, type["Pass"]] = {}


@dataclass
class Artifact:
    """A model between passes: ``format`` is 'torch', 'onnx' or 'tflite'."""

    format: str
    data: bytes | None = None
    module: Any = None
    example_inputs: tuple | None = None
    input_names: list[str] = field(default_factory=list)


@dataclass
class PassContext:
    """What passes may read besides the artifact: profile, calibration data, a log and progress."""

    profile: Any  # HardwareProfile
    calibration: Any = None  # Dataset | None
    validation: Any = None  # (feeds, labels) for accuracy-aware passes (quantize-openvino), or None
    log: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)  # structured facts for the build report (e.g. opset_conversion)
    step: Callable[[str], contextlib.AbstractContextManager] = field(default=lambda text: contextlib.nullcontext())

    def warn(self, message: str) -> None:
        self.warnings.append(message)


class PassOptions(BaseModel):
    """Base of every pass's options: unknown options are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Pass:
    """A step of the pipeline. Subclasses set ``name``, ``Options`` and implement :meth:`run`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type[PassOptions]] = PassOptions
    input_format: ClassVar[str] = "onnx"

    def __init__(self, **options: Any):
        try:
            self.options = self.Options(**options)
        except ValidationError as e:
            problem = first_problem(e)
            raise ConfigError(f"pass '{self.name}': option '{problem.loc}': {problem.msg} (got {problem.input!r})") from e

    def run(self, artifact: Artifact, ctx: PassContext) -> Artifact:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, artifact: Artifact, ctx: PassContext) -> Artifact:
        if artifact.format != self.input_format:
            raise ConfigError(f"pass '{self.name}' takes a {self.input_format} model, got {artifact.format}")
        return self.run(artifact, ctx)


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: add a pass to :data:`PASS_REGISTRY` under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in PASS_REGISTRY and PASS_REGISTRY[cls.name] is not cls:
        raise ValueError(f"pass name '{cls.name}' registered twice")
    PASS_REGISTRY[cls.name] = cls
    return cls


def create_pass(name: str, **options: Any) -> Pass:
    """Instantiate a registered pass by name with validated options."""
    load_builtin_passes()
    cls = PASS_REGISTRY.get(name)
    if cls is None:
        raise ConfigError(f"unknown pass '{name}'; registered passes are {', '.join(sorted(PASS_REGISTRY))}")
    return cls(**options)


def load_builtin_passes() -> None:
    """Import the built-in pass modules so they register (cheap: they import heavy deps lazily)."""
    from edgeops.converters.passes import export, fusion, litert, normalize, onnx_tflite, openvino, opset, optimize, quantize  # noqa: F401


def describe_passes() -> Iterator[tuple[str, str, dict[str, str]]]:
    """(name, description, {option: description}) for every registered pass, for docs and --help."""
    load_builtin_passes()
    for name, cls in sorted(PASS_REGISTRY.items()):
        yield name, cls.description, {k: (f.description or "") for k, f in cls.Options.model_fields.items()}
