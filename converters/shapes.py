"""Resolving the symbolic and unnamed input dims of an ONNX model from the build's data.

Models from other projects arrive with open dims: ``['p2o.DynamicDimension.0', 3, '?', '?']``
(Paddle), ``['batch', 3, 'height', 'width']`` (Ultralytics), ``[2, '?', 128]`` (a recurrent
state). ``--input-shape`` fixes them by hand (:func:`edgeops.converters.graph.set_input_shapes`);
otherwise the calibration and validation data fix every dim they agree on: in the batch
layout every axis but the sample axis 0, in the per-sample layout every axis on which all
samples agree (see :class:`edgeops.converters.data.Dataset`). A dim on which the two data sets
disagree stays open (both sizes are valid inputs). What was fixed is logged in the report.
"""

from __future__ import annotations

from edgeops.bundle import TensorSpec
from edgeops.errors import ConfigError
from edgeops.converters.data import Dataset


def dims_from_data(specs: list[TensorSpec], datasets: list[tuple[str, Dataset]], fix_batch: bool = False) -> dict[str, dict[int, tuple[int, str]]]:
    """For each input, the open axes the data fixes: ``{input: {axis: (size, role)}}`` (``fix_batch``:
    the batch axis too, as fed, for profiles that need static shapes)."""
    found: dict[str, dict[int, tuple[int, str] | None]] = {}
    for role, ds in datasets:
        known = ds.known_dims(specs, fix_batch=fix_batch)
        for spec in specs:
            for axis, dim in enumerate(spec.shape):
                if isinstance(dim, int):
                    continue
                value = known[spec.name][axis]
                slot = found.setdefault(spec.name, {})
                if value is None:
                    continue
                if axis not in slot:
                    slot[axis] = (value, role)
                elif slot[axis] is not None and slot[axis][0] != value:
                    slot[axis] = None  # calibration and validation disagree: both sizes are valid, keep it open
                elif slot[axis] is not None:
                    slot[axis] = (value, f"{slot[axis][1]} and {role}")
    return {name: {a: v for a, v in axes.items() if v is not None} for name, axes in found.items() if any(v is not None for v in axes.values())}


def fix_dims_from_data(model, specs: list[TensorSpec], datasets: list[tuple[str, Dataset]], fix_batch: bool = False) -> list[str]:
    """Fix in ``model`` (in place) the open input dims the data gives; return one note per input.

    Some exports carry shape annotations that only hold while a dim is open (an If branch that
    is never taken at that size): when onnxruntime refuses the model with an input's dims
    fixed, that input keeps its open dims and the note says why.
    """
    fixes = dims_from_data(specs, datasets, fix_batch)
    if not fixes:
        return []
    by_name = {v.name: v for v in model.graph.input}
    notes = []
    for spec in specs:
        axes = fixes.get(spec.name)
        if not axes:
            continue
        dims = by_name[spec.name].type.tensor_type.shape.dim
        saved = [type(d)() for d in dims]
        for keep, d in zip(saved, dims):
            keep.CopyFrom(d)
        for axis, (size, _) in axes.items():
            dims[axis].Clear()
            dims[axis].dim_value = int(size)
        after = [axes[a][0] if a in axes else d for a, d in enumerate(spec.shape)]
        roles = sorted({r for _, rr in axes.values() for r in rr.split(" and ")})
        problem = _load_problem(model)
        if problem:
            for d, keep in zip(dims, saved):
                d.CopyFrom(keep)
            notes.append(f"shapes: input '{spec.name}' keeps its open dims {_show(spec.shape)} (the data gives {_show(after)}, but onnxruntime refuses the model with them fixed: {problem})")
            continue
        notes.append(f"shapes: input '{spec.name}' {_show(spec.shape)} -> {_show(after)} from the {' and '.join(roles)} data")
    return notes


def check_fixed_shapes_load(model, original: bytes, shapes: dict[str, list[int]]) -> None:
    """After ``--input-shape``: onnxruntime must still load the model, or the flag is refused by name."""
    import onnx

    problem = _load_problem(model)
    if problem and _load_problem(onnx.load_model_from_string(original)) is None:
        flags = " ".join(f"--input-shape {n}={','.join(map(str, d))}" for n, d in shapes.items())
        raise ConfigError(
            f"{flags}: onnxruntime cannot load the model with these shapes ({problem}); the model's own shape annotations "
            "(e.g. an If branch for another input size) conflict with them. Leave those dims open: drop the flag, or fix fewer inputs"
        )


def _load_problem(model) -> str | None:
    """None when onnxruntime builds a session for ``model`` (optimized, as the build runs it), else the first line of its error."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types
        text = str(e).strip()
        return (text.splitlines()[0] if text else type(e).__name__)[:300]
    return None


def _show(shape: list) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
