"""Loading the model the user gives to `edgeops build`, whatever its format.

Formats: an ONNX file, a .tflite file, a TorchScript file (.pt/.pth saved with torch.jit),
an ExportedProgram (.pt2 saved with torch.export.save), or a ``module:factory`` reference to a
Python callable returning a torch ``nn.Module``. A file that cannot be read as its format is a
:class:`~edgeops.errors.ModelLoadError` naming the file.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeops.errors import ModelLoadError, UnsupportedOperatorError

ONNX_SUFFIXES = (".onnx",)
TFLITE_SUFFIXES = (".tflite",)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")
EXPORTED_PROGRAM_SUFFIXES = (".pt2",)
PROTOBUF_LIMIT = 2**31 - 1  # bytes: the largest protobuf message (an ONNX ModelProto) that can be encoded


@dataclass
class SourceModel:
    """The model as given: its format, identity (sha256) and the loaded object or bytes."""

    reference: str
    format: str  # "onnx" | "tflite" | "pytorch" | "torchscript" | "exported-program"
    sha256: str
    path: Path | None = None
    data: bytes | None = None  # ONNX / TFLite bytes
    module: Any = None  # torch.nn.Module, ScriptModule or ExportedProgram
    example_inputs: tuple | None = None
    notes: list[str] = field(default_factory=list)
    external_data: bool = False  # an ONNX model with its weights in external data files (the bundle keeps them so)

    @property
    def family(self) -> str:
        """'onnx', 'tflite' or 'pytorch' (the three input families a profile may accept)."""
        return self.format if self.format in ("onnx", "tflite") else "pytorch"


def load_source(reference: str) -> SourceModel:
    """Identify and load the model at ``reference`` (a path or ``module:factory``)."""
    path = Path(reference)
    if path.exists():
        if path.is_dir():
            raise ModelLoadError(f"{path}: is a folder; pass an .onnx, .tflite, .pt/.pth (TorchScript) or .pt2 (ExportedProgram) file, or module:factory")
        suffix = path.suffix.lower()
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise ModelLoadError(f"{path}: cannot read model file ({e.strerror or e})") from e
        digest = hashlib.sha256(raw).hexdigest()
        if suffix in ONNX_SUFFIXES:
            data, external = _check_onnx(path, raw)
            notes = []
            if external:
                # Weights stored beside the file: hash the self-contained model we actually use.
                digest = hashlib.sha256(data).hexdigest()
                notes.append(f"{path.name}: weights in external data files were inlined; source sha256 is that of the inlined model")
            return SourceModel(reference, "onnx", digest, path=path, data=data, notes=notes, external_data=external)
        if suffix in TFLITE_SUFFIXES:
            return SourceModel(reference, "tflite", digest, path=path, data=_check_tflite(path, raw))
        if suffix in EXPORTED_PROGRAM_SUFFIXES:
            return SourceModel(reference, "exported-program", digest, path=path, module=_load_exported_program(path, raw))
        if suffix in TORCHSCRIPT_SUFFIXES:
            return SourceModel(reference, "torchscript", digest, path=path, module=_load_torchscript(path, raw))
        raise ModelLoadError(
            f"{path}: unknown model file type '{suffix}'; use .onnx, .tflite, .pt/.pth (TorchScript), .pt2 (ExportedProgram) or module:factory"
        )
    if ":" in reference and not reference.startswith((".", "/")):
        return _load_factory(reference)
    raise ModelLoadError(f"{reference}: no such model file (and not a module:factory reference)")


def _check_onnx(path: Path, raw: bytes) -> tuple[bytes, bool]:
    """The model as self-contained bytes (external data inlined), and whether it had external data."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    try:
        model = onnx.load_model_from_string(raw)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise ModelLoadError(f"{path}: not a valid ONNX file ({type(e).__name__}: {e}); re-export it or check the download") from e
    external = any(uses_external_data(t) for t in model.graph.initializer)
    if external:
        try:
            load_external_data_for_model(model, str(path.parent))
        except Exception as e:
            raise ModelLoadError(f"{path}: cannot read the model's external data files next to it ({e}); keep the .onnx and its .data files together") from e
        for t in model.graph.initializer:
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]
        if model.ByteSize() >= PROTOBUF_LIMIT:
            # The passes hand models on as one protobuf message; past 2 GiB protobuf cannot encode it.
            raise ModelLoadError(
                f"{path}: with its external data the model is {model.ByteSize() / 2**30:.2f} GiB, over protobuf's 2 GiB message limit; "
                "the packager takes models up to 2 GiB of weights (their files may be external): export a smaller or float16 model"
            )
        raw = model.SerializeToString()
    if not model.graph.node:
        raise ModelLoadError(f"{path}: ONNX file has an empty graph (no nodes)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{path}: ONNX model does not pass onnx.checker: {first}") from e
    return raw, external


