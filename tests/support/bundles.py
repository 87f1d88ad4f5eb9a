"""Small real model bundles for agent, fleet and trust tests, made without the packager.

Each model is a real ONNX graph run by onnxruntime; the golden vectors are its real outputs.
Variants misbehave the way models do on devices:

- ``good``:  a linear classifier (MatMul + Add + Softmax)
- ``nan``:   the same, but its outputs are NaN (Sqrt of a negative constant added in)
- ``slow``:  the same outputs, plus a chain of large MatMuls that costs tens of milliseconds
- ``crash``: loads fine, but every inference fails in the runtime (Reshape to an impossible shape)

``golden_ok=False`` stores golden outputs that the model does not produce, so self-test fails.

``trigger=T`` (with a misbehaving variant) misbehaves only on inputs whose largest value is
above ``T`` and acts as the good model otherwise (an ONNX ``If``): the golden vectors (values
around 0..3) pass the device self-test, and live traffic with a value above ``T`` shows the fault,
which is what probation must catch.
"""

from __future__ import annotations

import numpy as np

from edgeops.bundle import GOLDEN_NAME, REPORT_NAME, Manifest, ManifestBudgets, Provenance, TensorSpec, describe_files, sha256_bytes, write_bundle
from edgeops.golden import GoldenVectors, Tolerance

N_FEATURES = 16
N_CLASSES = 4


def make_onnx_model(variant: str = "good", seed: int = 0, slow_size: int = 1024, slow_depth: int = 12) -> bytes:
    """Serialized ONNX model of the given variant (opset 17)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(N_FEATURES, N_CLASSES)).astype(np.float32)
    b = rng.normal(size=(N_CLASSES,)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    nodes = [helper.make_node("MatMul", ["input", "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], ["logits"])]
    last = "logits"
    if variant == "nan":
        inits.append(numpy_helper.from_array(np.full((N_CLASSES,), -1.0, np.float32), "NEG"))
        nodes += [helper.make_node("Sqrt", ["NEG"], ["nan_vec"]), helper.make_node("Add", [last, "nan_vec"], ["logits_nan"])]
        last = "logits_nan"
    elif variant == "slow":
        m = (rng.normal(size=(slow_size, slow_size)) / np.sqrt(slow_size)).astype(np.float32)
        inits.append(numpy_helper.from_array(m, "M"))
        inits.append(numpy_helper.from_array(np.zeros((1, slow_size), np.float32), "Z"))
        inits.append(numpy_helper.from_array(np.zeros((slow_size, N_CLASSES), np.float32), "P"))
        # Work that depends on the input so the runtime cannot fold it away; its contribution is 0.
        nodes.append(helper.make_node("ReduceSum", ["input"], ["s"], keepdims=1))
        nodes.append(helper.make_node("Add", ["Z", "s"], ["h0"]))
        prev = "h0"
        for i in range(slow_depth * 8):
            nodes.append(helper.make_node("MatMul", [prev, "M"], [f"h{i + 1}"]))
            prev = f"h{i + 1}"
        nodes.append(helper.make_node("MatMul", [prev, "P"], ["zero"]))
        nodes.append(helper.make_node("Add", [last, "zero"], ["logits_slow"]))
        last = "logits_slow"
    elif variant == "crash":
        inits.append(numpy_helper.from_array(np.array([7, -1, 3], np.int64), "BADSHAPE"))
        nodes.append(helper.make_node("Reshape", [last, "BADSHAPE"], ["logits_bad"]))
        last = "logits_bad"
    elif variant != "good":
        raise ValueError(f"unknown variant {variant}")
    nodes.append(helper.make_node("Softmax", [last], ["probs"], axis=-1))
    graph = helper.make_graph(
        nodes,
        f"edgeops_test_{variant}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", N_CLASSES] if variant != "crash" else None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeops-tests")
    model.ir_version = 8
    return model.SerializeToString()


def sample_inputs(n: int = 4, seed: int = 1) -> np.ndarray:
    """Deterministic inputs of the test models' shape [n, 16]."""
    return np.random.default_rng(seed).normal(size=(n, N_FEATURES)).astype(np.float32)


