"""Export pass: a PyTorch model (nn.Module, TorchScript or ExportedProgram) -> ONNX.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``) is tried first; when it fails
the pass falls back to the TorchScript exporter and records a warning saying why.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings

from pydantic import Field

from edgeops.converters.passes import Artifact, Pass, PassContext, PassOptions, register_pass
from edgeops.errors import ModelLoadError


class ExportOptions(PassOptions):
    opset: int = Field(default=18, ge=13, le=23, description="ONNX opset to export to (clamped into the profile's range by the pipeline)")
    dynamo: bool = Field(default=True, description="try the dynamo exporter first")
    fallback: bool = Field(default=True, description="fall back to the TorchScript exporter if dynamo fails")


@register_pass
class ExportOnnx(Pass):
    name = "export-onnx"
    description = "PyTorch -> ONNX with torch.onnx (dynamo first, TorchScript exporter as fallback)"
    Options = ExportOptions
    input_format = "torch"

    def run(self, artifact: Artifact, ctx: PassContext) -> Artifact:
        import onnx
        import torch

        module, args = artifact.module, artifact.example_inputs
        names = artifact.input_names
        with torch.no_grad():
            outputs = _call(module, args)
        n_out = len(outputs) if isinstance(outputs, (tuple, list)) else 1
        output_names = [f"output_{i}" for i in range(n_out)]
        errors = []
        data = None
        if self.options.dynamo:
            try:
                data = _export(module, args, names, output_names, self.options.opset, dynamo=True)
                ctx.log.append(f"export-onnx: dynamo exporter, opset {self.options.opset}")
            except Exception as e:  # the exporter raises many types; any failure means "try the fallback"
                errors.append(f"dynamo exporter failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
        if data is None and (self.options.fallback or not self.options.dynamo):
            if errors:
                ctx.warn(f"{errors[0]}; fell back to the TorchScript exporter (torch.onnx.export dynamo=False)")
            target = module.module() if isinstance(module, torch.export.ExportedProgram) else module
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    data = _export(target, args, names, output_names, min(self.options.opset, 17), dynamo=False)
                ctx.log.append(f"export-onnx: TorchScript exporter, opset {min(self.options.opset, 17)}")
            except Exception as e:
                errors.append(f"TorchScript exporter failed: {type(e).__name__}: {e}")
        if data is None:
            raise ModelLoadError("cannot export the PyTorch model to ONNX: " + "; ".join(errors))
        model = onnx.load_model_from_string(data)
        _strip_metadata(model)
        return Artifact("onnx", data=model.SerializeToString())


def _call(module, args):
    import torch

    if isinstance(module, torch.export.ExportedProgram):
        return module.module()(*args)
    return module(*args)


def _export(module, args, input_names, output_names, opset, dynamo: bool) -> bytes:
    import onnx
    import torch

    if dynamo:
        # The exporter prints progress on stdout; keep stdout clean for --json.
        with contextlib.redirect_stdout(sys.stderr):
            program = torch.onnx.export(module, args, dynamo=True, opset_version=opset, input_names=input_names, output_names=output_names, verbose=False, optimize=True)
        model = program.model_proto
        # External data would point to files we do not keep; everything goes inline.
        return model.SerializeToString()
    buf = io.BytesIO()
    torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset, input_names=input_names, output_names=output_names, do_constant_folding=True)
    return onnx.load_model_from_string(buf.getvalue()).SerializeToString()


def _strip_metadata(model) -> None:
    """Drop exporter metadata (stack traces, source paths): it varies by machine and bloats the file."""
    del model.metadata_props[:]
    for node in model.graph.node:
        del node.metadata_props[:]
    model.producer_version = model.producer_version or ""
