"""Pre-processing pass: shape inference and graph optimization before quantization.

Uses ``onnxruntime.quantization.shape_inference.quant_pre_process`` (symbolic shape inference,
ONNX shape inference and onnxruntime's basic graph optimizations such as folding BatchNorm into
Conv). Models that symbolic shape inference cannot handle (some control flow) retry without it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from pydantic import Field

from edgeops.converters.passes import Artifact, Pass, PassContext, PassOptions, register_pass


@contextlib.contextmanager
def _working_directory(path: str):
    """contextlib.chdir (Python 3.11+) for the 3.10 the package still supports."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


class PreprocessOptions(PassOptions):
    optimize: bool = Field(default=True, description="run onnxruntime basic graph optimizations")
    symbolic_shape_inference: bool = Field(default=True, description="run symbolic shape inference first (retried without on failure)")


@register_pass
class Preprocess(Pass):
    name = "preprocess"
    description = "shape inference + onnxruntime graph optimization (quant_pre_process)"
    Options = PreprocessOptions

    def run(self, artifact: Artifact, ctx: PassContext) -> Artifact:
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        with tempfile.TemporaryDirectory(prefix="edgeops-pre-") as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
            src.write_bytes(artifact.data)
            attempts = [not self.options.symbolic_shape_inference, True] if self.options.symbolic_shape_inference else [True]
            last = None
            for skip_symbolic in attempts:
                try:
                    # onnxruntime's symbolic shape inference saves its half-inferred model as
                    # sym_shape_infer_temp.onnx + <uuid>.data in the working directory when it
                    # gives up (a 5-50 MB copy of the user's weights left wherever the user ran
                    # `edgeops build`): run it inside the pass's own temporary folder.
                    with _working_directory(tmp):
                        quant_pre_process(str(src), str(dst), skip_optimization=not self.options.optimize, skip_symbolic_shape=skip_symbolic)
                    if skip_symbolic and self.options.symbolic_shape_inference:
                        ctx.warn(f"preprocess: symbolic shape inference failed ({last}); used ONNX shape inference only")
                    ctx.log.append(f"preprocess: quant_pre_process (optimization {'on' if self.options.optimize else 'off'}, symbolic shapes {'off' if skip_symbolic else 'on'})")
                    model = onnx.load(str(dst))
                    return Artifact("onnx", data=model.SerializeToString())
                except Exception as e:  # symbolic shape inference raises assorted errors on exotic graphs
                    last = f"{type(e).__name__}: {str(e).strip()[:200]}"
        ctx.warn(f"preprocess: skipped, quant_pre_process failed ({last}); quantizing the model as given")
        return artifact