def make_triggered_model(variant: str, seed: int = 0, trigger: float = 100.0) -> bytes:
    """A model that acts as ``variant`` when max(input) > ``trigger`` and as ``good`` otherwise."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def branch(v: str, suffix: str):
        m = onnx.load_from_string(make_onnx_model(v, seed))
        g = m.graph
        names = {i.name for i in g.initializer} | {o for n in g.node for o in n.output}
        rename = {n: f"{n}_{suffix}" for n in names}
        for init in g.initializer:
            init.name = rename[init.name]
        for node in g.node:
            node.input[:] = [rename.get(i, i) for i in node.input]
            node.output[:] = [rename.get(o, o) for o in node.output]
        out = rename["probs"]
        body = helper.make_graph(list(g.node), f"{v}_{suffix}", [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])
        return body, list(g.initializer)

    then_g, then_inits = branch(variant, "t")
    else_g, else_inits = branch("good", "e")
    nodes = [
        helper.make_node("ReduceMax", ["input"], ["in_max"], keepdims=0),
        helper.make_node("Greater", ["in_max", "TRIGGER"], ["triggered"]),
        helper.make_node("If", ["triggered"], ["probs"], then_branch=then_g, else_branch=else_g),
    ]
    inits = then_inits + else_inits + [numpy_helper.from_array(np.array(trigger, np.float32), "TRIGGER")]
    graph = helper.make_graph(
        nodes,
        f"edgeops_test_{variant}_triggered",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeops-tests")
    model.ir_version = 8
    return model.SerializeToString()


def make_bundle_bytes_payload(variant: str = "good", seed: int = 0, golden_ok: bool = True, trigger: float | None = None) -> tuple[bytes, list[tuple[dict, dict]]]:
    """The model bytes and golden cases computed with onnxruntime from the GOOD model of this seed.

    Golden vectors always describe the good model, as a real build would; a misbehaving variant
    must then be caught on the device.
    """
    import onnxruntime as ort

    model = make_onnx_model(variant, seed) if trigger is None or variant == "good" else make_triggered_model(variant, seed, trigger)
    good = ort.InferenceSession(make_onnx_model("good", seed), providers=["CPUExecutionProvider"])
    cases = []
    for i in range(3):
        x = sample_inputs(1, seed=100 + i)
        y = good.run(None, {"input": x})[0]
        if not golden_ok:
            y = np.roll(y, 1, axis=-1) + 0.5
        cases.append(({"input": x}, {"probs": y.astype(np.float32)}))
    return model, cases


def reference_inputs(n: int = 400, seed: int = 7) -> np.ndarray:
    """The validation inputs a test bundle's drift reference is made from ([n, 16], like sample_inputs)."""
    return sample_inputs(n, seed=seed)


def make_reference(model: bytes, inputs: np.ndarray, n_classes: int):
    """A drift reference (edgeops.sketch) of a classifier ``input`` -> ``probs`` on ``inputs``, as a build makes it."""
    import onnxruntime as ort

    from edgeops.sketch import build_reference

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    feeds = [inputs[i : i + 8] for i in range(0, len(inputs), 8)]
    outs = [session.run(None, {"input": f})[0] for f in feeds]
    return build_reference("validation", {"input": feeds}, {"probs": outs}, classifier_outputs={"probs": n_classes}, channel_axes={"input": 1}, data_sha256=sha256_bytes(inputs.tobytes()))


def write_classifier_bundle(path, model: bytes, cases: list, *, name: str, version: str, release: int, profile: str, n_in: int, n_out: int, latency_p95_ms: float, report: dict, toolchain: dict[str, str], providers: list[str] | None = None, monitoring=None):
    """Write a complete bundle of an ONNX classifier (``input`` -> ``probs``) with its golden
    ``cases`` to ``path``; returns the Manifest (shared by the tests and bench/agent.py).
    ``monitoring``: the drift reference to put in the manifest (see :func:`make_reference`)."""
    import json

    golden = GoldenVectors(cases=cases, tolerances={"probs": Tolerance(atol=1e-4, rtol=1e-3)})
    payload = {
        "model/model.onnx": model,
        GOLDEN_NAME: golden.to_json_bytes(),
        REPORT_NAME: json.dumps(report, sort_keys=True).encode(),
    }
    manifest = Manifest(
        name=name,
        version=version,
        release=release,
        profile=profile,
        runtime="onnxruntime",
        providers=providers or ["CPUExecutionProvider"],
        artifact="model/model.onnx",
        quantization="none",
        task="classifier",
        inputs=[TensorSpec(name="input", dtype="float32", shape=["batch", n_in])],
        outputs=[TensorSpec(name="probs", dtype="float32", shape=["batch", n_out])],
        budgets=ManifestBudgets(latency_p95_ms=latency_p95_ms),
        files=describe_files(payload),
        provenance=Provenance(source_model_sha256=sha256_bytes(model), source_format="onnx", toolchain=toolchain),
        monitoring=monitoring,
    )
    write_bundle(path, manifest, payload)
    return manifest


def write_test_bundle(path, name: str = "digits", version: str = "1.0.0", release: int = 1, variant: str = "good", seed: int = 0, profile: str = "x86_64-avx512-vnni", golden_ok: bool = True, latency_p95_ms: float = 20.0, trigger: float | None = None, providers: list[str] | None = None, reference: bool = False):
    """Write a complete, valid bundle of a test model to ``path`` and return its Manifest
    (``reference``: with a drift reference made from :func:`reference_inputs`)."""
    model, cases = make_bundle_bytes_payload(variant, seed, golden_ok, trigger)
    monitoring = make_reference(make_onnx_model("good", seed), reference_inputs(), N_CLASSES) if reference else None
    return write_classifier_bundle(path, model, cases, name=name, version=version, release=release, profile=profile, n_in=N_FEATURES, n_out=N_CLASSES,
                                   latency_p95_ms=latency_p95_ms, report={"summary": {"variant": variant}}, toolchain={"edgeops-tests": "1"}, providers=providers,
                                   monitoring=monitoring)
