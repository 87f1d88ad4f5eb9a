""".tflite files as users have them, made into what the packager and the agent run.

Three repairs, each recorded in the build report (``conversions.tflite_intake``):

* **Operator codes.** Files written before TensorFlow 2.3's schema keep each operator's code in
  ``deprecated_builtin_code`` only (``builtin_code`` reads 0, ADD); the schema tells readers to
  take the larger of the two, and LiteRT does, but ai-edge-quantizer reads ``builtin_code`` and
  so saw MediaPipe's face-landmark model as 214 ADDs and quantized nothing. Both fields are set.
* **float16 weights.** TensorFlow's float16 post-training quantization stores weights as float16
  constants behind DEQUANTIZE ops (MediaPipe's face detectors). int8 quantizers take float32
  constants only, so each such DEQUANTIZE is folded into a float32 constant (float16 values are
  exact in float32: the float model computes the same).
* **Signature.** Bundles are run through a signature (edgeops.litert): the manifest and golden
  vectors use its names. TOCO-era and concrete-function models (MediaPipe's, Coral's) have none,
  nor does onnx2tf's output when TensorFlow fell back to concrete functions (Paddle exports): a
  ``serving_default`` one over subgraph 0's inputs and outputs in order is written, named as given
  or after the tensors themselves.
"""

from __future__ import annotations

import re

from edgeops.converters.errors import ConversionMismatchError

SIGNATURE_KEY = "serving_default"
DEQUANTIZE = 6  # BuiltinOperator.DEQUANTIZE
FLOAT16, FLOAT32 = 1, 0  # TensorType


