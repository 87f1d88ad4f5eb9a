"""The LiteRT path: PyTorch -> .tflite with litert-torch, int8 with ai-edge-quantizer.

* ``export-tflite``: ``litert_torch.convert`` with the example inputs passed as keyword
  arguments, so the signature's input names are the forward() argument names.
* ``quantize-tflite``: ai-edge-quantizer recipes: ``dynamic-int8`` (int8 weights, float
  activations, no calibration), ``static-int8`` / ``full-int8`` (int8 weights and activations,
  calibrated; full-int8 has int8 inputs and outputs, as the Edge TPU needs).

The Edge TPU additionally needs ``edgetpu_compiler``, which is not part of this pass: the
bundle carries the full-int8 model the compiler takes.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Literal

from pydantic import Field

from edgeops.converters.errors import CalibrationMissingError, ToolUnavailableError
from edgeops.converters.passes import Artifact, Pass, PassContext, PassOptions, register_pass
from edgeops.errors import ModelLoadError


class TfliteExportOptions(PassOptions):
    strict_export: bool = Field(default=False, description="use strict torch.export tracing")


@register_pass
class ExportTflite(Pass):
    name = "export-tflite"
    description = "PyTorch -> .tflite (float32) with litert-torch"
    Options = TfliteExportOptions
    input_format = "torch"

    def run(self, artifact: Artifact, ctx: PassContext) -> Artifact:
        try:
            import litert_torch
        except Exception as e:  # ImportError, or a broken install raising at import time
            raise ToolUnavailableError(
                f"the LiteRT path needs litert-torch, which cannot be imported ({type(e).__name__}: {e}); "
                "pip install -c constraints.txt 'edgeops[tflite]', or pass a ready .tflite model"
            ) from e
        import torch

        module = artifact.module
        if isinstance(module, torch.export.ExportedProgram):
            module = module.module()
        if isinstance(module, torch.jit.ScriptModule):
            raise ModelLoadError("litert-torch cannot convert TorchScript; pass the model as module:factory or an ExportedProgram (.pt2)")
        kwargs = dict(zip(artifact.input_names, artifact.example_inputs))
        try:
            # litert-torch reports progress on stdout; keep stdout clean for --json.
            with contextlib.redirect_stdout(sys.stderr):
                converted = litert_torch.convert(module.eval(), sample_kwargs=kwargs, strict_export=self.options.strict_export)
                content = converted.model_content() if callable(converted.model_content) else converted.model_content
        except Exception as e:
            raise ModelLoadError(f"litert-torch could not convert the model: {type(e).__name__}: {str(e).strip()[:500]}") from e
        ctx.log.append("export-tflite: litert-torch, float32")
        return Artifact("tflite", data=bytes(content))


class TfliteQuantOptions(PassOptions):
    scheme: Literal["dynamic-int8", "static-int8", "full-int8"] = Field(description="ai-edge-quantizer recipe to apply")
    max_calibration_samples: int = Field(default=128, ge=1, le=100000, description="calibration feeds used at most")


@register_pass
class QuantizeTflite(Pass):
    name = "quantize-tflite"
    description = "int8 quantization of a .tflite model with ai-edge-quantizer"
    Options = TfliteQuantOptions
    input_format = "tflite"

    def run(self, artifact: Artifact, ctx: PassContext) -> Artifact:
        try:
            from ai_edge_quantizer import quantizer, recipe
        except Exception as e:
            raise ToolUnavailableError(f"ai-edge-quantizer cannot be imported ({type(e).__name__}: {e}); pip install 'edgeops[tflite]'") from e
        from edgeops.converters.runtime import TfliteRunner

        scheme = self.options.scheme
        chosen = recipe.dynamic_wi8_afp32() if scheme == "dynamic-int8" else recipe.static_wi8_ai8()
        q = quantizer.Quantizer(bytearray(artifact.data), chosen)
        with contextlib.redirect_stdout(sys.stderr):
            if q.need_calibration:
                if ctx.calibration is None:
                    raise CalibrationMissingError(
                        f"{scheme} for LiteRT needs calibration data: pass --calibration DATA (.npy, .npz keyed by input name, or an image folder), "
                        "or choose --quantize dynamic-int8 / none"
                    )
                runner = TfliteRunner(artifact.data)
                key = runner.model.signature
                feeds = ctx.calibration.batches(runner.inputs, limit=self.options.max_calibration_samples)
                result = q.calibrate({key: feeds}, num_threads=1)
                out = q.quantize(result, enable_progress_report=False)
            else:
                out = q.quantize(enable_progress_report=False)
        ctx.log.append(f"quantize-tflite: ai-edge-quantizer {'dynamic_wi8_afp32' if scheme == 'dynamic-int8' else 'static_wi8_ai8'} ({scheme})")
        return Artifact("tflite", data=bytes(out.quantized_model))
