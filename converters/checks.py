"""Checks a model must pass for a profile before any pass runs (and again after the last).

Each failure is an error that names the node / op / input / opset and the way out.
"""

from __future__ import annotations

from edgeops.bundle import TensorSpec
from edgeops.converters.errors import DynamicShapeError
from edgeops.converters.graph import default_opset, dynamic_inputs, iter_nodes
from edgeops.errors import ConfigError, InputError, UnsupportedOperatorError


def check_input_format(family: str, profile) -> None:
    """The profile must accept this input family (onnx / pytorch / tflite)."""
    allowed = profile.constraints.input_formats
    if family not in allowed:
        hint = {
            "onnx": "export the PyTorch model for it instead (module:factory, TorchScript or .pt2), or give a .tflite",
            "tflite": "a .tflite model only runs on LiteRT profiles; give the ONNX or PyTorch model",
            "pytorch": "give an ONNX or .tflite model",
        }[family]
        raise ConfigError(f"profile '{profile.name}' ({profile.source}) does not take {family} models (constraints.input_formats = {allowed}); {hint}")


def check_onnx_opset(model, profile, label: str) -> int:
    """The default-domain opset must lie in the profile's [min_opset, max_opset] (after the convert-opset pass)."""
    opset = default_opset(model)
    c = profile.constraints
    if opset and not c.min_opset <= opset <= c.max_opset:  # 0: the model imports no ai.onnx opset (ai.onnx.ml only)
        raise InputError(
            f"{label}: ONNX opset {opset} is outside the range {c.min_opset}..{c.max_opset} of profile '{profile.name}'; "
            f"re-export with opset_version between {c.min_opset} and {c.max_opset} "
            f"(or convert with onnx.version_converter.convert_version(model, {min(max(opset, c.min_opset), c.max_opset)}))"
        )
    return opset


def check_onnx_ops(model, profile, label: str) -> None:
    """No node (subgraphs included) may use an operator in profile.constraints.unsupported_ops."""
    banned = {op.lower() for op in profile.constraints.unsupported_ops}
    if not banned:
        return
    bad = [(where, node.op_type) for where, node in iter_nodes(model.graph) if node.op_type.lower() in banned]
    if bad:
        listed = ", ".join(f"node '{w}' (op {op})" for w, op in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UnsupportedOperatorError(
            f"{label}: profile '{profile.name}' cannot run {listed}; the profile lists {sorted(profile.constraints.unsupported_ops)} as unsupported. "
            "Rewrite that part of the model without it (e.g. replace data-dependent control flow with static ops), or pick a profile that supports it"
        )


def check_tflite_ops(op_names: list[tuple[str, str]], profile, label: str) -> None:
    """TFLite op names (e.g. WHILE, IF) compared with the profile's list, ignoring case and '_'."""
    def norm(s: str) -> str:
        return s.replace("_", "").lower()

    aliases = {"loop": "while"}
    banned = {aliases.get(norm(op), norm(op)) for op in profile.constraints.unsupported_ops}
    bad = [(where, op) for where, op in op_names if norm(op) in banned]
    if bad:
        listed = ", ".join(f"tensor/op '{w}' (op {op})" for w, op in bad[:5])
        raise UnsupportedOperatorError(f"{label}: profile '{profile.name}' cannot run {listed}; unsupported there: {sorted(profile.constraints.unsupported_ops)}")


def check_static_shapes(specs: list[TensorSpec], profile, label: str) -> None:
    """On a static-shapes profile every input dim must be fixed (use --input-shape)."""
    if not profile.constraints.static_shapes:
        return
    dyn = dynamic_inputs(specs)
    if dyn:
        from edgeops.converters.data import unresolved_shape_message

        raise DynamicShapeError(
            unresolved_shape_message(specs, label, f"profile '{profile.name}' needs static shapes but input(s) {', '.join(f'{n} {s}' for n, s in dyn.items())} have open dims")
        )
