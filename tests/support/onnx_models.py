"""Small ONNX models shaped like the third-party exports the packager must take in.

* :func:`weights_in_constant_nodes`: every initializer moved into a ``Constant`` node, as
  Paddle2ONNX and other older exporters write weights (the analysis then sees no initializers);
* :func:`weights_from_constant_subgraph`: a weight computed at run time from constants
  (``Constant * Constant``), as folded-away-only-at-load-time exports do;
* :func:`conv_net`: a small random-weight conv net in plain ONNX at any opset >= 7, with its
  weights in Constant nodes or computed by a constant subgraph;
* :func:`custom_domain_model`: a conv net with one node from a custom operator domain;
* :func:`qdq_model`: an already-quantized (QDQ) conv net.

The bench (bench/normalize.py) and the tests under tests/converters/ share these.
"""

from __future__ import annotations

import numpy as np


def weights_in_constant_nodes(model):
    """Move every initializer of ``model`` into a ``Constant`` node at the graph's start (in place)."""
    from onnx import helper

    graph = model.graph
    consts = [helper.make_node("Constant", [], [init.name], name=f"const_{init.name}", value=init) for init in graph.initializer]
    names = {init.name for init in graph.initializer}
    old_inputs = [v for v in graph.input if v.name not in names]  # IR < 4 lists initializers as inputs
    nodes = consts + list(graph.node)
    del graph.initializer[:]
    del graph.input[:]
    graph.input.extend(old_inputs)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def conv_net(opset: int = 11, channels: int = 16, size: int = 32, classes: int = 10, style: str = "constant-nodes", seed: int = 0):
    """A conv -> BN -> relu -> conv -> relu -> global pool -> flatten -> gemm net, weights random.

    ``style``: 'initializers' (the ordinary form), 'constant-nodes' (Paddle's form: every weight a
    Constant node) or 'constant-subgraph' (like 'constant-nodes', and each Conv weight computed as
    ``Constant * Constant`` at run time).
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name, shape, scale=0.2):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        init("w1", (channels, 3, 3, 3)), init("b1", (channels,)),
        numpy_helper.from_array(np.ones(channels, np.float32), "bn_s"), init("bn_b", (channels,), 0.1),
        init("bn_m", (channels,), 0.1), numpy_helper.from_array(np.ones(channels, np.float32) * 1.5, "bn_v"),
        init("w2", (channels * 2, channels, 3, 3), 0.1), init("b2", (channels * 2,)),
        init("fc_w", (classes, channels * 2), 0.3), init("fc_b", (classes,)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "conv_net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgeops-tests")
    model.ir_version = min(model.ir_version, max(4, _ir_for_opset(opset)))  # IR 4: initializers need not be inputs
    if style == "initializers":
        return model
    weights_in_constant_nodes(model)
    if style == "constant-subgraph":
        weights_from_constant_subgraph(model, ["w1", "w2"])
    elif style != "constant-nodes":
        raise ValueError(f"unknown style {style!r}")
    return model


def weights_from_constant_subgraph(model, names: list[str]):
    """Replace each ``Constant`` producing one of ``names`` by ``Constant(w / 2) * Constant(2)`` (in place)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    out = []
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] in names:
            name = node.output[0]
            w = numpy_helper.to_array(node.attribute[0].t)
            out += [
                helper.make_node("Constant", [], [f"{name}_half"], name=f"const_{name}_half", value=numpy_helper.from_array(w / 2, f"{name}_half")),
                helper.make_node("Constant", [], [f"{name}_two"], name=f"const_{name}_two", value=numpy_helper.from_array(np.array(2.0, np.float32), f"{name}_two")),
                helper.make_node("Mul", [f"{name}_half", f"{name}_two"], [name], name=f"mul_{name}"),
            ]
        else:
            out.append(node)
    del graph.node[:]
    graph.node.extend(out)
    return model


def custom_domain_model(domain: str = "com.example.vendor", op: str = "FancyActivation"):
    """:func:`conv_net` (opset 13, initializers) with its first Relu replaced by ``domain::op``."""
    from onnx import helper

    model = conv_net(opset=13, style="initializers")
    for i, node in enumerate(model.graph.node):
        if node.op_type == "Relu":
            custom = helper.make_node(op, list(node.input), list(node.output), name="vendor_act", domain=domain)
            model.graph.node.remove(node)
            model.graph.node.insert(i, custom)
            break
    model.opset_import.append(helper.make_opsetid(domain, 1))
    return model


def qdq_model(opset: int = 13):
    """:func:`conv_net` quantized to QDQ int8 by onnxruntime (random calibration), as third-party
    'int8' model files are shipped."""
    import tempfile
    from pathlib import Path

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    rng = np.random.default_rng(1)
    feeds = [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(conv_net(opset=opset, style="initializers"), str(src))
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
        return onnx.load(str(dst))


def _ir_for_opset(opset: int) -> int:
    """The IR version onnx ships for a default-domain opset (onnxruntime refuses newer IR with old opsets)."""
    from onnx import helper

    best = None
    for _release, ir, ai_onnx, *_ in helper.VERSION_TABLE:
        if ai_onnx >= opset:
            best = ir if best is None else min(best, ir)
    return best or 3


def write_data(folder, size: int = 32, calibration: int = 32, validation: int = 8) -> dict[str, str]:
    """calibration.npz and validation.npz (input 'input', [N, 3, size, size] float32) for :func:`conv_net` models."""
    from pathlib import Path

    folder = Path(folder)
    rng = np.random.default_rng(7)
    paths = {}
    for role, n in (("calibration", calibration), ("validation", validation)):
        paths[role] = str(folder / f"{role}.npz")
        np.savez(paths[role], input=rng.standard_normal((n, 3, size, size)).astype(np.float32))
    return paths