def _pack(model, size_hint: int) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(size_hint + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def prepare_tflite(tflite: bytes) -> tuple[bytes, dict]:
    """The model with the three repairs of the module doc applied where needed, and what was done
    (empty when the file needed nothing: it is then returned unchanged)."""
    fb = _schema()
    model = fb.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    done: dict = {}
    upgraded = [oc for oc in model.operatorCodes if oc.deprecatedBuiltinCode > oc.builtinCode]
    for oc in upgraded:
        oc.builtinCode = oc.deprecatedBuiltinCode
    if upgraded:
        done["operator_codes"] = f"{len(upgraded)} operator code(s) stored in the pre-2.3 field only; set in both"
    folded = fold_float16_weights(model)
    if folded:
        done["float16_weights"] = f"{folded} float16 weight tensor(s) behind DEQUANTIZE folded into float32 constants"
    if done:
        tflite = _pack(model, len(tflite) + 4 * sum(len(b.data) for b in model.buffers if b.data is not None))
    if not has_signature(tflite):
        inputs, outputs = tensor_names(tflite)
        tflite = with_signature(tflite, inputs, outputs)
        done["signature"] = {"written": SIGNATURE_KEY, "inputs": inputs, "outputs": outputs,
                             "reason": "the .tflite has no signature; one over its input and output tensors, named after them"}
    return tflite, done


def fold_float16_weights(model) -> int:
    """Replace each DEQUANTIZE of a float16 constant (in a ``ModelT``) by a float32 constant holding
    the same values, and drop the float16 tensors no op uses any more; returns how many were folded."""
    import numpy as np

    fb = _schema()
    folded = 0
    for g_index, graph in enumerate(model.subgraphs):
        keep = []
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            source = graph.tensors[op.inputs[0]] if op.inputs is not None and len(op.inputs) == 1 else None
            data = model.buffers[source.buffer].data if source is not None and source.buffer else None
            if max(code.builtinCode, code.deprecatedBuiltinCode) != DEQUANTIZE or source is None or source.type != FLOAT16 or data is None or len(data) == 0:
                keep.append(op)  # a DEQUANTIZE of a computed tensor (after DENSIFY, say) stays
                continue
            target = graph.tensors[op.outputs[0]]
            buffer = fb.BufferT()
            buffer.data = np.frombuffer(bytes(bytearray(data)), np.float16).astype(np.float32).view(np.uint8)
            model.buffers.append(buffer)
            target.buffer, target.type = len(model.buffers) - 1, FLOAT32
        if len(keep) < len(graph.operators):
            folded += len(graph.operators) - len(keep)
            graph.operators = keep
            _drop_unused_tensors(model, g_index)
    return folded


def _drop_unused_tensors(model, g_index: int) -> None:
    """Remove the tensors of subgraph ``g_index`` that no operator, graph input/output or signature
    uses (the float16 constants a fold left behind), renumbering the rest, and empty the buffers
    only they held."""
    import numpy as np

    graph = model.subgraphs[g_index]
    used: set[int] = set()
    for op in graph.operators:
        for field in (op.inputs, op.outputs, op.intermediates):
            used.update(int(i) for i in (field if field is not None else ()) if i >= 0)
    used.update(int(i) for i in (graph.inputs if graph.inputs is not None else ()))
    used.update(int(i) for i in (graph.outputs if graph.outputs is not None else ()))
    signatures = [sig for sig in (model.signatureDefs or []) if sig.subgraphIndex == g_index]
    for sig in signatures:
        used.update(t.tensorIndex for t in (sig.inputs or []) + (sig.outputs or []))
    if len(used) == len(graph.tensors):
        return
    new_index = {old: new for new, old in enumerate(sorted(used))}
    dropped_buffers = {graph.tensors[i].buffer for i in range(len(graph.tensors)) if i not in used}
    graph.tensors = [graph.tensors[i] for i in sorted(used)]
    kept_buffers = {t.buffer for g in model.subgraphs for t in g.tensors}

    def renumber(indices):
        return None if indices is None else np.asarray([new_index[int(i)] if i >= 0 else -1 for i in indices], np.int32)

    for op in graph.operators:
        op.inputs, op.outputs, op.intermediates = renumber(op.inputs), renumber(op.outputs), renumber(op.intermediates)
    graph.inputs, graph.outputs = renumber(graph.inputs), renumber(graph.outputs)
    for sig in signatures:
        for t in (sig.inputs or []) + (sig.outputs or []):
            t.tensorIndex = new_index[t.tensorIndex]
    for b in dropped_buffers - kept_buffers:
        if b:  # buffer 0 is the empty sentinel every schema writer keeps
            model.buffers[b].data = None


def _schema():
    from ai_edge_litert import schema_py_generated as fb

    return fb


def has_signature(tflite: bytes) -> bool:
    """Whether the flatbuffer declares at least one SignatureDef."""
    fb = _schema()
    return fb.Model.GetRootAs(bytearray(tflite), 0).SignatureDefsLength() > 0


def tensor_names(tflite: bytes) -> tuple[list[str], list[str]]:
    """Subgraph 0's input and output tensor names, in order, as signature names: characters other
    than letters, digits, ``_``, ``.``, ``-`` and ``/`` become ``_``; an empty or repeated name gets
    its kind and position (``input_1``)."""
    fb = _schema()
    graph = fb.Model.GetRootAs(bytearray(tflite), 0).Subgraphs(0)

    def names(indices: list[int], kind: str) -> list[str]:
        out: list[str] = []
        for pos, index in enumerate(indices):
            raw = graph.Tensors(index).Name()
            name = re.sub(r"[^A-Za-z0-9_./-]", "_", raw.decode("utf-8", "replace") if raw else "")
            out.append(name if name and name not in out else f"{kind}_{pos}")
        return out

    return (names([graph.Inputs(i) for i in range(graph.InputsLength())], "input"),
            names([graph.Outputs(i) for i in range(graph.OutputsLength())], "output"))


def with_signature(tflite: bytes, input_names: list[str] | None = None, output_names: list[str] | None = None) -> bytes:
    """The model with a ``serving_default`` signature over subgraph 0's inputs and outputs in order,
    named ``input_names`` / ``output_names`` (default: :func:`tensor_names`). A model that has a
    signature is returned unchanged; ConversionMismatchError when the given names do not match the
    subgraph's input and output counts."""
    fb = _schema()
    model = fb.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    if model.signatureDefs:
        return tflite
    if input_names is None or output_names is None:
        own_inputs, own_outputs = tensor_names(tflite)
        input_names, output_names = input_names or own_inputs, output_names or own_outputs
    graph = model.subgraphs[0]
    if len(graph.inputs) != len(input_names) or len(graph.outputs) != len(output_names):
        raise ConversionMismatchError(
            f"the .tflite has {len(graph.inputs)} input(s) and {len(graph.outputs)} output(s); names were given for {input_names} and {output_names}"
        )

    def tensor_map(name: str, index: int):
        t = fb.TensorMapT()
        t.name, t.tensorIndex = name, int(index)
        return t

    sig = fb.SignatureDefT()
    sig.signatureKey = SIGNATURE_KEY
    sig.subgraphIndex = 0
    sig.inputs = [tensor_map(n, i) for n, i in zip(input_names, graph.inputs)]
    sig.outputs = [tensor_map(n, i) for n, i in zip(output_names, graph.outputs)]
    model.signatureDefs = [sig]
    return _pack(model, len(tflite))
