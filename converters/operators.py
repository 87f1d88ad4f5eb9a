"""Which runtime can run an ONNX operator: the refusal of custom-domain and unknown operators.

onnxruntime knows its kernels: ``get_all_opkernel_def()`` lists every (domain, op) the installed
build registers for its execution providers (the build host's CPU provider: the standard
ai.onnx and ai.onnx.ml operators and the com.microsoft contrib operators). A node of a
non-standard domain without a kernel there (a vendor's custom domain, a custom op library)
cannot run on an onnxruntime device, and the LiteRT path (ONNX -> TFLite) converts only standard
ai.onnx operators. Such a model is refused before any pass runs, with
:class:`~edgeops.converters.errors.CustomOperatorError` naming each node, its op and domain, and
the built-in profiles whose runtime would take it (or that none would).
"""

from __future__ import annotations

from functools import lru_cache

from edgeops.converters.errors import CustomOperatorError
from edgeops.converters.graph import iter_nodes

STANDARD_DOMAINS = ("", "ai.onnx")


def _domain(d: str) -> str:
    return "" if d in STANDARD_DOMAINS else d


@lru_cache(maxsize=1)
def onnxruntime_kernels() -> frozenset[tuple[str, str]]:
    """(domain, op) pairs the installed onnxruntime has a kernel for ('' is ai.onnx)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    return frozenset((_domain(k.domain), k.op_name) for k in C.get_all_opkernel_def())


def _function_ops(model) -> set[tuple[str, str]]:
    """Model-local functions (FunctionProto): onnxruntime inlines them, so they are not missing kernels."""
    return {(_domain(f.domain), f.name) for f in model.functions}


def runs_on(profile, domain: str, op: str) -> bool:
    """Whether ``profile``'s runtime can run operator ``domain::op`` (and the profile does not ban it)."""
    domain = _domain(domain)
    if op.lower() in {o.lower() for o in profile.constraints.unsupported_ops}:
        return False
    return not _missing(profile, (domain, op))


def profiles_taking(domain: str, op: str) -> list[str]:
    """Names of the built-in profiles whose runtime would run ``domain::op``."""
    from edgeops.profiles import list_profiles

    return [p.name for p in list_profiles() if runs_on(p, domain, op)]


def unknown_operators(model, profile) -> list[tuple[str, str, str]]:
    """(node location, op, domain) of every node ``profile``'s runtime has no kernel for."""
    local = _function_ops(model)
    bad = []
    for where, node in iter_nodes(model.graph):
        key = (_domain(node.domain), node.op_type)
        if key in local:
            continue
        if _missing(profile, key):
            bad.append((where, node.op_type, node.domain or "ai.onnx"))
    return bad


def _missing(profile, key: tuple[str, str]) -> bool:
    domain, op = key
    if domain == "":
        # onnx.checker (at load) already refused unknown ai.onnx ops; onnxruntime runs the rest, those
        # without a kernel of their own (Constant, function ops such as Mish) by expanding them.
        # Ops a profile bans are refused by checks.check_onnx_ops.
        return False
    if profile.runtime.name != "onnxruntime":
        return True  # LiteRT (through a converter) and OpenVINO (its ONNX frontend) map standard operators only
    return key not in onnxruntime_kernels()


def check_operators(model, profile, label: str) -> None:
    """Refuse a model with operators ``profile``'s runtime cannot run, naming node, op and domain."""
    bad = unknown_operators(model, profile)
    if not bad:
        return
    parts = []
    for op, domain in sorted({(op, domain) for _, op, domain in bad}):
        nodes = [w for w, o, d in bad if (o, d) == (op, domain)]
        takers = profiles_taking(domain, op)
        where = ", ".join(f"'{n}'" for n in nodes[:5]) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")
        who = f"profiles whose runtime would take it: {', '.join(takers)}" if takers else "no built-in profile's runtime (onnxruntime CPU kernels, or the LiteRT converter) has it"
        parts.append(f"op '{op}' of domain '{domain}' at node {where} ({who})")
    runtime = {"onnxruntime": "onnxruntime", "openvino": "OpenVINO (its ONNX frontend takes standard operators only)"}.get(
        profile.runtime.name, "LiteRT (through ONNX -> TFLite)")
    raise CustomOperatorError(
        f"{label}: profile '{profile.name}' runs {runtime}, which has no kernel for " + "; ".join(parts) + ". "
        "Re-export the model with standard ONNX operators (custom domains come from exporter plugins or vendor toolkits), "
        "or pick a profile listed above"
    )