def _check_tflite(path: Path, raw: bytes) -> bytes:
    # A TFLite flatbuffer carries the identifier "TFL3" at byte offset 4.
    if len(raw) < 8 or raw[4:8] != b"TFL3":
        raise ModelLoadError(f"{path}: not a TFLite flatbuffer (missing 'TFL3' identifier); convert the model with litert-torch")
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise ModelLoadError(f"{path}: cannot validate .tflite files: ai-edge-litert is not installed (pip install 'edgeops[tflite]')") from e
    try:
        interpreter = Interpreter(model_content=raw)
        interpreter.allocate_tensors()
    except Exception as e:
        custom = re.search(r"unresolved custom op: (\S+?)\.?\s.*?Node number (\d+)", str(e), re.S)
        if custom:
            # MediaPipe ships models with its own ops (Landmarks2TransformMatrix, Convolution2DTransposeBias)
            raise UnsupportedOperatorError(
                f"{path}: node {custom.group(2)} is custom op '{custom.group(1)}', which LiteRT's built-in op set lacks, so no LiteRT profile "
                "runs this model (nor the onnxruntime or OpenVINO profiles, which take ONNX); use a variant of the model without it, "
                "or a runtime build that registers the op"
            ) from e
        raise ModelLoadError(f"{path}: LiteRT cannot load this model ({type(e).__name__}: {e})") from e
    return raw


def _load_torchscript(path: Path, raw: bytes):
    import torch

    try:
        return torch.jit.load(io.BytesIO(raw), map_location="cpu").eval()
    except Exception as e:
        raise ModelLoadError(
            f"{path}: not a TorchScript file ({type(e).__name__}); save with torch.jit.save(torch.jit.script(model), path) "
            "or pass the model as module:factory"
        ) from e


def _load_exported_program(path: Path, raw: bytes):
    import torch

    try:
        return torch.export.load(io.BytesIO(raw))
    except Exception as e:
        raise ModelLoadError(f"{path}: not an ExportedProgram file ({type(e).__name__}: {e}); save with torch.export.save") from e


def _load_factory(reference: str) -> SourceModel:
    module_name, _, attr = reference.partition(":")
    try:
        module = _import_from_cwd_too(module_name)
    except Exception as e:
        raise ModelLoadError(f"{reference}: cannot import module '{module_name}' ({type(e).__name__}: {e})") from e
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ModelLoadError(f"{reference}: module '{module_name}' has no callable '{attr}'")
    try:
        result = factory()
    except Exception as e:
        raise ModelLoadError(f"{reference}: factory raised {type(e).__name__}: {e}") from e
    import torch

    example = None
    if isinstance(result, tuple) and len(result) == 2:
        result, example = result
        example = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    if not isinstance(result, torch.nn.Module):
        raise ModelLoadError(f"{reference}: factory must return a torch.nn.Module (or (module, example_inputs)), got {type(result).__name__}")
    if example is None and getattr(result, "example_inputs", None) is not None:
        ex = result.example_inputs
        example = tuple(ex) if isinstance(ex, (tuple, list)) else (ex,)
    return SourceModel(reference, "pytorch", _module_digest(result), module=result.eval(), example_inputs=example)


def _import_from_cwd_too(module_name: str):
    """Import ``module_name``; a module of the current directory is found too (as `python -m` would),
    since the `edgeops` script's sys.path starts at its own folder, not where the user is."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        cwd = str(Path.cwd())
        top = module_name.split(".")[0]
        if e.name is None or e.name.split(".")[0] != top or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


def _module_digest(module) -> str:
    """sha256 of a module's state (parameter names, dtypes, shapes and bytes) plus its class."""
    import torch

    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
        try:
            h.update(t.numpy().tobytes())
        except TypeError:  # dtypes numpy lacks (bfloat16): hash the raw bits
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
